"""Per-class thresholds: max F1 on hand-made examples, the fallback, and thresholds.json written
by a tiny training run, equal to an independent computation on its validation recordings."""

import json

import h5py
import keras
import numpy as np
import pytest

from train import train_model
from train.thresholds import (
    FALLBACK_THRESHOLD,
    ThresholdsError,
    best_f1_threshold,
    choose_thresholds,
    read_thresholds,
)


def test_max_f1_threshold_lies_between_the_last_kept_score_and_the_next():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    positive = np.array([True, False, True, False, False])
    # keep >= 0.9: P 1, R 0.5, F1 0.667; keep >= 0.7: P 2/3, R 1, F1 0.8 (best)
    result = best_f1_threshold(scores, positive)
    assert result["threshold"] == pytest.approx(0.65)
    assert result["f1"] == pytest.approx(0.8)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == 1.0
    assert result["support"] == 2
    predicted = scores >= result["threshold"]
    assert predicted.tolist() == [True, True, True, False, False]


def test_ties_in_f1_go_to_the_higher_threshold_and_the_lowest_score_stands_alone():
    # keep >= 0.8: P 1, R 0.5 (F1 2/3); keep >= 0.3: P 0.5, R 1 (F1 2/3): the first is kept
    result = best_f1_threshold(np.array([0.8, 0.5, 0.4, 0.3]), np.array([1, 0, 0, 1], bool))
    assert result["threshold"] == pytest.approx(0.65)
    only = best_f1_threshold(np.array([0.3, 0.3]), np.array([True, False]))
    assert only["threshold"] == pytest.approx(0.3)  # nothing lower: on the score itself


def test_classes_without_validation_positives_get_the_fallback():
    probs = np.array([[0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.6, 0.1, 0.3]])
    chosen = choose_thresholds(probs, np.array([0, 1, -1]), ["a", "b", "c"])
    assert chosen["a"]["source"] == "max_f1" and chosen["a"]["threshold"] == pytest.approx(0.7)
    assert chosen["b"]["source"] == "max_f1" and chosen["b"]["threshold"] == pytest.approx(0.45)
    assert chosen["c"] == {
        "threshold": FALLBACK_THRESHOLD,
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "support": 0,
        "source": "fallback",
    }
    with pytest.raises(ValueError, match="recordings 3, classes 2"):
        choose_thresholds(probs, np.array([0, 1, -1]), ["a", "b"])


def test_read_thresholds_in_class_order_and_clear_errors(tmp_path):
    path = tmp_path / "thresholds.json"
    with pytest.raises(ThresholdsError, match="not found"):
        read_thresholds(path, ["a"])
    path.write_text(
        json.dumps(
            {"model_file": "m.keras", "classes": {"a": {"threshold": 0.2}, "b": {"threshold": 0.7}}}
        )
    )
    values, model_file = read_thresholds(path, ["b", "a"])
    assert values.tolist() == [0.7, 0.2] and model_file == "m.keras"
    with pytest.raises(ThresholdsError, match="no threshold of class 'z' .KeyError"):
        read_thresholds(path, ["a", "z"])
    path.write_text(json.dumps({"classes": {"a": {"threshold": 0.2}, "b": {"threshold": "x"}}}))
    with pytest.raises(ThresholdsError, match="no threshold of class 'b' .ValueError"):
        read_thresholds(path, ["a", "b"])
    path.write_text("[1, 2]")
    with pytest.raises(ThresholdsError, match="unreadable .TypeError"):
        read_thresholds(path, ["a"])
    for value in ("1.5", "NaN", "1" * 400):
        entries = f'"a": {{"threshold": 0.2}}, "b": {{"threshold": {value}}}'
        path.write_text(f'{{"classes": {{{entries}}}}}')
        with pytest.raises(ThresholdsError, match="class 'b'"):
            read_thresholds(path, ["a", "b"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.helpers import TINY_MODEL, write_easy_dataset
    from tests.test_train import train_args

    folder = tmp_path_factory.mktemp("thresholds")
    data, model = folder / "easy.h5", folder / "model-Tiny.py"
    write_easy_dataset(data)
    model.write_text(TINY_MODEL)
    run_dir = folder / "run"
    assert train_model.main(train_args(data, model, run_dir, "--epochs", "2")) == 0
    return run_dir, data


def test_training_saves_thresholds_chosen_on_the_validation_recordings(trained_run):
    run_dir, data = trained_run
    saved = json.loads((run_dir / "thresholds.json").read_text())
    assert saved["model_file"] == "best_val_map.keras"
    classes = json.loads((run_dir / "classes.json").read_text())["classes"]
    assert list(saved["classes"]) == classes
    # independently: the validation recordings' chunks through the model, averaged per recording
    val = set(json.loads((run_dir / "split.json").read_text())["val"])
    model = keras.saving.load_model(run_dir / "best_val_map.keras", compile=False)
    with h5py.File(data) as h5:
        media_ids = h5["MediaId"].asstr()[...]
        rows = np.flatnonzero(np.isin(media_ids, sorted(val)))
        chunks, labels = h5["X"][rows], h5["label"][rows]
    chunk_probs = model.predict(chunks, verbose=0)
    recordings = sorted(val)
    probs = np.array([chunk_probs[media_ids[rows] == m].mean(axis=0) for m in recordings])
    probs /= probs.sum(axis=1, keepdims=True)
    label = np.array([labels[media_ids[rows] == m][0] for m in recordings])
    expected = choose_thresholds(probs, label, classes)
    for class_id in classes:
        assert saved["classes"][class_id]["source"] == expected[class_id]["source"]
        assert saved["classes"][class_id]["support"] == expected[class_id]["support"]
        assert saved["classes"][class_id]["threshold"] == pytest.approx(
            expected[class_id]["threshold"], abs=1e-5
        )
