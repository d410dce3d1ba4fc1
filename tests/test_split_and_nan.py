"""Every class keeps a training recording whatever the split draws; a class without any is
named; a diverged model (NaN predictions) ends training cleanly instead of crashing the MAP
callback."""

import json

import keras
import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from preprocess.dataset import DatasetInfo, RecordingChunks, compress_chunks, open_dataset
from tests.helpers import PARAMS, write_dataset
from train import train_model
from train.callbacks import MAPCallback, training_callbacks
from train.data import ChunkBatches, SplitError, check_labels, split_recordings


def classes_without_training(labels: np.ndarray, split: dict[str, np.ndarray]) -> set[int]:
    return set(labels[labels >= 0].tolist()) - set(labels[split["train"]].tolist())


def assert_a_partition(labels: np.ndarray, split: dict[str, np.ndarray]) -> None:
    every = np.concatenate([split[name] for name in ("train", "val", "test")])
    assert sorted(every.tolist()) == np.flatnonzero(labels >= 0).tolist()


# ---------------------------------------------------------------------------------------------
# The split


def test_an_unstratified_draw_leaves_every_class_a_training_recording(caplog):
    # 5 validation recordings cannot cover 10 classes: the draw is not stratified, and it
    # took both recordings of a class in 23 of these 50 seeds
    labels = np.repeat(np.arange(10), 2)
    for seed in range(50):
        split = split_recordings(labels, 0.25, 0.0, seed)
        assert classes_without_training(labels, split) == set(), seed
        assert_a_partition(labels, split)
        assert len(split["val"]) == 5 and len(split["test"]) == 0
        again = split_recordings(labels, 0.25, 0.0, seed)
        assert all(np.array_equal(split[name], again[name]) for name in split)
    assert "validation split of 5 recordings is NOT stratified" in caplog.text
    assert "stays in training" in caplog.text


def test_a_stratified_draw_leaves_a_small_class_a_training_recording(caplog):
    # 7 of 24 kept: stratified rounding gives the two 2-recording classes 0.58 each and one
    # of them none
    labels = np.array([0, 0, 1, 1] + [2] * 10 + [3] * 10)
    for seed in range(5):
        split = split_recordings(labels, 0.7, 0.0, seed)
        assert classes_without_training(labels, split) == set(), seed
        assert_a_partition(labels, split)
        assert len(split["val"]) == 17
    assert "NOT stratified" not in caplog.text and "stays in training" in caplog.text


