"""The run folder of a training run (--out; its files are listed in train_model.py --help):
whether it holds a run to resume and whether that run fits the data, the files written
beside the checkpoints (config.json, params.json, classes.json, split.json, model.py,
training_done.json, thresholds.json), the test scores of the best models (metrics.json), and
the run's row in the runs table.

Files are written whole or not at all (`write_text_atomically`). Everything a new run checks
comes before `write_run_files`, so a start that fails leaves the folder as it was (a folder
it made, with its lock file, it removes again). Training
writes only into a folder that is new, empty or a run of its own (`check_trainer_may_write`),
so it never overwrites or deletes a file it did not write.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import time
from pathlib import Path

import keras
import numpy as np

from preprocess.dataset import Dataset, DatasetError, content_digest, open_dataset
from preprocess.paths import is_partial_of, remove_partials, write_text_atomically
from train.callbacks import (
    BEST,
    epochs_backed_up,
    read_history,
    remove_backup,
    score_predictions,
    trim_history,
)
from train.data import (
    SPLITS,
    SplitData,
    TrainError,
    read_errors_reported,
    split_recordings,
)
from train.log import PLOTS, best_epoch, history_columns, model_columns
from train.model_file import list_devices
from train.run_files import (
    BACKUP,
    CLASSES,
    CONFIG,
    DONE,
    HISTORY,
    INFERENCE,
    LOCK,
    METRICS,
    MODEL_SOURCE,
    PARAMS,
    SPLIT,
    THRESHOLDS,
)
from train.saved_model import saved_model_probs
from train.thresholds import save_validation_thresholds

logger = logging.getLogger(__name__)

SETTINGS = (
    "batch_size",
    "learning_rate",
    "patience",
    "seed",
    "val_fraction",
    "test_fraction",
    "mixed_precision",
    "weights",
    "in_memory",
    "recipe",
    "optimizer",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "background_weight",
    "normalize",
    "augment",
    "class_balance",
    "early_stop_on",
    "time_budget",
    "pooling",
    "inference_model",
)  # columns of the runs table
# what write_run_files adds to the options in config.json, so a config.json of anything else
# is not taken for a run's
CONFIG_MARKS = ("backend", "keras_version", "devices", "started")
# what a start leaves in a folder before config.json: the run lock train_model.main takes
# (and, after a kill, a temporary config.json: `is_partial_of`)
BEFORE_CONFIG = {LOCK}


# ---------------------------------------------------------------------------------------------
# Starting or resuming


def start_run_dir(run_dir: Path, resume: bool) -> bool:
    """Check run_dir can take this run (writing nothing); returns whether an earlier run is
    resumed. A run that never finished an epoch (its start failed, or it was stopped during
    its first epoch) has nothing to resume: it is started again, with or without --resume."""
    check_trainer_may_write(run_dir)
    started = (run_dir / CONFIG).is_file()
    if started and not finished_an_epoch(run_dir):
        logger.info("%s holds a run that never finished an epoch: starting it again", run_dir)
        started = False
    if started and not resume:
        raise TrainError(
            f"{run_dir} already holds a training run: add --resume to continue it, or "
            "choose another --out"
        )
    if resume and not started:
        logger.info("%s holds no run to resume: starting a new one", run_dir)
    return started


def classes_json(dataset: Dataset) -> dict:
    """What classes.json holds: the dataset's class ids in model-output order and their names
    (written by `write_run_files`, compared on --resume)."""
    return {"classes": dataset.classes, "class_names": dataset.class_names}


def check_trainer_may_write(run_dir: Path) -> None:
    """The rule of what --out may be: a folder that does not exist yet, one holding nothing
    but what a start leaves before its first run file (BEFORE_CONFIG), or one with a
    config.json written by this trainer (`is_run_config`; written first, it marks every
    folder training wrote into). Any other folder (a home or project folder, say) is refused
    with a TrainError, as training would overwrite its model.py or config.json, or delete its
    history.csv or backup/."""
    if not run_dir.exists():
        return
    check_no_links(run_dir)
    names = {entry.name for entry in run_dir.iterdir()}
    if {name for name in names if not is_partial_of(name, CONFIG)} <= BEFORE_CONFIG:
        return
    if not is_run_config(run_dir / CONFIG):
        raise TrainError(
            f"{run_dir} is not empty and holds no training run (no {CONFIG} written by "
            "train_model.py): choose a new or empty --out, as training would overwrite or "
            "delete files in it"
        )


def check_no_links(run_dir: Path) -> None:
    """Refuse a run folder holding a link at any depth (the folder itself may be one), or a
    file with another name elsewhere (a hard link): the trainer writes, truncates and appends
    to files of fixed names there (history.csv, the checkpoints and their temporary files,
    backup/, logs/), and a link planted at one of them, in a run folder received from
    someone else, say, would send those writes to another file. Pipes and devices too:
    reading config.json or classes.json from a pipe would wait for a writer forever."""
    for folder, subfolders, files in os.walk(run_dir):
        for name in subfolders + files:
            try:
                status = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # a running trainer's temporary file, gone meanwhile
                continue
            if stat.S_ISLNK(status.st_mode):
                kind = "a link"
            elif stat.S_ISREG(status.st_mode) and status.st_nlink > 1:
                kind = "a file with other names (a hard link)"
            elif not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode)):
                kind = "an entry that is not a file (a pipe, a device)"
            else:
                continue
            raise TrainError(
                f"{run_dir} holds {kind}, {Path(folder, name)}: training writes only files "
                "of its own into its run folder (replace it by a copy, or choose another --out)"
            )


def started_at(run_dir: Path) -> str:
    """When the run in run_dir started, as its config.json says."""
    config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    return str(config["started"])


def is_run_config(path: Path) -> bool:
    """Whether path is a config.json written by `write_run_files`: a JSON object with the
    entries it adds to the options (CONFIG_MARKS)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, a folder, not text, not JSON
        return False
    return isinstance(config, dict) and all(mark in config for mark in CONFIG_MARKS)


