"""Train a CNN on the chunk dataset; the run folder gets everything prediction needs.

    python train/train_model.py --data work/train.h5 --model train/model-BirdClef.py \\
        --epochs 200 --out runs/birdclef

Recordings (never chunks) are split into train, validation and test, stratified by class.
After every epoch the validation recordings get the official BirdCLEF MAP (`val_map`); the
best models by validation loss, accuracy and MAP are kept, and at the end each is scored on
the test recordings. Killed? Run the same command with --resume: training continues from the
last finished epoch.

The run folder (--out):
    best_val_loss.keras, best_val_accuracy.keras, best_val_map.keras   the best models
    history.csv        one row per epoch: loss, accuracy, val_map, val_map_bg, val_chunk_ap...
    params.json        preprocessing parameters, verbatim from the data file
    classes.json       {"classes": [...], "class_names": {...}}: the model's output columns
    split.json         MediaIds of the train, val and test recordings
    config.json        the training settings; model.py: a copy of the model file
    training_done.json epochs run and how training ended (without it: unfinished)
    metrics.json       test scores of each best model; written last, when all is done
    thresholds.json    per-class detection thresholds, chosen on the validation recordings
    inference.json     the model file and recording pooling predict.py uses by default
    final.keras        the model as training ended (--inference-model final or auto)
    loss.png, accuracy.png, map.png, logs/ (TensorBoard), backup/ (while training)
and a row per run in the runs table (--runs-table, default runs.csv beside the run folder).

Defaults are the 2016 scripts' (--recipe 2016): RMSprop (learning rate 0.001), categorical
cross-entropy, up to 20,000 epochs ended by early stopping on validation loss (patience 100).
--recipe modern sets other defaults (train/recipe.py: ResNet, normalisation in the model,
augmentation, AdamW with warm-up and cosine decay, a 12-minute budget, ...); options given
explicitly win. The 2016 scripts' batch of 1350 chunks suited a 12 GB GPU; the default here,
32, trains well on a CPU too (more, smaller steps per epoch). On a GPU use larger batches
(e.g. --batch-size 256 or the original 1350) and --mixed-precision. GPU install: `pip install
tensorflow[and-cuda]`; with several GPUs the batch is split across them (TensorFlow:
MirroredStrategy; JAX: keras.distribution).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
from pathlib import Path

import keras
import numpy as np

from preprocess.cli import at_least, between, command_parser, most_workers, run_command
from preprocess.dataset import DatasetError, content_digest, open_dataset
from preprocess.paths import RunLocked, exclusive_run, write_text_atomically
from preprocess.workers import WorkerLost
from train import recipe
from train.augment import AUGMENTATIONS
from train.callbacks import (
    MAPCallback,
    read_history,
    training_callbacks,
)
from train.data import (
    SplitError,
    TrainError,
    check_batch_size,
    check_labels,
    load_splits,
    place_on_accelerator,
    read_errors_reported,
    sample_chunks,
)
from train.log import (
    RunsTableError,
    append_run,
    check_runs_table,
    plot_history,
)
from train.metrics import POOLINGS
from train.model_file import (
    accelerator_memory,
    batch_multiple,
    build_model_from_file,
    compile_model,
    data_parallel_scope,
    list_devices,
    load_model_file,
    load_weights,
)
from train.run_files import DONE, HISTORY, LOCK, METRICS
from train.run_folder import (
    check_resumed_run,
    check_trainer_may_write,
    history_to_resume,
    load_or_make_split,
    runs_table_row,
    save_thresholds,
    score_best_models,
    start_run_dir,
    write_run_files,
    write_training_done,
)
from train.saved_model import ModelFileError

logger = logging.getLogger("train_model")


def train(args: argparse.Namespace) -> dict:
    """Fill the run folder args.out; returns the test scores (metrics.json).

    Everything is checked before the run folder is written: a start that fails leaves it as
    it was.
    """
    run_dir = args.out
    if not args.model.is_file():
        raise TrainError(f"{args.model}: no such model file (--model)")
    resuming = start_run_dir(run_dir, args.resume)
    runs_table = args.runs_table or run_dir.parent / "runs.csv"
    check_runs_table(runs_table)
    with open_dataset(args.data) as dataset:
        # the data: recordings split into train, val and test; their chunks' batches
        check_labels(dataset)
        data_digest = content_digest(dataset)  # reads a sample of chunks: once
        if resuming:
            check_resumed_run(run_dir, dataset, data_digest, args)
        split = load_or_make_split(run_dir, dataset, args, resuming)
        multiple = batch_multiple()  # the GPUs a batch is split over (JAX)
        check_batch_size(dataset, split, args.batch_size, multiple)
        data = load_splits(dataset, split, args, multiple)
        # read before the model: its normalisation and the augmentation need the chunks
        sample = stats = None
        if args.normalize == "dataset" or args.augment != "none":
            sample = sample_chunks(data["train"].batches, dataset, 4000, args.seed)
            # (mean, variance) per band, padding and digital silence left out
            stats = recipe.band_statistics(sample, np.log10(dataset.params.log_floor))
        if args.augment != "none" or args.class_balance != "none":
            band_means = stats[0] if stats is not None else None
            data["train"].batches = recipe.augmented_batches(
                data["train"], dataset, sample, band_means, args
            )
        elif len(list_devices("gpu")) == 1:  # augmentation works on numpy batches in host memory
            place_on_accelerator(data, accelerator_memory())

        # the model, from the model file, with its normalisation in front; compiled
        keras.mixed_precision.set_global_policy(
            f"mixed_{args.mixed_precision}" if args.mixed_precision else "float32"
        )
        keras.utils.set_random_seed(args.seed)
        logger.info("devices: %s", ", ".join(list_devices()) or "(not listed by this backend)")
        with data_parallel_scope():
            model_module = load_model_file(args.model)  # the user's file, run once
            model = build_model_from_file(
                args.model, dataset.X.shape[1:], len(dataset.classes), model_module
            )
            model = recipe.normalized_model(model, args.normalize, stats)
            options_optimizer = compile_model(model, args, model_module)
            if args.weights:
                load_weights(model, args.weights, args.model)
        write_run_files(run_dir, dataset, data_digest, args, split, resuming)
        model.summary()

        # training, unless an earlier run of this folder finished it
        if (run_dir / DONE).is_file():
            logger.info("training already finished in %s: scoring the best models", run_dir)
        else:
            labels = dataset.recordings["label"]
            background = dataset.recordings["background"].astype(bool)
            past = history_to_resume(run_dir)
            map_callback = MAPCallback(
                data["val"].batches, data["val"].chunk_recording, labels, background
            )
            callbacks = training_callbacks(
                run_dir,
                map_callback,
                args.patience,
                past,
                args.early_stop_on,
                recipe.schedule_and_budget(
                    args,
                    len(data["train"].batches),
                    options_optimizer,
                    past.get("epoch_seconds", []),
                ),
            )
            with read_errors_reported(data["train"].batches, data["val"].batches):
                model.fit(
                    data["train"].batches,
                    validation_data=data["val"].batches,
                    epochs=args.epochs,
                    callbacks=callbacks,
                    # a progress bar on a terminal, else a line per epoch
                    verbose=1 if sys.stdout.isatty() else 2,
                )
            # final.keras first: a kill between the two then resumes into a finished fit and
            # saves it again, where the other order would leave the run without it for good
            recipe.save_final_model(model, run_dir, args.inference_model, map_callback.diverged)
            write_training_done(run_dir, callbacks)

        # the model and pooling prediction uses; test scores, thresholds, curves, runs table;
        # metrics.json last: doall.sh takes it to mean all is done (a kill before it: --resume
        # scores again and writes them all)
        history = read_history(run_dir / HISTORY)
        metrics = score_best_models(run_dir, data["test"], dataset, history)
        metrics["inference"] = recipe.choose_inference(run_dir, data, dataset, args)
        save_thresholds(run_dir, data["val"], dataset, metrics["inference"])
        plot_history(history, run_dir)
        append_run(runs_table, runs_table_row(args, dataset, data, history, metrics, model))
        write_text_atomically(run_dir / METRICS, json.dumps(metrics, indent=1) + "\n")
    return metrics


def at_least_zero(text: str) -> float:
    """argparse type: a number of 0 or more."""
    return between(0, float("inf"), low_open=False, high_open=True)(text)


def add_recipe_option(parser: argparse.ArgumentParser, flag: str, *, help: str, **kwargs):
    """An option whose default --recipe chooses (recipe.RECIPES, filled in by
    recipe.apply_recipe); its help ends with the default of each recipe, from there."""
    name = flag.removeprefix("--").replace("-", "_")
    defaults = "; ".join(
        f"{recipe_name}: {shown_default(values[name])}"
        for recipe_name, values in recipe.RECIPES.items()
    )
    parser.add_argument(flag, help=f"{help} ({defaults})", **kwargs)


def shown_default(value) -> str:
    """A recipe default as --help shows it: paths relative to the project."""
    if isinstance(value, Path):
        return value.relative_to(recipe.PROJECT_ROOT).as_posix()
    return str(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FILE.h5",
        help="chunk dataset written by preprocess/load_data.py",
    )
    parser.add_argument(
        "--recipe",
        choices=tuple(recipe.RECIPES),
        default="2016",
        help="defaults of the options below: 2016 (the paper's, default) or modern "
        "(ResNet, normalisation, augmentation, AdamW with cosine decay, a time budget; "
        "see train/recipe.py); options given explicitly win",
    )
    add_recipe_option(
        parser,
        "--model",
        type=Path,
        metavar="FILE.py",
        help="model file defining build_model(input_shape, n_classes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="RUN_DIR",
        help="run folder to fill (must not hold a run, unless --resume)",
    )
    add_recipe_option(
        parser,
        "--epochs",
        type=at_least(1),
        help="most epochs; early stopping or the time budget may end training sooner",
    )
    add_recipe_option(
        parser,
        "--patience",
        type=at_least(0),
        help="epochs without a better --early-stop-on value before stopping",
    )
    add_recipe_option(
        parser,
        "--batch-size",
        type=at_least(1),
        help="chunks per step; 32 is good on a CPU, the original used 1350 on a GPU",
    )
    add_recipe_option(
        parser,
        "--learning-rate",
        type=between(0, float("inf"), low_open=True, high_open=True),
        help="RMSprop's rate, or the peak of AdamW's schedule",
    )
    add_recipe_option(parser, "--optimizer", choices=recipe.OPTIMIZERS, help="the optimizer")
    add_recipe_option(
        parser, "--weight-decay", type=at_least_zero, help="AdamW's decoupled weight decay"
    )
    add_recipe_option(
        parser,
        "--warmup-epochs",
        type=at_least(0),
        help="epochs of linear learning-rate warm-up, then a cosine decay to the last "
        f"epoch; with a time budget, {recipe.WARMUP_BUDGET_SHARE * 100:g} %% of it at most",
    )
    add_recipe_option(
        parser,
        "--label-smoothing",
        type=between(0, 1, low_open=False, high_open=True),
        help="of the cross-entropy",
    )
    add_recipe_option(
        parser,
        "--background-weight",
        type=between(0, 1, low_open=False, high_open=True),
        help="each background species' target beside the label's 1 in a training chunk's "
        "target, the row then scaled to sum 1 (0: the label alone)",
    )
    add_recipe_option(
        parser,
        "--normalize",
        choices=recipe.NORMALIZATIONS,
        help="normalisation layer saved in front of the model: none, dataset (per-band "
        "statistics of the training chunks) or chunk (each chunk standardised)",
    )
    add_recipe_option(
        parser,
        "--augment",
        metavar="LIST",
        help="augmentations of the training batches, comma-separated from "
        f"{','.join(AUGMENTATIONS)}, or none",
    )
    add_recipe_option(
        parser,
        "--inference-model",
        choices=tuple(recipe.INFERENCE_CHOICES),
        help="the model prediction uses (inference.json): best_val_map.keras, final.keras "
        "(as training ended), or auto: the better of the two on validation (which favours "
        "best_val_map, chosen on the same recordings)",
    )
    parser.add_argument(
        "--noise-dir",
        type=Path,
        metavar="DIR",
        help="wavs of background noise for the noise augmentation, through the data's front "
        "end (default: the training data's own quietest chunks)",
    )
    add_recipe_option(
        parser,
        "--class-balance",
        choices=recipe.CLASS_BALANCES,
        help="loss weights against long-tailed classes",
    )
    add_recipe_option(
        parser,
        "--early-stop-on",
        choices=recipe.EARLY_STOP_ON,
        help="what early stopping and --patience watch, or none for no early stopping (the "
        "epochs, or the time budget, and the cosine decay then end training)",
    )
    add_recipe_option(
        parser,
        "--time-budget",
        type=at_least_zero,
        metavar="MINUTES",
        help="end training within this many minutes, the cosine decay with it; 0: none",
    )
    add_recipe_option(
        parser,
        "--pooling",
        choices=("auto", *POOLINGS),
        help="recording pooling of chunk scores written to inference.json for prediction: "
        "mean, max, power, or auto: the best on validation",
    )
    parser.add_argument(
        "--seed",
        type=at_least(0),
        default=0,
        help="split, initial weights and shuffling",
    )
    add_recipe_option(
        parser,
        "--val-fraction",
        type=between(0, 1, low_open=True, high_open=True),
        help="share of the labelled recordings (of their groups, where clips share a source) "
        "for validation; the original's: 0.05",
    )
    add_recipe_option(
        parser,
        "--test-fraction",
        type=between(0, 1, low_open=False, high_open=True),
        help="share of the labelled recordings (or groups) for the final test, 0 for none: "
        "score on recordings of your own; the original's: 0.01",
    )
    parser.add_argument(
        "--weights", type=Path, help="start from these weights (.keras or .weights.h5)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last finished epoch",
    )
    parser.add_argument(
        "--mixed-precision",
        nargs="?",
        const="float16",
        choices=("float16", "bfloat16"),
        help="16-bit compute, float32 weights (fast on recent GPUs, slow on CPUs): float16, "
        "or bfloat16 (Ampere, Hopper and later: no loss scaling needed)",
    )
    parser.add_argument(
        "--in-memory",
        choices=("auto", "yes", "no"),
        default="auto",
        help="read all chunks into memory first (auto: when they take less than "
        "half the free memory), or stream batches from the file",
    )
    parser.add_argument(
        "--workers",
        type=at_least(1, most_workers()),
        default=1,
        help="processes that read each batch together when streaming, threads for chunks "
        "in memory (default 1)",
    )
    parser.add_argument(
        "--runs-table",
        type=Path,
        metavar="FILE.csv",
        help="runs table to add this run to (default: runs.csv beside RUN_DIR)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging, tracebacks")
    args = parser.parse_args(argv)
    recipe.apply_recipe(args)
    unknown = set(args.augment.split(",")) - {*AUGMENTATIONS, "none"}
    if unknown:
        parser.error(
            f"--augment: unknown {', '.join(sorted(unknown))} (choose from "
            f"{', '.join(AUGMENTATIONS)}, or none)"
        )
    if args.val_fraction + args.test_fraction >= 1:
        parser.error(
            f"--val-fraction {args.val_fraction} and --test-fraction {args.test_fraction} "
            "leave no recordings for training: together they must be below 1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    # TensorFlow warns of retracing when each best model predicts its first batches
    logging.getLogger("tensorflow").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    metrics = {}

    def run() -> int:
        if args.out.exists() and not args.out.is_dir():
            raise TrainError(f"{args.out} is a file, not a run folder: choose another --out")
        check_trainer_may_write(args.out)  # before the lock file is made in it
        # the folders this start makes, deepest first (--out a/b/c where only a exists: c, b)
        made_here = list(
            itertools.takewhile(lambda p: not p.exists(), (args.out, *args.out.parents))
        )
        lock = args.out / LOCK
        with exclusive_run(lock, f"the run folder {args.out}"):
            try:
                metrics.update(train(args))
            except BaseException:
                # a start refused before any run file: no folder left that only holds the
                # lock (removed while held, so no other run can hold it meanwhile)
                if made_here and os.listdir(args.out) == [lock.name]:
                    lock.unlink()
                    with contextlib.suppress(OSError):  # another run's files came meanwhile
                        for folder in made_here:
                            folder.rmdir()
                raise
        return 0

    errors = (TrainError, DatasetError, SplitError, RunLocked, ModelFileError, RunsTableError,
              WorkerLost)  # fmt: skip
    status = run_command(run, args.verbose, errors)
    if status:
        return status
    for name, scores in metrics["models"].items():
        print(
            f"test {name}.keras (epoch {scores['epoch']}): MAP {scores['map']:.4f} "
            f"(with background species {scores['map_bg']:.4f}), top-1 accuracy "
            f"{scores['recording_accuracy']:.4f} (per chunk {scores['accuracy']:.4f}), "
            f"chunk AP {scores['chunk_ap']:.4f}"
        )
    print(f"run folder: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
