"""Training: the split by recording, the HDF5 batches, the MAP callback, a whole run on an
easy problem, resuming after a kill, and clear messages for bad input."""

import argparse
import csv
import gc
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

import train.data
from preprocess.dataset import (
    DatasetInfo,
    RecordingChunks,
    compress_chunks,
    read_rows,
)
from preprocess.paths import write_text_atomically
from preprocess.workers import RowReaders, WorkerLost
from tests.helpers import (
    CLASSES,
    PARAMS,
    TINY_MODEL,
    still_running,
    write_dataset,
    write_easy_dataset,
)
from train import train_model
from train.callbacks import (
    BACKUP_FILES,
    MAPCallback,
    ResumableEarlyStopping,
    RunBackup,
    epochs_backed_up,
    remove_backup,
    restore_previous_state,
)
from train.data import (
    ChunkBatches,
    SplitError,
    TrainError,
    available_memory,
    load_splits,
    place_on_accelerator,
    predict_rows,
    split_recordings,
)
from train.log import best_epoch
from train.model_file import accelerator_memory
from train.run_files import BACKUP

ROOT = Path(__file__).resolve().parents[1]


def train_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--out", str(out), "--batch-size", "8",
            "--val-fraction", "0.25", "--test-fraction", "0.25", *extra]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Split by recording


def test_split_is_by_recording_stratified_and_repeatable(caplog):
    labels = np.repeat(np.arange(5), 20)
    labels[:3] = -1  # unlabelled: left out
    split = split_recordings(labels, 0.2, 0.2, seed=1)
    every = np.concatenate([split[name] for name in ("train", "val", "test")])
    assert len(every) == len(set(every.tolist())) == 97  # no recording on two sides
    assert set(every.tolist()) == set(np.flatnonzero(labels >= 0).tolist())
    for name in ("val", "test"):  # 20% of 97 -> 19: 3 or 4 of every class
        counts = np.bincount(labels[split[name]], minlength=5)
        assert counts.sum() == 19 and counts.min() >= 3 and counts.max() <= 4
    again = split_recordings(labels, 0.2, 0.2, seed=1)
    other = split_recordings(labels, 0.2, 0.2, seed=2)
    assert all(np.array_equal(split[n], again[n]) for n in split)
    assert not np.array_equal(split["val"], other["val"])
    assert "3 unlabelled recordings left out" in caplog.text


def test_split_sends_a_single_recording_to_training(caplog):
    labels = np.array([0] * 10 + [1] * 10 + [2])
    split = split_recordings(labels, 0.2, 0.2, seed=0, classes=["a", "b", "lonely"])
    assert 20 in split["train"]
    assert "single recording" in caplog.text and "lonely" in caplog.text


def test_an_unstratified_split_is_a_warning(caplog):
    labels = np.array([0, 1, 2, 3] * 3)  # 2 validation recordings cannot cover 4 classes
    split_recordings(labels, 0.2, 0.01, seed=0)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("NOT stratified" in r.getMessage() for r in warnings), caplog.text


def test_split_with_too_few_recordings():
    with pytest.raises(SplitError, match="each of the 2 labelled recordings is of a class of"):
        split_recordings(np.array([0, 1]), 0.3, 0.0, seed=0)
    with pytest.raises(SplitError, match="too few to draw a test split of 2 recordings"):
        split_recordings(np.array([0, 0, 1]), 0.2, 0.5, seed=0)
    with pytest.raises(SplitError, match="validation split.*--test-fraction 0 leaves all"):
        split_recordings(np.array([0, 0, 1]), 0.3, 0.3, seed=0)
    assert len(split_recordings(np.array([0, 0, 1]), 0.3, 0.0, seed=0)["val"]) == 1
    with pytest.raises(SplitError, match="fraction"):
        split_recordings(np.arange(10) % 2, 0.0, 0.1, seed=0)


# ---------------------------------------------------------------------------------------------
# Batches from the HDF5 file


def test_available_memory_counts_the_reclaimable_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sysconf", {"SC_AVPHYS_PAGES": 25, "SC_PAGE_SIZE": 4096}.get)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2000 kB\nMemFree: 100 kB\nMemAvailable: 1500 kB\n")
    assert available_memory(meminfo) == 1500 * 1024
    meminfo.write_text("MemTotal: 2000 kB\n")  # an old kernel: the free pages instead
    assert available_memory(meminfo) == 25 * 4096
    assert available_memory(tmp_path / "absent") == 25 * 4096


def test_streamed_batches_equal_in_memory(easy_data):
    with h5py.File(easy_data) as h5:
        rows = np.flatnonzero(h5["label"][...] >= 0)[5:40]
        labels = h5["label"][...][rows]
        x = read_rows(h5["X"], rows)
        np.testing.assert_array_equal(x, h5["X"][...][rows])
    streamed = ChunkBatches(easy_data, rows, labels, len(CLASSES), batch_size=8)
    in_memory = ChunkBatches(x, rows, labels, len(CLASSES), batch_size=8)
    assert len(streamed) == 5  # 35 rows: last batch partial
    for index in range(len(streamed)):
        (xs, ys), (xm, ym) = streamed[index], in_memory[index]
        np.testing.assert_array_equal(xs, xm)
        np.testing.assert_array_equal(ys, ym)
        np.testing.assert_array_equal(ys.argmax(axis=1), labels[index * 8 : index * 8 + 8])
    pickle.loads(pickle.dumps(streamed))[0]  # a worker process reopens the file itself


def test_background_species_share_a_training_chunks_target():
    x = np.zeros((4, 2, 3, 1), np.float32)
    background = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0], [1, 0, 0]], bool)  # row 3: its label
    labels = np.array([0, 1, 2, 0])
    weighted = ChunkBatches(
        x, np.arange(4), labels, 3, 4, background=background, background_weight=0.5
    )
    np.testing.assert_allclose(
        weighted[0][1], [[0.5, 0.25, 0.25], [0, 1, 0], [1 / 3, 0, 2 / 3], [1, 0, 0]]
    )
    for plain in (
        ChunkBatches(x, np.arange(4), labels, 3, 4, background=background),
        ChunkBatches(x, np.arange(4), labels, 3, 4),
    ):
        np.testing.assert_array_equal(plain[0][1], np.eye(3, dtype=np.float32)[labels])