def finished_an_epoch(run_dir: Path) -> bool:
    """Whether the run in run_dir got past its first epoch (or finished). history.csv's lines
    are counted, not parsed: a kill may have cut its last line short."""
    history = run_dir / HISTORY
    logged = history.is_file() and len(history.read_bytes().splitlines()) > 1  # header + rows
    return (run_dir / DONE).is_file() or epochs_backed_up(run_dir) > 0 or logged


# options a resumed run may change: where its files are, how its data is read, how long it
# trains and what is chosen once it has (the data and model file are compared by content)
RESUMABLE_OPTIONS = {
    "data", "model", "out", "resume", "weights", "epochs", "patience", "in_memory", "workers",
    "runs_table", "verbose", "inference_model", "pooling", "val_fraction", "test_fraction",
}  # fmt: skip


# resumable options a finished run has no other value of: it trained (and split) with its own
FINISHED_WITH = {"epochs", "patience", "val_fraction", "test_fraction"}

# resumable options that a finished run resumed is scored anew with
RESCORED_WITH = ("pooling", "inference_model")

# options added since runs began to be recorded -> the value a run that lacks them trained with
BEFORE_OPTION = {"background_weight": 0.0}


def changed_settings(
    config: dict, args: argparse.Namespace, resumable: set[str] = RESUMABLE_OPTIONS
) -> list[str]:
    """'--option: started X, now Y' for each training setting in args that differs from the
    run's config.json (other than the `resumable` options; an option a config lacks is
    compared with what runs did before it existed, BEFORE_OPTION, where that is known): the
    optimizer, schedule, augmentation... of a run cannot change half way."""
    changes = []
    for name, value in vars(args).items():
        if name in resumable or (name not in config and name not in BEFORE_OPTION):
            continue
        started = config.get(name, BEFORE_OPTION.get(name))
        now = str(value) if isinstance(value, Path) else value
        if isinstance(value, Path) and isinstance(started, str):  # relative or not, the same
            started, now = str(Path(started).resolve()), str(value.resolve())
        if started != now:
            changes.append(f"--{name.replace('_', '-')}: started {started!r}, now {now!r}")
    return changes


def check_resumed_run(
    run_dir: Path, dataset: Dataset, data_digest: str, args: argparse.Namespace
) -> None:
    """Check the data (data_digest: its `content_digest`), model file and training settings of
    a resumed run are the ones it started with; those of a finished run include the epochs,
    patience and split fractions (FINISHED_WITH)."""
    config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    finished = (run_dir / DONE).is_file()
    changes = changed_settings(
        config, args, RESUMABLE_OPTIONS - FINISHED_WITH if finished else RESUMABLE_OPTIONS
    )
    if changes and finished:
        raise TrainError(
            f"{run_dir} holds a finished run trained with other settings "
            f"({'; '.join(changes)}): train a new run in another --out (doall.sh: another "
            f"--name), or delete {run_dir} to train it again"
        )
    if changes:
        raise TrainError(
            f"{run_dir} holds a run started with other settings ({'; '.join(changes)}): "
            "resume with the settings it started with, or start a new run in another --out"
        )
    if config.get("data_digest") and config["data_digest"] != data_digest:
        raise TrainError(
            f"{dataset.path} holds other recordings than the run in {run_dir} was trained on "
            "(files added, changed or relabelled since): train a new run in another --out "
            f"(doall.sh: another --name), or delete {run_dir} to train it again"
        )
    classes = classes_json(dataset)
    try:
        started_with = json.loads((run_dir / CLASSES).read_text(encoding="utf-8"))
        params = (run_dir / PARAMS).read_text(encoding="utf-8")
    except (OSError, ValueError, RecursionError) as error:
        raise TrainError(
            f"{run_dir} holds a run whose classes.json or params.json is missing or damaged "
            f"({error}): start a new run in another --out"
        ) from error
    if started_with != classes or params != dataset.file.attrs["params"]:
        raise TrainError(
            f"{dataset.path} has other classes or preprocessing parameters than the run "
            f"in {run_dir}: resume with the data file the run started with"
        )
    started_model = (run_dir / MODEL_SOURCE).read_text(encoding="utf-8")
    if started_model != args.model.read_text(encoding="utf-8"):
        raise TrainError(
            f"{args.model} differs from the model the run in {run_dir} started with "
            f"({run_dir / MODEL_SOURCE}): resume with that model file"
        )


