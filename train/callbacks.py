"""What runs after every epoch: the official MAP on the validation recordings, checkpoints,
early stopping and logs, all able to continue a run killed midway (`--resume`).

Keras calls callbacks in list order with one shared `logs` dict, so `MAPCallback` comes first:
its `val_map` is then in the logs that the checkpoints, EarlyStopping and CSVLogger read.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np

from preprocess.paths import remove_partials, write_text_atomically
from train.data import TrainError, predict_rows
from train.log import best_epoch
from train.metrics import chunk_micro_ap, mean_average_precision, recording_scores, top1_accuracy
from train.run_files import BACKUP, BEST_VAL_ACCURACY, BEST_VAL_LOSS, BEST_VAL_MAP, HISTORY
from train.saved_model import copy_atomically, save_atomically, save_model_atomically

logger = logging.getLogger(__name__)

# monitored value -> (checkpoint file, direction)
BEST = {
    "val_loss": (BEST_VAL_LOSS, "min"),
    "val_accuracy": (BEST_VAL_ACCURACY, "max"),
    "val_map": (BEST_VAL_MAP, "max"),
}


def score_predictions(
    chunk_probs: np.ndarray,
    chunk_recording: np.ndarray,
    labels: np.ndarray,
    background: np.ndarray,
) -> dict[str, float]:
    """BirdCLEF scores of chunk predictions.

    chunk_probs: (chunks, C) softmax; chunk_recording: (chunks,) recording index of each
    chunk; labels: (recordings,) class of each recording index; background: (recordings, C)
    bool background classes of each recording index.
    Returns map (official MAP, foreground species), map_bg (background species relevant
    too), chunk_ap (the 2016 scripts' chunk micro AP), accuracy (per chunk) and
    recording_accuracy (top class of the averaged recording scores).
    """
    ids, probs = recording_scores(chunk_probs, chunk_recording)
    n_classes = chunk_probs.shape[1]
    foreground = np.eye(n_classes, dtype=bool)[labels[ids]]
    chunk_labels = labels[chunk_recording]
    return {
        "map": mean_average_precision(probs, foreground),
        "map_bg": mean_average_precision(probs, foreground | background[ids].astype(bool)),
        "chunk_ap": chunk_micro_ap(chunk_probs, np.eye(n_classes)[chunk_labels]),
        "accuracy": top1_accuracy(chunk_probs, chunk_labels),
        "recording_accuracy": top1_accuracy(probs, labels[ids]),
    }


class MAPCallback(keras.callbacks.Callback):
    """Scores the validation recordings after each epoch: logs val_map (official MAP,
    foreground species), val_map_bg (with background species) and val_chunk_ap (the 2016
    scripts' chunk micro AP).

    Predictions that are not finite (training diverged: NaN weights) end training, as
    keras.callbacks.TerminateOnNaN does: that epoch's validation scores are logged as NaN,
    so the checkpoints keep the best models of the epochs before, and a message says why.

    batches: unshuffled validation batches; the other arguments as in `score_predictions`.
    """

    def __init__(self, batches, chunk_recording, labels, background):
        super().__init__()
        self.batches, self.chunk_recording = batches, chunk_recording
        self.labels, self.background = labels, background
        self.diverged = False  # the model's predictions went NaN (training stopped)

    def on_epoch_end(self, epoch, logs=None):
        probs = predict_rows(self.model, self.batches)
        if not np.isfinite(probs).all():
            self.diverged = True
            # every val_ score of a diverged model means nothing (the argmax of NaN is class 0,
            # an accuracy that can beat the best): NaN, which no checkpoint saves
            keras_scores = [name for name in logs if name.startswith("val_")]
            ours = ["val_map", "val_map_bg", "val_chunk_ap"]
            logs.update(dict.fromkeys([*keras_scores, *ours], np.nan))
            logger.error(
                "epoch %d: the model's validation predictions are not finite (NaN): training "
                "diverged and stops here, keeping the best models and history of the epochs "
                "before; try a lower --learning-rate",
                epoch + 1,
            )
            self.model.stop_training = True
            return
        scores = score_predictions(probs, self.chunk_recording, self.labels, self.background)
        logs.update(
            val_map=scores["map"], val_map_bg=scores["map_bg"], val_chunk_ap=scores["chunk_ap"]
        )


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` (.keras) after every epoch whose `monitor` beats the best so
    far (strictly, as keras.callbacks.ModelCheckpoint with save_best_only), atomically: the
    model is written under a temporary name, flushed to disk and renamed, so a kill or a full
    disk leaves the previous best model whole.

    initial_value_threshold: the best value of the epochs before a --resume (None: none).
    """

    def __init__(self, path: Path, monitor: str, mode: str, initial_value_threshold=None):
        super().__init__()
        self.path, self.monitor, self.mode = Path(path), monitor, mode
        self.best = initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not np.isfinite(current):
            return
        better = self.best is None or (
            current < self.best if self.mode == "min" else current > self.best
        )
        if better:
            self.best = float(current)
            save_model_atomically(self.model, self.path)


class EpochTime(keras.callbacks.Callback):
    """Logs epoch_seconds, the wall time of each epoch (validation and MAP included) and of
    what ran since the epoch before ended (its checkpoints, logs and backup; before the first,
    the start of training): together the training's wall time, from which the time budget of
    a resumed run goes on (`train/recipe.ScheduleAndBudget`)."""

    def on_train_begin(self, logs=None):
        self.last_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        logs["epoch_seconds"], self.last_end = now - self.last_end, now


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping (mode "min" or "max", given) whose patience counts the epochs of the
    run before a --resume.

    past: the monitored value of each epoch already done (empty for a new run).
    """

    def __init__(self, past: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.past = np.asarray(past, dtype=float)
        self.direction = kwargs["mode"]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        best = best_epoch(self.past, self.direction)
        if best is not None:
            self.best, self.best_epoch = float(self.past[best]), best
            self.wait = len(self.past) - 1 - best


def training_callbacks(
    run_dir: Path,
    map_callback: MAPCallback,
    patience: int,
    past: dict[str, np.ndarray],
    monitor: str = "val_loss",
    extra: list[keras.callbacks.Callback] = (),
) -> list[keras.callbacks.Callback]:
    """Callbacks of a training run in run_dir, in the order they must run.

    past: history of the epochs done before a --resume ({} for a new run), so the best
    checkpoints and early stopping carry on instead of starting over.
    monitor: what early stopping watches, a key of BEST, or "none" for no early stopping.
    extra: callbacks that run after the MAP callback and before the checkpoints (e.g. a
    learning-rate schedule).
    """

    def best_so_far(name: str) -> float | None:
        best = best_epoch(past.get(name, []), BEST[name][1])
        return None if best is None else float(past[name][best])

    callbacks = [map_callback, EpochTime(), *extra]  # the epoch's time includes the MAP's
    for name, (filename, mode) in BEST.items():
        callbacks.append(BestCheckpoint(run_dir / filename, name, mode, best_so_far(name)))
    if monitor != "none":
        callbacks.append(
            ResumableEarlyStopping(
                past.get(monitor, []),
                monitor=monitor,
                mode=BEST[monitor][1],
                patience=patience,
                verbose=1,
            )
        )
    if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "logs", write_graph=False))
    else:
        logger.info("no TensorBoard logs: they need tensorflow and tensorboard installed")
    callbacks += [
        keras.callbacks.CSVLogger(run_dir / HISTORY, append=True),
        # last: an epoch counts as done once everything above has logged it
        RunBackup(run_dir / BACKUP),
    ]
    return callbacks


# what BackupAndRestore(double_checkpoint=True) writes in its folder: the latest state (its
# weights, and its record of the epoch), and the state before it (.bkp)
LATEST_WEIGHTS, LATEST_RECORD = "latest.weights.h5", "training_metadata.json"
BACKUP_FILES = (LATEST_WEIGHTS, f"{LATEST_WEIGHTS}.bkp", LATEST_RECORD, f"{LATEST_RECORD}.bkp")


def remove_backup(backup_dir: Path) -> None:
    """Delete BackupAndRestore's files in backup_dir, then the folder if that left it empty:
    unlike Keras's own clean-up (which removes the whole folder), never a file it did not
    write."""
    for name in BACKUP_FILES:
        (backup_dir / name).unlink(missing_ok=True)
        for suffix in ("", ".weights.h5"):  # write_text_atomically's, save_atomically's
            remove_partials(backup_dir / name, suffix)
    if backup_dir.is_dir() and not any(backup_dir.iterdir()):
        backup_dir.rmdir()


class RunBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore (two training states kept) whose files stay when fit() ends: the
    trainer removes them (`remove_backup`) once the run has written that training is done, so
    a kill before then resumes into the finished fit instead of starting it again. Saving once
    an epoch, its batch hook does nothing: `async_safe` lets Keras dispatch steps without
    waiting for each one's logs (a hook after every step makes it wait)."""

    async_safe = True

    def __init__(self, backup_dir: Path):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=False)

    def _save_model(self):
        """As BackupAndRestore's (the state before kept as .bkp, then the new one), each file
        written whole under a new name and renamed into place, where Keras writes them in
        place: a kill then left an empty record of the epoch, and a link put in the folder
        meanwhile was written through."""
        weights, metadata = Path(self._weights_path), Path(self._training_metadata_path)
        weights.parent.mkdir(parents=True, exist_ok=True)
        for latest, previous in ((weights, self._prev_weights_path),
                                 (metadata, self._prev_training_metadata_path)):  # fmt: skip
            if latest.is_file():
                copy_atomically(latest, Path(previous))

        def save_weights(name: Path) -> None:
            self.model.save_weights(name, overwrite=True)

        # no fsync, as Keras: a state lost to a power cut is the one before, or the first
        save_atomically(save_weights, weights, ".weights.h5", sync=False)
        state = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        write_text_atomically(metadata, json.dumps(state))

    def on_train_begin(self, logs=None):
        """Restore the saved state (Keras falls back on the one before when the latest cannot
        be read); a state that cannot be read at all is a TrainError naming the folder."""
        restore_previous_state(Path(self.backup_dir))
        try:
            super().on_train_begin(logs)
        # h5py: OSError for a file cut short, RuntimeError for damaged structures; Keras:
        # ValueError for weights that do not fit; a damaged metadata file: ValueError, KeyError
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            raise TrainError(
                f"{self.backup_dir}: the training state saved there cannot be read "
                f"({type(error).__name__}: {error}); delete that folder to train the run "
                "again from its first epoch"
            ) from error


def read_history(path: Path) -> dict[str, np.ndarray]:
    """history.csv as {column: float array}; {} when absent or empty."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return {}
    return {
        name: np.array([float(row[name]) if row[name] else np.nan for row in rows])
        for name in rows[0]
    }


def saved_epoch(metadata: Path) -> int | None:
    """The epoch a BackupAndRestore metadata file records; None where it cannot be read (a
    kill while Keras wrote it, in place, leaves it empty or cut short)."""
    try:
        return int(json.loads(metadata.read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def backup_states(backup: Path) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    """((weights, record of the epoch) of the latest state, (the same) of the one before) in a
    BackupAndRestore folder."""
    weights, record = backup / LATEST_WEIGHTS, backup / LATEST_RECORD
    return (weights, record), (Path(f"{weights}.bkp"), Path(f"{record}.bkp"))


def readable_state(weights: Path, record: Path) -> int | None:
    """The epoch of a saved state whose record can be read and whose weights exist, else
    None."""
    epoch = saved_epoch(record)
    return epoch if epoch is not None and weights.is_file() else None


def epochs_backed_up(run_dir: Path) -> int:
    """Epochs completed by the run whose BackupAndRestore state is in run_dir (0: none),
    writing nothing. A latest state whose record of its epoch cannot be read (a kill while
    Keras wrote it in place, before RunBackup wrote whole files) counts as the one before,
    which `restore_previous_state` puts in its place once training starts; with no readable
    state, TrainError names the folder."""
    (_, record), previous = backup_states(run_dir / BACKUP)
    if not record.is_file():
        return 0
    if (epoch := saved_epoch(record)) is not None:
        return epoch
    if (epoch := readable_state(*previous)) is None:
        raise TrainError(
            f"{run_dir / BACKUP}: the training state saved there cannot be read "
            f"({record.name} is damaged, and no state before it was kept); delete that "
            "folder to train the run again from its first epoch"
        )
    return epoch


def restore_previous_state(backup: Path) -> None:
    """Where the latest state's record of its epoch cannot be read and the state before can,
    put the one before in its place (as Keras does for weights it cannot read)."""
    latest, previous = backup_states(backup)
    record = latest[1]
    if not record.is_file() or saved_epoch(record) is not None:
        return
    if readable_state(*previous) is None:
        return  # epochs_backed_up has said so
    logger.warning("%s is damaged (a kill while it was written?): resuming from the state "
                   "before", record)  # fmt: skip
    for name, source in zip(latest, previous, strict=True):
        copy_atomically(source, name)


def trim_history(path: Path, n_epochs: int) -> None:
    """Keep the first n_epochs rows of history.csv: later ones were logged by an epoch whose
    backup a kill prevented, and that epoch runs again."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", newline="") as file:
        lines = file.readlines()
    if len(lines) > n_epochs + 1:
        write_text_atomically(path, "".join(lines[: n_epochs + 1]))