def test_a_long_tail_of_999_classes_keeps_every_class_in_training():
    # BirdCLEF-like: 999 classes, many of two or three recordings, the 2016 fractions
    rng = np.random.default_rng(0)
    counts = rng.choice([2, 3, 4, 5, 10, 20, 40], size=999, p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    labels = np.repeat(np.arange(999), counts)
    for seed in range(4):
        split = split_recordings(labels, 0.05, 0.01, seed)
        assert classes_without_training(labels, split) == set(), seed
        assert_a_partition(labels, split)
        assert len(split["val"]) == round(0.05 * len(labels))
        assert len(split["test"]) == round(0.01 * len(labels))


def test_a_split_that_kept_every_class_is_the_plain_stratified_one():
    # the demo's shape and the 2016 recipe's fractions: the split runs gave before the fix
    labels = np.repeat(np.arange(6), 20)
    for seed in range(3):
        split = split_recordings(labels, 0.1, 0.1, seed)
        everything = np.arange(len(labels))
        rest, test = train_test_split(everything, test_size=12, stratify=labels, random_state=seed)
        rest = np.sort(rest)  # as the second draw gets it
        train, val = train_test_split(rest, test_size=12, stratify=labels[rest], random_state=seed)
        assert np.array_equal(split["train"], np.sort(train))
        assert np.array_equal(split["val"], np.sort(val))
        assert np.array_equal(split["test"], np.sort(test))


def test_recordings_of_one_group_are_drawn_together():
    """Clips of one source recording (a group) never sit on two sides of a split, and groups
    are stratified by class; with a group for each recording the split is the plain one."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, size=60)  # 60 source recordings of 1-5 clips
    groups = np.repeat(np.arange(60), sizes)
    labels = np.repeat(np.arange(60) % 4, sizes)
    labels[groups == 7] = -1  # unlabelled clips stay out
    for seed in range(5):
        split = split_recordings(labels, 0.2, 0.1, seed, groups=groups.astype(str))
        assert_a_partition(labels, split)
        sides = {name: set(groups[split[name]].tolist()) for name in split}
        assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"]
        assert not sides["val"] & sides["test"]
        assert len(sides["val"]) == round(0.2 * 59) and len(sides["test"]) == round(0.1 * 59)
        assert set(labels[split["val"]].tolist()) == {0, 1, 2, 3}  # stratified by group
        alone = split_recordings(labels, 0.2, 0.1, seed, groups=np.arange(len(labels)))
        plain = split_recordings(labels, 0.2, 0.1, seed)
        assert all(np.array_equal(alone[name], plain[name]) for name in plain)


def test_a_class_found_only_in_a_group_of_another_class_keeps_it_in_training(caplog):
    """Class 2's only clip is in group f, mostly class 1: a draw of f goes back to training,
    unless f is all its split holds, and then the class is named."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 1, 1])
    groups = np.array(["a", "b", "c", "d", "e", "e", "f", "f", "g", "h"])
    for seed in range(20):
        split = split_recordings(labels, 0.3, 0.0, seed, classes=["x", "y", "z"], groups=groups)
        assert_a_partition(labels, split)
        assert 7 in split["train"], seed
    assert "1 groups of recordings go back to training" in caplog.text
    for seed in range(40):  # one group for validation: f cannot go back when drawn
        split = split_recordings(labels, 0.1, 0.0, seed, classes=["x", "y", "z"], groups=groups)
        if 7 in split["val"]:
            break
    else:
        pytest.fail("no seed drew the group of 'z' for validation")
    assert "1 classes have no recording in training" in caplog.text and ": z" in caplog.text


@pytest.mark.parametrize("groups", ["by class", "one"])
def test_groups_that_cannot_be_split_are_split_by_recording_with_a_warning(caplog, groups):
    """Every class's clips of one source (or every clip of one): no group can be validated
    while each class keeps one for training, so the split is by recording, as without groups."""
    labels = np.repeat(np.arange(4), 10)
    keys = labels.astype(str) if groups == "by class" else np.full(len(labels), "one")
    split = split_recordings(labels, 0.2, 0.1, seed=0, groups=keys)
    plain = split_recordings(labels, 0.2, 0.1, seed=0)
    assert all(np.array_equal(split[name], plain[name]) for name in plain)
    assert "cannot be split with each group on one side" in caplog.text
    assert "no class has two of the" in caplog.text


def test_a_fraction_too_large_for_the_groups_is_refused_not_split_by_recording(caplog):
    """Only data that no fraction could split by group is split by recording: a fraction too
    large is the user's to lower, and the error counts groups."""
    labels, groups = np.repeat([0, 1], 10), np.repeat(["s0", "s1", "s2", "s3"], 5)
    with pytest.raises(SplitError, match="4 groups of recordings .* too few to draw a valid"):
        split_recordings(labels, 0.7, 0.0, seed=0, groups=groups)
    assert "split by recording" not in caplog.text and "test split drew first" not in caplog.text
    split = split_recordings(labels, 0.5, 0.0, seed=0, groups=groups)
    assert not set(groups[split["train"]]) & set(groups[split["val"]])


def test_groups_unequal_in_size_give_a_warning_where_a_split_strays_from_its_fraction(caplog):
    labels = np.array([0] * 18 + [0, 1, 1, 1])
    groups = np.array(["big"] * 18 + ["s1", "s2", "s3", "s4"])
    drawn_big = False
    for seed in range(10):
        split = split_recordings(labels, 0.2, 0.0, seed, groups=groups)
        drawn_big |= 0 in split["val"]
    assert drawn_big and "the val split holds 18 of the 22 labelled recordings" in caplog.text


def test_fractions_that_leave_fewer_training_recordings_than_classes_are_refused():
    labels = np.repeat(np.arange(10), 2)  # 20 recordings: 18 drawn leave 2 for 10 classes
    with pytest.raises(SplitError, match="keep one of every class"):
        split_recordings(labels, 0.45, 0.45, seed=0)


# ---------------------------------------------------------------------------------------------
# A diverged model


def set_weights_to_nan(model: keras.Model) -> None:
    for weight in model.weights:
        weight.assign(np.full(weight.shape, np.nan, dtype=weight.dtype))


def test_nan_predictions_log_nan_scores_and_stop_training(tiny_model, caplog):
    rng = np.random.default_rng(0)
    chunk_recording, labels = np.array([0, 0, 1, 2, 3]), np.array([0, 1, 2, 3])
    x = rng.normal(0, 1, (len(chunk_recording), 16, 20, 1)).astype(np.float32)
    model = train_model.build_model_from_file(tiny_model, (16, 20, 1), 4)
    set_weights_to_nan(model)
    batches = ChunkBatches(x, np.arange(len(x)), labels[chunk_recording], 4, 4)
    callback = MAPCallback(batches, chunk_recording, labels, np.zeros((4, 4), bool))
    callback.set_model(model)
    logs = {"loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.25}  # accuracy: argmax of NaN
    callback.on_epoch_end(4, logs)
    assert model.stop_training
    assert logs["loss"] == 0.5
    for name in ("val_loss", "val_accuracy", "val_map", "val_map_bg", "val_chunk_ap"):
        assert np.isnan(logs[name]), name
    assert "epoch 5:" in caplog.text and "lower --learning-rate" in caplog.text


class WeightsToNaN(keras.callbacks.Callback):
    """Stands for a diverging loss: every weight becomes NaN as epoch `epoch` begins."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            set_weights_to_nan(self.model)


def test_a_run_that_diverges_stops_and_keeps_the_best_models(
    easy_data, tiny_model, tmp_path, monkeypatch, caplog
):
    def with_divergence(*args, **kwargs):
        return [*training_callbacks(*args, **kwargs), WeightsToNaN(epoch=2)]

    monkeypatch.setattr(train_model, "training_callbacks", with_divergence)
    run_dir = tmp_path / "run"
    args = ["--data", str(easy_data), "--model", str(tiny_model), "--out", str(run_dir),
            "--batch-size", "8", "--val-fraction", "0.25", "--test-fraction", "0.25",
            "--epochs", "6", "--patience", "10", "--inference-model", "final"]  # fmt: skip
    assert train_model.main(args) == 0
    assert "epoch 3:" in caplog.text and "lower --learning-rate" in caplog.text
    with (run_dir / "history.csv").open() as file:
        rows = file.read().splitlines()[1:]
    assert len(rows) == 3  # stopped after the diverged epoch, not at --epochs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name, scores in metrics["models"].items():
        assert scores["epoch"] <= 2, name  # from the epochs before
        model = keras.saving.load_model(run_dir / f"{name}.keras")
        assert all(np.isfinite(w).all() for w in model.get_weights()), name
    assert not (run_dir / "final.keras").exists()  # the diverged model is not kept
    inference = json.loads((run_dir / "inference.json").read_text())
    assert inference["model_file"] == "best_val_map.keras"


def test_a_class_without_recordings_is_named_in_a_warning(tmp_path, caplog):
    """A class whose every recording load_data skipped stays a model output: training says
    so, naming it, and goes on."""
    classes = ["aaa", "bbb", "ghost"]
    items = [
        RecordingChunks(f"m{i}", classes[i % 2], f"m{i}.wav", i % 2, np.zeros(3, np.uint8),
                        PARAMS.chunk_frames, 1.0,
                        compress_chunks(np.zeros((1, PARAMS.n_bins, PARAMS.chunk_frames),
                                                 np.float32), "gzip"))
        for i in range(4)
    ]  # fmt: skip
    write_dataset(tmp_path / "d.h5", DatasetInfo(PARAMS, classes, {}, {}, "gzip"), items)
    with open_dataset(tmp_path / "d.h5") as dataset:
        check_labels(dataset)
    assert "1 of 3 classes have no recording" in caplog.text and "for ghost" in caplog.text