def finished_as_asked(args: argparse.Namespace) -> bool:
    """Whether args.out holds a finished, scored run of the data, model file and settings that
    args (train_model.py's) ask for, the pooling and model it predicts with included: doall.sh
    then leaves it as it is. False where anything differs or cannot be read: train_model.py
    then says what, or scores the run anew for another pooling or model."""
    run_dir = args.out
    if not ((run_dir / DONE).is_file() and (run_dir / METRICS).is_file()):
        return False
    try:
        config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
        if any(config.get(name) != getattr(args, name) for name in RESCORED_WITH):
            return False
        with open_dataset(args.data) as dataset:
            check_resumed_run(run_dir, dataset, content_digest(dataset), args)
    except (TrainError, DatasetError, OSError, ValueError, RecursionError):
        return False
    return True


def load_or_make_split(
    run_dir: Path, dataset: Dataset, args: argparse.Namespace, resuming: bool
) -> dict[str, np.ndarray]:
    """Recording indices of each split: split.json's when resuming, else a new split
    (which write_run_files saves to split.json)."""
    recordings = dataset.recordings
    media_ids = list(recordings["MediaId"])
    if len(set(media_ids)) != len(media_ids):
        raise TrainError(f"{dataset.path}: MediaIds are not unique; cannot split by recording")
    path = run_dir / SPLIT
    if resuming and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            named = [m for name in SPLITS for m in saved[name]]
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            raise TrainError(
                f"{path} is damaged ({type(error).__name__}: {error}): the run cannot be "
                "resumed; start a new run in another --out"
            ) from error
        index = {media_id: number for number, media_id in enumerate(media_ids)}
        missing = [m for m in named if m not in index]
        if missing:
            raise TrainError(
                f"{path} names {len(missing)} recordings missing from {dataset.path} (e.g. "
                f"{missing[0]}): resume with the data file the run started with"
            )
        logger.info("split of %s (seed %s)", path, saved["seed"])
        return {name: np.sort([index[m] for m in saved[name]]).astype(np.int64) for name in SPLITS}

    # the recordings of one audio (clips of one source: metadata.with_groups) stay together
    groups = [f"group {group}" if group else f"recording {media_id}"
              for group, media_id in zip(recordings["group"], media_ids, strict=True)]  # fmt: skip
    return split_recordings(
        recordings["label"],
        args.val_fraction,
        args.test_fraction,
        args.seed,
        classes=dataset.classes,
        groups=groups,
    )


# the run files written whole under temporary names (`write_text_atomically`, the plots)
REPLACED_WHOLE = (CONFIG, PARAMS, CLASSES, MODEL_SOURCE, SPLIT, DONE, INFERENCE, THRESHOLDS,
                  METRICS, *PLOTS)  # fmt: skip