def test_only_training_chunks_get_their_recordings_background_species(easy_data):
    from preprocess.dataset import open_dataset

    with open_dataset(easy_data) as dataset:
        table = dataset.recordings
        split = split_recordings(table["label"], 0.25, 0.25, seed=0)
        for weight in (0.0, 0.3):
            args = argparse.Namespace(
                batch_size=1000, seed=0, workers=1, in_memory="yes", background_weight=weight
            )
            data = load_splits(dataset, split, args)
            train = data["train"]
            (_, y), positions = train.batches[0], train.batches.positions(0)
            background = table["background"][train.chunk_recording[positions]]
            assert background.any(axis=1).any() and not background.any(axis=1).all()
            targets = np.eye(len(dataset.classes))[train.batches.labels[positions]]
            targets += weight * background
            np.testing.assert_allclose(y, targets / targets.sum(axis=1, keepdims=True), rtol=1e-6)
            assert data["val"].batches.background is None
            assert data["test"].batches.background is None


def test_batches_over_several_devices_are_padded_and_predictions_trimmed(easy_data):
    """JAX's DataParallel needs every batch divisible by the devices: 35 rows in batches of 8
    over 4 devices end with 3 rows padded to 4 (the last one again), and predict_rows drops
    the copy; from host memory and from a backend tensor alike."""
    with h5py.File(easy_data) as h5:
        rows = np.flatnonzero(h5["label"][...] >= 0)[5:40]
        labels = h5["label"][...][rows]
        x = read_rows(h5["X"], rows)
    for source in (x, keras.ops.convert_to_tensor(x)):
        batches = ChunkBatches(source, rows, labels, len(CLASSES), batch_size=8, multiple_of=4)
        last_x, last_y = (keras.ops.convert_to_numpy(part) for part in batches[len(batches) - 1])
        assert last_x.shape[0] == last_y.shape[0] == 4
        np.testing.assert_array_equal(last_x, np.concatenate([x[32:], x[34:]]))
        np.testing.assert_array_equal(last_y.argmax(axis=1), [*labels[32:], labels[34]])
        assert all(len(batches[index][0]) == 8 for index in range(len(batches) - 1))
        model = keras.Sequential(
            [keras.Input(x.shape[1:]), keras.layers.Flatten(), keras.layers.Dense(2)]
        )
        predicted = predict_rows(model, batches)
        np.testing.assert_allclose(predicted, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_batches_from_worker_processes_and_the_device_reach_the_model_in_order(easy_data):
    """What a model sees from ChunkBatches read by worker processes (as train_model.py
    --workers 2 streams), or gathered from a backend tensor, is the rows in order."""
    with h5py.File(easy_data) as h5:
        rows = np.flatnonzero(h5["label"][...] >= 0)[3:30]
        labels = h5["label"][...][rows]
        x = h5["X"][...][rows]
    mean = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.GlobalAveragePooling2D()])
    sources = {
        "worker processes": ChunkBatches(easy_data, rows, labels, len(CLASSES), 4, readers=2),
        "device": ChunkBatches(keras.ops.convert_to_tensor(x), rows, labels, len(CLASSES), 4),
    }
    for name, batches in sources.items():
        seen = mean.predict(batches, verbose=0)
        np.testing.assert_allclose(seen[:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-5, err_msg=name)


def test_reader_processes_read_batches_equal_and_end_with_them(easy_data):
    """Batches that reader processes read together equal those read in-process, epoch after
    epoch, asked in any order, through a slot in memory used again and again; the processes
    and their folder end with the batches, also where other readers were forked since."""
    rows = np.arange(5, 45)
    labels = rows % len(CLASSES)
    alone = ChunkBatches(easy_data, rows, labels, len(CLASSES), 7, shuffle=True, seed=3)
    read = ChunkBatches(easy_data, rows, labels, len(CLASSES), 7, shuffle=True, seed=3, readers=3)
    for _ in range(2):
        for index in [4, 0, 5, 1, 3, 2]:  # as fit asks: in a random order
            for got, want in zip(read[index], alone[index], strict=True):
                assert type(got) is np.ndarray
                np.testing.assert_array_equal(got, want)
        read.on_epoch_end()
        alone.on_epoch_end()
    readers = read._row_readers
    folder, processes = Path(readers.folder), readers.processes
    assert folder.parent == Path("/dev/shm")
    assert len(list(folder.glob("*.rows"))) == 1  # each batch gone before the next: one slot
    assert len(processes) == 3
    later = ChunkBatches(easy_data, rows, labels, len(CLASSES), 7, readers=2)
    later[0]  # processes forked since hold copies of the first readers' pipes
    del read, readers
    gc.collect()
    assert not still_running([each.pid for each in processes], seconds=10)
    assert [each.exitcode for each in processes] == [0, 0, 0]  # ended when asked, not killed
    assert not folder.exists()
    assert later[1][0].shape == (7, *alone[0][0].shape[1:])  # the others read on


def test_reader_processes_serve_threads_asking_at_once(easy_data, monkeypatch):
    """Batches read by reader processes for several threads at once (PyDataset's workers,
    say) are each thread's own, equal to the rows read in this process, though every batch
    is kept (so each takes a slot of its own, made while others are made); the threads'
    first calls start one set of processes, not one each."""
    started = []
    monkeypatch.setattr(
        train.data, "RowReaders", lambda *args: started.append(args) or RowReaders(*args)
    )
    rows = np.arange(3, 60)
    labels = rows % len(CLASSES)
    alone = ChunkBatches(easy_data, rows, labels, len(CLASSES), 5, shuffle=True, seed=4)
    read = ChunkBatches(easy_data, rows, labels, len(CLASSES), 5, shuffle=True, seed=4, readers=2)
    with ThreadPoolExecutor(4) as threads:
        for _ in range(3):
            kept = list(threads.map(read.__getitem__, range(len(read))))
            for index, batch in enumerate(kept):
                for got, want in zip(batch, alone[index], strict=True):
                    np.testing.assert_array_equal(got, want)
            read.on_epoch_end()
            alone.on_epoch_end()
    assert len(read._row_readers.slots) >= len(read)
    assert len(started) == 1


def test_a_reader_process_that_dies_is_a_clear_error(easy_data):
    rows = np.arange(40)
    read = ChunkBatches(easy_data, rows, rows % len(CLASSES), len(CLASSES), 4, readers=2)
    read[0]
    os.kill(read._row_readers.processes[0].pid, 9)  # as the out-of-memory killer
    deadline = time.monotonic() + 20  # the pool learns of the death from another thread
    with pytest.raises(WorkerLost, match=r"a process reading .*easy.h5 ended abruptly"):
        while time.monotonic() < deadline:
            for index in range(len(read)):
                read[index]
    assert isinstance(read.read_error, WorkerLost)
    with pytest.raises(WorkerLost, match="ended abruptly"):  # from the broken pool's submit
        read[0]


def test_chunks_in_memory_move_to_a_gpu_with_room(easy_data):
    with h5py.File(easy_data) as h5:
        x = h5["X"][...][:20]
    rows = np.arange(20)
    data = {
        "train": SimpleNamespace(batches=ChunkBatches(x, rows, rows % 3, 3, 8)),
        "val": SimpleNamespace(batches=ChunkBatches(easy_data, rows, rows % 3, 3, 8)),
    }
    assert not place_on_accelerator(data, None)  # no GPU, or its size unknown
    assert not place_on_accelerator(data, 2 * x.nbytes - 1)  # more than half of it
    assert isinstance(data["train"].batches.source, np.ndarray)
    assert place_on_accelerator(data, 2 * x.nbytes)
    moved = data["train"].batches
    assert not isinstance(moved.source, np.ndarray) and isinstance(data["val"].batches.source, Path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(moved[1][0]), x[8:16])
    assert accelerator_memory() is None  # the CPU machine has no GPU


def test_shuffled_batches_cover_every_row_once_per_epoch(easy_data):
    with h5py.File(easy_data) as h5:
        x = h5["X"][...]
    rows = np.arange(len(x))
    batches = ChunkBatches(easy_data, rows, np.zeros(len(rows), int), 4, 8, shuffle=True)
    orders = []
    for _ in range(2):
        seen = np.concatenate([batches[i][0] for i in range(len(batches))])
        matches = [np.flatnonzero((x == chunk).all(axis=(1, 2, 3))) for chunk in seen]
        orders.append([int(m[0]) for m in matches])
        batches.on_epoch_end()
    assert sorted(orders[0]) == sorted(orders[1]) == rows.tolist()
    assert orders[0] != orders[1] != rows.tolist()


# ---------------------------------------------------------------------------------------------
# The MAP callback


def test_map_callback_equals_an_independent_computation(tiny_model):
    rng = np.random.default_rng(3)
    n_classes, chunk_recording = 4, np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5])
    labels = np.array([0, 1, 2, 3, 1, 0])  # class of each recording
    background = np.zeros((6, n_classes), bool)
    background[[0, 2, 4], [3, 0, 2]] = True
    x = rng.normal(0, 1, (len(chunk_recording), 16, 20, 1)).astype(np.float32)
    model = train_model.build_model_from_file(tiny_model, (16, 20, 1), n_classes)
    batches = ChunkBatches(x, np.arange(len(x)), labels[chunk_recording], n_classes, 4)
    callback = MAPCallback(batches, chunk_recording, labels, background)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)

    probs = model.predict(x, verbose=0)
    means = np.array([probs[chunk_recording == r].mean(axis=0) for r in range(6)])
    foreground = np.eye(n_classes, dtype=bool)[labels]
    assert logs["val_map"] == pytest.approx(
        label_ranking_average_precision_score(foreground, means)
    )
    assert logs["val_map_bg"] == pytest.approx(
        label_ranking_average_precision_score(foreground | background, means)
    )
    onehot = np.eye(n_classes)[labels[chunk_recording]]
    assert logs["val_chunk_ap"] == pytest.approx(
        average_precision_score(onehot, probs, average="micro")
    )
    assert 0 < logs["val_map"] < 1  # an untrained model: a score that can be wrong