def write_run_files(
    run_dir: Path,
    dataset: Dataset,
    data_digest: str,
    args: argparse.Namespace,
    split: dict,
    resuming: bool,
):
    """config.json (first: it marks the folder as a run's, see `check_trainer_may_write`),
    params.json, classes.json, model.py and (for a new run) split.json; a new run first clears
    what a start that never finished an epoch left. data_digest: the dataset's
    `content_digest`, what the run trains on wherever the files are."""
    classes = classes_json(dataset)
    params = dataset.file.attrs["params"]  # verbatim: prediction rebuilds the same chunks
    model_source = args.model.read_text(encoding="utf-8")
    config = {
        **{
            name: str(value) if isinstance(value, Path) else value
            for name, value in vars(args).items()
        },
        "data_digest": data_digest,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "devices": list_devices(),
        # a resume is no new start: the runs table knows a run by its folder and its start
        "started": started_at(run_dir) if resuming else time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in REPLACED_WHOLE:  # what a kill left of their writes (the folder is locked)
        remove_partials(run_dir / name)
    write_text_atomically(run_dir / CONFIG, json.dumps(config, indent=1) + "\n")
    if not resuming:
        (run_dir / HISTORY).unlink(missing_ok=True)
        remove_backup(run_dir / BACKUP)
        media_ids = dataset.recordings["MediaId"]
        saved = {
            "seed": args.seed,
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
            **{name: [str(media_ids[i]) for i in split[name]] for name in SPLITS},
        }
        write_text_atomically(run_dir / SPLIT, json.dumps(saved, indent=1) + "\n")
    write_text_atomically(run_dir / PARAMS, params)
    write_text_atomically(run_dir / CLASSES, json.dumps(classes, indent=1) + "\n")
    write_text_atomically(run_dir / MODEL_SOURCE, model_source)


def history_to_resume(run_dir: Path) -> dict[str, np.ndarray]:
    """history.csv of the epochs done before a --resume ({} for a new run): the rows of
    epochs whose backup a kill prevented are dropped first, as those epochs run again."""
    trim_history(run_dir / HISTORY, epochs_backed_up(run_dir))
    past = read_history(run_dir / HISTORY)
    if past:
        logger.info("resuming after epoch %d", len(past["epoch"]))
    return past


def write_training_done(run_dir: Path, callbacks: list[keras.callbacks.Callback]) -> None:
    """training_done.json once fit() has ended: the epochs run, and whether early stopping
    ended them (a later --resume then only scores the best models); then the training state
    backed up for a resume goes."""
    stopped = [c.stopped_epoch for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
    done = {
        "epochs": len(read_history(run_dir / HISTORY).get("epoch", [])),
        "stopped_early": any(stopped),
    }
    write_text_atomically(run_dir / DONE, json.dumps(done) + "\n")
    remove_backup(run_dir / BACKUP)  # only now: until DONE, a resume needs it


# ---------------------------------------------------------------------------------------------
# After training: scores, thresholds, the runs table


def score_best_models(
    run_dir: Path, test: SplitData, dataset: Dataset, history: dict[str, np.ndarray]
) -> dict:
    """Test scores of each best model (see `score_predictions`), with the epoch it is from."""
    scores = {"test_recordings": len(test.recordings), "test_chunks": len(test), "models": {}}
    if not len(test):
        logger.warning("no test recordings (--test-fraction 0): no test scores")
        return scores
    for monitor, (filename, mode) in BEST.items():
        path = run_dir / filename
        if not path.is_file():
            logger.warning("%s missing: never saved (no finite %s)", path, monitor)
            continue
        probs = saved_model_probs(path, test.batches)
        best = best_epoch(history[monitor], mode)
        scores["models"][path.stem] = {
            "epoch": best + 1,
            monitor: float(history[monitor][best]),
            **score_predictions(
                probs,
                test.chunk_recording,
                dataset.recordings["label"],
                dataset.recordings["background"].astype(bool),
            ),
        }
    return scores


def save_thresholds(run_dir: Path, val: SplitData, dataset: Dataset, inference: dict) -> None:
    """thresholds.json: per-class detection thresholds of the model and pooling prediction
    uses (inference.json's), chosen on the validation recordings."""
    with read_errors_reported(val.batches):
        if not save_validation_thresholds(
            run_dir,
            inference["model_file"],
            val.batches,
            val.chunk_recording,
            dataset.recordings["label"],
            dataset.classes,
            inference["pooling"],
            inference["pooling_exponent"],
        ):
            logger.warning("no validation chunks or model: no %s", THRESHOLDS)


def runs_table_row(
    args: argparse.Namespace,
    dataset: Dataset,
    data: dict[str, SplitData],
    history: dict[str, np.ndarray],
    metrics: dict,
    model: keras.Model,
) -> dict:
    """The run's row in the runs table: data, split sizes, settings, where it ran, its
    curves (final and best), test scores of each best model, and the model's layers."""
    return {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        # with "started", the run's key (train/log.RUN_KEY): another run of the same --out,
        # typed alike from another folder or trained anew there, gets a row of its own
        "run_dir": str(args.out.resolve()),
        "started": started_at(args.out),
        "data": str(args.data),
        "model_file": str(args.model),
        "classes": len(dataset.classes),
        **{f"{name}_recordings": len(data[name].recordings) for name in SPLITS},
        **{f"{name}_chunks": len(data[name]) for name in SPLITS},
        **{name: getattr(args, name) for name in SETTINGS},
        "backend": keras.backend.backend(),
        "devices": " ".join(list_devices()),
        **history_columns(history),
        **{
            f"test_{score}_{model_name}": value
            for model_name, values in metrics["models"].items()
            for score, value in values.items()
        },
        **model_columns(model),
    }