def test_early_stopping_patience_counts_epochs_before_resume(tiny_model):
    stopping = ResumableEarlyStopping(np.array([1.0, 0.5, 0.6, 0.7]), monitor="val_loss",
                                      mode="min", patience=3)  # fmt: skip
    stopping.set_model(train_model.build_model_from_file(tiny_model, (16, 20, 1), 4))
    stopping.on_train_begin()
    assert (stopping.best, stopping.wait) == (0.5, 2)
    stopping.on_epoch_end(4, {"val_loss": 0.55})
    assert stopping.model.stop_training


# ---------------------------------------------------------------------------------------------
# Whole runs


@pytest.fixture(scope="module")
def trained_run(easy_data, tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "easy"
    code = train_model.main(train_args(easy_data, tiny_model, run_dir, "--epochs", "8"))
    assert code == 0
    return run_dir


def test_a_batch_larger_than_the_data_trains_as_one_batch(easy_data, tiny_model, tmp_path, caplog):
    out = tmp_path / "run"
    argv = train_args(easy_data, tiny_model, out, "--epochs", "1", "--batch-size", "1000")
    assert train_model.main(argv) == 0
    assert "batch size 1000 is larger than the" in caplog.text
    assert json.loads((out / "config.json").read_text())["batch_size"] == 1000  # as asked
    with (out / "history.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 1


def test_run_learns_the_easy_problem(trained_run):
    with (trained_run / "history.csv").open() as file:
        history = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in history] == list(range(8))
    assert {"val_map", "val_map_bg", "val_chunk_ap", "val_loss", "val_accuracy"} <= set(history[0])
    assert float(history[-1]["val_map"]) > 0.9
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test_recordings"] == 10
    # the last best by loss has trained longest; the first epoch to reach the best accuracy or
    # MAP (often already 1.0 on 10 recordings) may be an early one: far above chance (0.52) only
    assert metrics["models"]["best_val_loss"]["map"] > 0.9
    for name in ("best_val_loss", "best_val_accuracy", "best_val_map"):
        assert metrics["models"][name]["map"] > 0.7
        # background species make other classes relevant too: a different score, not a bound
        assert metrics["models"][name]["map_bg"] != metrics["models"][name]["map"]
        assert 0 < metrics["models"][name]["map_bg"] <= 1


def test_run_folder_holds_what_prediction_needs(trained_run, easy_data):
    for name in ("best_val_loss.keras", "best_val_accuracy.keras", "best_val_map.keras",
                 "config.json", "model.py", "loss.png", "accuracy.png", "map.png"):  # fmt: skip
        assert (trained_run / name).is_file(), name
    with h5py.File(easy_data) as h5:
        assert (trained_run / "params.json").read_text().strip() == h5.attrs["params"]
        media_ids = h5["recordings/MediaId"].asstr()[...]
        labels = h5["recordings/label"][...]
    classes = json.loads((trained_run / "classes.json").read_text())
    assert classes == {"classes": CLASSES, "class_names": {c: c.upper() for c in CLASSES}}
    split = json.loads((trained_run / "split.json").read_text())
    sides = [set(split[name]) for name in ("train", "val", "test")]
    assert sum(map(len, sides)) == len(set.union(*sides))  # no recording on two sides
    assert set.union(*sides) == set(media_ids[labels >= 0])
    assert not (trained_run / "backup").exists()  # removed once training ended
    if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"):
        assert list((trained_run / "logs").rglob("*tfevents*")), "no TensorBoard logs"

    from predict.predict import load_run

    run = load_run(trained_run)
    assert run.classes == CLASSES and run.params == PARAMS


def test_best_epoch_skips_missing_values_and_keeps_the_first_of_ties():
    assert best_epoch(np.array([np.nan, 0.5, 0.3, 0.3, np.inf]), "min") == 2
    assert best_epoch(np.array([np.nan, 0.2, 0.9, 0.9, -np.inf]), "max") == 2
    assert best_epoch(np.array([np.nan, np.inf]), "min") is None
    assert best_epoch(np.array([]), "max") is None


def test_runs_table_row(trained_run):
    with (trained_run.parent / "runs.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1
    row = rows[0]
    assert row["run_dir"] == str(trained_run) and row["epochs"] == "8"
    assert row["layer_00"].startswith("Conv2D(filters=4, kernel_size=(3, 3)")
    assert float(row["test_map_best_val_loss"]) > 0.9


def test_two_classes_train_a_two_column_softmax(tiny_model, tmp_path):
    # the 2016 scripts' LabelBinarizer gave two classes a single column, breaking the softmax
    data = tmp_path / "two.h5"
    write_easy_dataset(data, per_class=8, classes=["aaa", "bbb"])
    run_dir = tmp_path / "run"
    assert train_model.main(train_args(data, tiny_model, run_dir, "--epochs", "3")) == 0
    model = keras.saving.load_model(run_dir / "best_val_map.keras")
    assert model.output_shape == (None, 2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["models"]["best_val_map"]["map"] > 0.9


def test_a_run_without_a_test_split_trains_and_says_so(tiny_model, easy_data, tmp_path, caplog):
    # --test-fraction 0 (all labelled recordings for training and validation) once crashed
    # on the empty test split
    run_dir = tmp_path / "run"
    args = train_args(easy_data, tiny_model, run_dir, "--epochs", "2")
    args[args.index("--test-fraction") + 1] = "0"
    assert train_model.main(args) == 0
    split = json.loads((run_dir / "split.json").read_text())
    assert split["test"] == [] and split["train"] and split["val"]
    assert "no test scores" in caplog.text
    assert (run_dir / "inference.json").is_file()


class Interrupted(BaseException):
    """Stands for a kill: no handler of the program's may catch it."""


class Interrupt(keras.callbacks.Callback):
    """Raises during epoch `epoch`: after its second batch (a kill mid-epoch), or at its end
    before the backup is saved (a kill after the epoch was logged)."""

    def __init__(self, epoch: int, at_end: bool):
        super().__init__()
        self.epoch, self.at_end = epoch, at_end

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1 and not self.at_end:
            raise Interrupted

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch and self.at_end:
            raise Interrupted


class Weights(keras.callbacks.Callback):
    """Records the weights at the start and end of every epoch."""

    def __init__(self):
        super().__init__()
        self.begin, self.end = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = [w.copy() for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = [w.copy() for w in self.model.get_weights()]


@pytest.mark.parametrize("at_end", [False, True], ids=["mid-epoch", "before-backup"])
def test_resume_continues_from_the_last_finished_epoch(
    at_end, easy_data, tiny_model, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    args = train_args(easy_data, tiny_model, run_dir, "--epochs", "5")
    make_callbacks = train_model.training_callbacks
    first, second = Weights(), Weights()

    def interrupted(*arguments):
        callbacks = make_callbacks(*arguments)
        # the interruption runs before BackupAndRestore (the last callback)
        return [first, *callbacks[:-1], Interrupt(2, at_end), callbacks[-1]]

    monkeypatch.setattr(train_model, "training_callbacks", interrupted)
    with pytest.raises(Interrupted):
        train_model.main(args)
    with (run_dir / "history.csv").open() as file:
        before = list(csv.DictReader(file))
    assert len(before) == (3 if at_end else 2)  # epoch 2 logged, but not backed up
    assert not (run_dir / "metrics.json").exists()
    with (run_dir / "history.csv").open("a") as file:
        file.write("3,0.5")  # a line a kill cut short

    monkeypatch.setattr(train_model, "training_callbacks", lambda *a: [second, *make_callbacks(*a)])
    assert train_model.main(args + ["--resume"]) == 0
    with (run_dir / "history.csv").open() as file:
        after = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in after] == [0, 1, 2, 3, 4]
    assert after[:2] == before[:2]
    assert sorted(second.begin) == [2, 3, 4]  # epochs 0 and 1 were not trained again
    for resumed, saved in zip(second.begin[2], first.end[1], strict=True):
        np.testing.assert_array_equal(resumed, saved)  # from the weights after epoch 1
    assert (run_dir / "metrics.json").is_file()
    # a kill before the last outputs were all written: no metrics.json, which doall.sh takes
    # for all done, so the next --resume writes them
    (run_dir / "metrics.json").unlink()
    (run_dir / "loss.png").unlink()

    def killed(*arguments):
        raise Interrupted

    monkeypatch.setattr(train_model, "append_run", killed)
    with pytest.raises(Interrupted):
        train_model.main(args + ["--resume"])
    assert (run_dir / "loss.png").is_file() and not (run_dir / "metrics.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(train_model, "training_callbacks", lambda *a: [second, *make_callbacks(*a)])
    # once finished, --resume only scores the best models again, replacing the run's row; what
    # a kill left of the plots', the run files' and the table's writes is removed
    left = [run_dir / ".loss.png.4194305-0a1b2c3d.partial",
            run_dir / ".metrics.json.4194305-0a1b2c3d.partial",
            tmp_path / ".runs.csv.4194305-0a1b2c3d.partial"]  # fmt: skip
    for path in left:
        path.write_text("a kill's")
    assert train_model.main(args + ["--resume"]) == 0
    assert not any(path.exists() for path in left)
    assert sorted(second.begin) == [2, 3, 4]
    with (tmp_path / "runs.csv").open() as file:
        assert [row["run_dir"] for row in csv.DictReader(file)] == [str(run_dir)]


def test_a_run_resumed_on_other_recordings_is_refused(easy_data, tiny_model, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_model.main(train_args(easy_data, tiny_model, run_dir, "--epochs", "1")) == 0
    moved = tmp_path / "moved" / "easy.h5"  # the same recordings, loaded from another folder
    moved.parent.mkdir()
    shutil.copy(easy_data, moved)
    with h5py.File(moved, "a") as h5:
        h5.attrs["inputs_digest"] = "other paths and file times"
    argv = train_args(moved, tiny_model, run_dir, "--epochs", "1", "--resume")
    assert train_model.main(argv) == 0
    other = tmp_path / "other.h5"  # another task's recordings, of the same classes
    write_easy_dataset(other, per_class=11)
    argv = train_args(other, tiny_model, run_dir, "--epochs", "1", "--resume")
    assert train_model.main(argv) == 2
    error = capsys.readouterr().err
    assert f"{other} holds other recordings than the run in {run_dir} was trained on" in error


def test_a_damaged_training_state_is_an_error_naming_its_folder(
    easy_data, tiny_model, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    args = train_args(easy_data, tiny_model, run_dir, "--epochs", "4")
    make_callbacks = train_model.training_callbacks

    def interrupted(*arguments):
        callbacks = make_callbacks(*arguments)
        return [*callbacks[:-1], Interrupt(2, True), callbacks[-1]]

    monkeypatch.setattr(train_model, "training_callbacks", interrupted)
    with pytest.raises(Interrupted):
        train_model.main(args)
    monkeypatch.undo()
    for state in (run_dir / "backup").glob("latest.weights.h5*"):  # the state and its copy
        state.write_bytes(b"not HDF5")
    assert train_model.main(args + ["--resume"]) == 2
    error = capsys.readouterr().err
    assert f"error: {run_dir / 'backup'}: the training state saved there cannot be read" in error


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("not hdf5", "not a readable HDF5 file"),
        ("other format", "format 'other'"),
        ("no build_model", "defines no build_model"),
        ("wrong output", "outputs shape (None, 7), but the data has 4 classes"),
        ("run exists", "already holds a training run: add --resume"),
        ("few recordings", "each of the 4 labelled recordings is of a class of its own"),
        ("damaged row", "row 3 of X in"),
        ("syntax error", "cannot load model file: SyntaxError"),
        ("sys.exit", "cannot load model file: SystemExit: 3"),
        ("missing model", "no such model file"),
        ("bad weights", "cannot load weights into"),
        ("one class", "all of one class (aaa); training needs at least two classes"),
        ("no labels", "none of its 3 recordings is labelled"),
        ("data as runs table", "easy.h5 exists and is not a runs table"),
        ("linked table lock", "the runs table's lock, is a link"),
        ("out is a file", "is a file, not a run folder"),
        ("damaged table", "recordings/first_row does not follow recordings/n_chunks"),
        ("nan streamed", "row 5 of X in "),
        ("nan in memory", "row 5 of X in "),
    ],
)
def test_bad_input_gives_a_clear_message(
    change, message, easy_data, tiny_model, trained_run, tmp_path, capsys
):
    data, model, out, extra = easy_data, tiny_model, tmp_path / "run", []
    if change == "not hdf5":
        data = tmp_path / "data.h5"
        data.write_text("hello")
    elif change == "other format":
        data = tmp_path / "data.h5"
        data.write_bytes(easy_data.read_bytes())
        with h5py.File(data, "a") as h5:
            h5.attrs["format"] = "other"
    elif change in ("no build_model", "wrong output"):
        model = tmp_path / "model-Bad.py"
        size = "n_classes" if change == "no build_model" else "7"
        name = "make_model" if change == "no build_model" else "build_model"
        model.write_text(TINY_MODEL.replace("n_classes, activation", f"{size}, activation")
                         .replace("build_model", name))  # fmt: skip
    elif change == "run exists":
        out = trained_run
    elif change == "few recordings":
        data = tmp_path / "few.h5"
        write_easy_dataset(data, per_class=1, n_unlabelled=0)
    elif change == "damaged row":  # met by a reader process while streaming
        data = tmp_path / "damaged.h5"
        data.write_bytes(easy_data.read_bytes())
        with h5py.File(data, "a") as h5:
            stored = h5["X"].id.read_direct_chunk((3, 0, 0, 0))[1]
            h5["X"].id.write_direct_chunk((3, 0, 0, 0), stored[: len(stored) // 2])
        extra = ["--in-memory", "no", "--workers", "2"]
    elif change in ("syntax error", "sys.exit"):
        model = tmp_path / "model-Bad.py"
        model.write_text(TINY_MODEL + ("def (\n" if change == "syntax error" else "exit(3)\n"))
    elif change == "missing model":
        model = tmp_path / "model-Missing.py"
    elif change == "bad weights":
        (tmp_path / "bad.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
        extra = ["--weights", str(tmp_path / "bad.weights.h5")]
    elif change in ("one class", "no labels"):
        data = tmp_path / "one.h5"
        per_class, unlabelled = (6, 0) if change == "one class" else (0, 3)
        write_easy_dataset(data, per_class=per_class, n_unlabelled=unlabelled, classes=["aaa"])
    elif change == "data as runs table":
        extra = ["--runs-table", str(easy_data)]
    elif change == "linked table lock":
        (tmp_path / "victim").write_text("the user's")
        (tmp_path / ".runs.csv.lock").symlink_to(tmp_path / "victim")
    elif change == "out is a file":
        out = tmp_path / "notes.txt"
        out.write_text("mine")
    elif change in ("nan streamed", "nan in memory"):
        data = tmp_path / "nan.h5"
        data.write_bytes(easy_data.read_bytes())
        with h5py.File(data, "a") as h5:
            chunk = np.full((1, PARAMS.n_bins, PARAMS.chunk_frames), np.nan, np.float32)
            h5["X"].id.write_direct_chunk((5, 0, 0, 0), compress_chunks(chunk, "gzip")[0].data)
        extra = ["--in-memory", "no" if change == "nan streamed" else "yes"]
        message += f"{data} holds NaN or infinite values"
    elif change == "damaged table":
        data = tmp_path / "damaged.h5"
        data.write_bytes(easy_data.read_bytes())
        with h5py.File(data, "a") as h5:
            h5["recordings/first_row"][1] = 0
    data_before = data.read_bytes() if data.is_file() else None
    assert train_model.main(train_args(data, model, out, "--epochs", "1", *extra)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert "Traceback" not in error
    if change not in ("run exists", "damaged row", "nan streamed", "out is a file"):
        # checked before writing: a failed start leaves no run folder (nor its lock file)
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    if data_before is not None:
        assert data.read_bytes() == data_before  # inputs untouched
    if change == "out is a file":
        assert out.read_text() == "mine"


def test_a_run_that_never_finished_an_epoch_starts_again(
    easy_data, tiny_model, tmp_path, monkeypatch
):
    """A run stopped in its first epoch, or with a model that failed, holds config.json but
    nothing to resume: the same command (with --resume or not, other model or not) starts it
    again."""
    run_dir = tmp_path / "run"
    args = train_args(easy_data, tiny_model, run_dir, "--epochs", "2")
    make_callbacks = train_model.training_callbacks
    monkeypatch.setattr(
        train_model,
        "training_callbacks",
        lambda *a: [*make_callbacks(*a)[:-1], Interrupt(0, at_end=False), make_callbacks(*a)[-1]],
    )
    with pytest.raises(Interrupted):
        train_model.main(args)
    assert (run_dir / "config.json").is_file() and not (run_dir / "best_val_loss.keras").exists()
    monkeypatch.setattr(train_model, "training_callbacks", make_callbacks)
    other_model = tmp_path / "model-Other.py"
    other_model.write_text(TINY_MODEL.replace("Conv2D(4", "Conv2D(3"))
    again = train_args(easy_data, other_model, run_dir, "--epochs", "2", "--resume")
    assert train_model.main(again) == 0
    with (run_dir / "history.csv").open() as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1"]
    assert (run_dir / "model.py").read_text() == other_model.read_text()


def test_checkpoints_are_written_whole_or_not_at_all(tiny_model, tmp_path, monkeypatch):
    from train.callbacks import BestCheckpoint
    from train.saved_model import ModelFileError, load_saved_model

    model = train_model.build_model_from_file(
        tiny_model, (PARAMS.n_bins, PARAMS.chunk_frames, 1), 4
    )
    best = tmp_path / "best_val_loss.keras"
    checkpoint = BestCheckpoint(best, "val_loss", "min")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    saved = best.read_bytes()
    checkpoint.on_epoch_end(1, {"val_loss": 2.0})  # not better: not saved
    checkpoint.on_epoch_end(2, {"val_loss": float("nan")})
    assert best.read_bytes() == saved

    def full_disk(path, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.on_epoch_end(3, {"val_loss": 0.5})
    assert best.read_bytes() == saved  # the last best is whole
    assert [p.name for p in tmp_path.iterdir()] == [best.name]  # no partial file left
    assert load_saved_model(best).output_shape == (None, 4)

    best.write_bytes(saved[: len(saved) // 2])  # as a full disk left it before this fix
    with pytest.raises(ModelFileError, match=r"best_val_loss.keras: damaged model file"):
        load_saved_model(best)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_saved_model(tmp_path / "none.keras")
    bomb = tmp_path / "bomb.keras"  # a config.json of 200 MB of spaces, deflated to 200 KB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b"{" + b" " * 200 * 2**20 + b"}")
    with pytest.raises(ModelFileError, match=r"would unpack to 0\.2 GB"):
        load_saved_model(bomb)


def test_a_damaged_best_model_is_named_when_scoring(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    model = run_dir / "best_val_accuracy.keras"
    model.write_bytes(model.read_bytes()[:1000])
    config = json.loads((run_dir / "config.json").read_text())
    args = train_args(Path(config["data"]), Path(config["model"]), run_dir, "--epochs", "8")
    assert train_model.main([*args, "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {model}: damaged model file")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--epochs", "0", "argument --epochs: must be at least 1, not 0"),
        ("--batch-size", "-3", "argument --batch-size: must be at least 1, not -3"),
        ("--workers", "0", "argument --workers: must be at least 1, not 0"),
        ("--workers", "1000000", "argument --workers: must be at most"),
        ("--patience", "-1", "argument --patience: must be at least 0, not -1"),
        ("--seed", "-1", "argument --seed: must be at least 0, not -1"),
        ("--learning-rate", "0", "argument --learning-rate: must be in (0, inf), not 0"),
        ("--val-fraction", "1.5", "argument --val-fraction: must be in (0, 1), not 1.5"),
        ("--test-fraction", "-0.1", "argument --test-fraction: must be in [0, 1), not -0.1"),
        ("--val-fraction", "0.6", "leave no recordings for training"),
        ("--epochs", "1e9", "argument --epochs: '1e9' is not a whole number"),
    ],
)
def test_impossible_numbers_are_argument_errors(
    easy_data, tiny_model, tmp_path, capsys, option, value, message
):
    args = train_args(easy_data, tiny_model, tmp_path / "run", option, value)
    with pytest.raises(SystemExit) as exit_status:
        train_model.main([*args, "--test-fraction", "0.5"] if "no recordings" in message else args)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_mixed_precision_is_float16_unless_bfloat16_is_asked(easy_data, tiny_model, tmp_path):
    args = train_args(easy_data, tiny_model, tmp_path / "run")
    assert train_model.parse_args(args).mixed_precision is None
    assert train_model.parse_args([*args, "--mixed-precision"]).mixed_precision == "float16"
    asked = train_model.parse_args([*args, "--mixed-precision", "bfloat16"])
    assert asked.mixed_precision == "bfloat16"


def test_a_second_run_in_the_same_folder_is_refused(
    easy_data, tiny_model, tmp_path, lock_held_elsewhere, capsys
):
    out = tmp_path / "run"
    pid = lock_held_elsewhere(out / ".lock")
    assert train_model.main(train_args(easy_data, tiny_model, out, "--epochs", "1")) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: the run folder {out} is being written by another process")
    assert f"(pid {pid}" in error and not (out / "config.json").exists()


def test_command_line_error_without_traceback(tmp_path, tiny_model):
    data = tmp_path / "old.h5"
    write_easy_dataset(data, per_class=2)
    with h5py.File(data, "a") as h5:
        h5.attrs["format_version"] = 0
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_model.py"), "--data", str(data),
         "--model", str(tiny_model), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: " in result.stderr and "format version 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_turns_a_model_files_exit_into_an_error_line(tmp_path, easy_data):
    model = tmp_path / "model-Exits.py"
    model.write_text("import sys\nsys.exit(3)\n")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train" / "train_model.py"),
               *train_args(easy_data, model, out, "--epochs", "1")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"error: {model}: cannot load model file: SystemExit: 3" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "config.json").exists()
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_an_error_line(tmp_path, easy_data, tiny_model, capsys):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        args = train_args(easy_data, tiny_model, parent / "run", "--epochs", "1")
        assert train_model.main(args) == 2
    finally:
        parent.chmod(0o755)
    assert capsys.readouterr().err.startswith(f"error: {parent / 'run'}: Permission denied")


# ---------------------------------------------------------------------------------------------
# Images of the stored chunks


def test_generate_images_writes_a_limited_folder_per_class(easy_data, tmp_path):
    import matplotlib.pyplot as plt

    from train.generate_images import chunks_per_class, generate_images

    labels = np.array([2, 0, 2, -1, 2, 0, -1])
    np.testing.assert_array_equal(chunks_per_class(labels, 2), [0, 1, 2, 3, 5, 6])
    assert generate_images(easy_data, tmp_path, per_class=3) == 3 * (len(CLASSES) + 1)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted([*CLASSES, "unlabelled"])
    image = plt.imread(next((tmp_path / "aaa").glob("aaa0_*.png")))
    assert image.shape[:2] == (PARAMS.n_bins, PARAMS.chunk_frames)
    named = tmp_path / "named.h5"  # a class called unlabelled keeps its folder to itself
    write_easy_dataset(named, per_class=1, classes=["aaa", "unlabelled"])
    assert generate_images(named, tmp_path / "named", per_class=5) > 3
    folders = sorted(p.name for p in (tmp_path / "named").iterdir())
    assert folders == ["_unlabelled", "aaa", "unlabelled"]


def test_generate_images_keeps_ids_from_the_data_inside_the_output(tmp_path, capsys):
    from train.generate_images import main as images_main

    hostile = ["../../escape", "/etc/absolute", "line\nbreak", ".hidden"]
    items = [
        RecordingChunks(
            media_id,
            "../up",
            f"{number}.wav",
            0,
            np.zeros(1, np.uint8),
            n_frames=PARAMS.chunk_frames,
            duration_s=1.0,
            chunks=compress_chunks(np.ones((1, PARAMS.n_bins, PARAMS.chunk_frames), "f4"), "gzip"),
        )
        for number, media_id in enumerate(hostile)
    ]
    data = tmp_path / "hostile.h5"
    write_dataset(data, DatasetInfo(PARAMS, ["../up"], {"../up": "x"}, {}, "gzip"), items)
    out = tmp_path / "deep" / "images"
    assert images_main(["--data", str(data), "--out", str(out)]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert len(written) == len(hostile)
    assert all(path.parts[:2] == ("deep", "images") for path in written)

    assert images_main(["--data", str(tmp_path / "none.h5"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit):
        images_main(["--data", str(data), "--out", str(out), "--per-class", "0"])


def test_generate_images_never_writes_through_links_planted_in_the_output(easy_data, tmp_path):
    from predict.detections import OutputError
    from preprocess.dataset import open_dataset
    from preprocess.paths import OutputPathError
    from train.generate_images import generate_images

    out, victim = tmp_path / "images", tmp_path / "victim"
    victim.mkdir()
    assert generate_images(easy_data, out, per_class=1) == len(CLASSES) + 1
    image = next((out / "aaa").glob("*.png"))
    (victim / "notes.txt").write_text("the user's")
    image.unlink()
    os.link(victim / "notes.txt", image)  # a second name of another file, where an image goes
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    with pytest.raises(OutputPathError, match=rf"{image.name} exists and is not an image this"):
        generate_images(easy_data, out, per_class=1)  # nor is any other image written
    assert image.read_text() == "the user's"
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.png")} == before
    image.unlink()
    import matplotlib.pyplot as plt

    plt.imsave(image, np.zeros((4, 4)))  # a picture of the user's at that name
    picture = image.read_bytes()
    with pytest.raises(OutputPathError, match=rf"{image.name} exists and is not an image this"):
        generate_images(easy_data, out, per_class=1)
    assert image.read_bytes() == picture
    image.unlink()
    assert generate_images(easy_data, out, per_class=1) == len(CLASSES) + 1
    assert image.read_bytes().startswith(b"\x89PNG")
    assert generate_images(easy_data, out, per_class=1) == len(CLASSES) + 1  # its own: replaced
    with open_dataset(easy_data) as dataset:  # matplotlib's, of a chunk's size: maybe the user's
        plt.imsave(image, np.flipud(dataset.X[0, :, :, 0]), cmap="binary")
    picture = image.read_bytes()
    with pytest.raises(OutputPathError, match=rf"{image.name} exists and is not an image this"):
        generate_images(easy_data, out, per_class=1)
    assert image.read_bytes() == picture
    image.unlink()
    (out / "bbb").rename(tmp_path / "bbb images")
    (out / "bbb").symlink_to(victim)

    with pytest.raises(OutputError, match=r"images/bbb is a link"):
        generate_images(easy_data, out, per_class=1)
    assert (victim / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]


def test_run_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "classes.json"
    write_text_atomically(path, '{"classes": ["a", "b"]}\n')
    replace = os.replace

    def full_disk(source, target):
        Path(source).write_text(Path(source).read_text(encoding="utf-8")[:5], encoding="utf-8")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomically(path, '{"classes": ["a", "b", "c"]}\n')
    monkeypatch.setattr(os, "replace", replace)
    assert json.loads(path.read_text()) == {"classes": ["a", "b"]}
    assert [p.name for p in tmp_path.iterdir()] == ["classes.json"]  # nothing partial left


def test_a_kill_after_fit_still_leaves_the_final_model(
    easy_data, tiny_model, tmp_path, monkeypatch
):
    def killed(*args):
        raise KeyboardInterrupt  # as a kill right after fit() ended

    run_dir = tmp_path / "run"
    argv = train_args(easy_data, tiny_model, run_dir, "--epochs", "2", "--inference-model", "final")
    monkeypatch.setattr(train_model, "write_training_done", killed)
    assert train_model.main(argv) != 0  # "error: interrupted"
    assert (run_dir / "final.keras").is_file() and not (run_dir / "training_done.json").exists()
    history, best = (run_dir / "history.csv").read_text(), (run_dir / "best_val_map.keras")
    best_bytes = best.read_bytes()
    monkeypatch.undo()
    assert train_model.main([*argv, "--resume"]) == 0
    assert (run_dir / "training_done.json").is_file()
    assert json.loads((run_dir / "inference.json").read_text())["model_file"] == "final.keras"
    # the finished fit was resumed, not trained again: the same epochs, the same best model
    assert (run_dir / "history.csv").read_text() == history
    assert best.read_bytes() == best_bytes
    assert not (run_dir / "backup").exists()  # gone once training is done


def test_resuming_a_run_with_a_damaged_classes_or_split_file_is_an_error_line(
    trained_run, tmp_path, capsys
):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "classes.json").write_text('{"classes": [')
    config = json.loads((run_dir / "config.json").read_text())
    args = train_args(Path(config["data"]), Path(config["model"]), run_dir, "--epochs", "8")
    assert train_model.main([*args, "--resume"]) == 2
    assert "classes.json or params.json is missing or damaged" in capsys.readouterr().err
    shutil.copy(trained_run / "classes.json", run_dir / "classes.json")
    (run_dir / "split.json").write_text('{"train": ')
    assert train_model.main([*args, "--resume"]) == 2
    assert f"error: {run_dir / 'split.json'} is damaged" in capsys.readouterr().err


def test_a_resume_after_a_kill_mid_backup_goes_on_from_the_state_before(tmp_path, caplog):
    """Keras writes its record of the saved epoch in place: a kill then leaves it empty."""
    backup = tmp_path / BACKUP
    backup.mkdir()
    (backup / "training_metadata.json").write_text("")
    (backup / "latest.weights.h5").write_bytes(b"")
    with pytest.raises(TrainError, match="cannot be read .* delete that folder"):
        epochs_backed_up(tmp_path)
    (backup / "training_metadata.json.bkp").write_text('{"epoch": 3, "batch": 0}')
    (backup / "latest.weights.h5.bkp").write_bytes(b"weights of epoch 3")
    assert epochs_backed_up(tmp_path) == 3
    assert (backup / "latest.weights.h5").read_bytes() == b""  # the checks write nothing
    restore_previous_state(backup)  # as training starts
    assert "resuming from the state before" in caplog.text
    assert (backup / "latest.weights.h5").read_bytes() == b"weights of epoch 3"
    assert epochs_backed_up(tmp_path) == 3
    (backup / ".latest.weights.h5.4194305-0a1b2c3d.partial.weights.h5").write_bytes(b"a kill's")
    (backup / ".training_metadata.json.4194305-0a1b2c3d.partial").write_bytes(b"a kill's")
    remove_backup(backup)
    assert not backup.exists()


def test_the_backup_is_never_written_through_a_link_put_in_its_folder(tmp_path):
    """Keras writes its backup in place, by name, every epoch: a link that someone who can
    write into the run folder put there during training was written through."""
    victims = {name: tmp_path / f"victim {name}" for name in BACKUP_FILES}
    for victim in victims.values():
        victim.write_text("the user's")
    backup = tmp_path / "run" / BACKUP

    class PlantLinks(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                for name, victim in victims.items():
                    (backup / name).unlink(missing_ok=True)
                    (backup / name).symlink_to(victim)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x, y = np.zeros((8, 3), np.float32), np.eye(2, dtype=np.float32)[[0, 1] * 4]
    model.fit(x, y, epochs=3, verbose=0, callbacks=[PlantLinks(), RunBackup(backup)])
    assert all(victim.read_text() == "the user's" for victim in victims.values())
    assert not any((backup / name).is_symlink() for name in BACKUP_FILES)
    assert epochs_backed_up(tmp_path / "run") == 3
    assert sorted(path.name for path in backup.iterdir()) == sorted(BACKUP_FILES)


def test_a_resume_starts_from_the_state_before_a_damaged_latest_one(tmp_path, caplog):
    """A kill while Keras wrote its record of the epoch in place left it empty: training goes
    on from the state before, where Keras raised and the run stopped."""
    backup = tmp_path / BACKUP

    def tiny_model():
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        return model

    x, y = np.zeros((8, 3), np.float32), np.eye(2, dtype=np.float32)[[0, 1] * 4]
    tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[RunBackup(backup)])
    (backup / "training_metadata.json").write_text("")
    resumed = tiny_model()
    callback = RunBackup(backup)
    callback.set_model(resumed)
    callback.on_train_begin()
    assert resumed._initial_epoch == 1  # the state before: after the first epoch
    assert "resuming from the state before" in caplog.text


def test_a_refused_start_removes_the_folders_it_made_and_no_other(easy_data, tmp_path):
    kept = tmp_path / "runs"
    kept.mkdir()
    out = kept / "new" / "nested" / "run"
    argv = train_args(easy_data, tmp_path / "model-Missing.py", out, "--epochs", "1")
    assert train_model.main(argv) == 2
    assert kept.is_dir() and list(kept.iterdir()) == []
