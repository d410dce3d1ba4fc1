"""Export the model a run predicts with, for serving, with the files it needs, into one folder.

    python train/export_model.py --run runs/demo --out exported/demo
    python train/export_model.py --run runs/demo --out exported/demo-onnx --format onnx

Uses Keras's `model.export`. The model is the one predict.py uses (the run's inference.json
names it: final.keras in the modern recipe, best_val_map.keras in the 2016 one), or
--model-file. The folder (--out) holds it and, copied from the run folder, params.json (the
preprocessing: chunks must be made exactly as in training), classes.json (the output
columns), and inference.json (the pooling of a recording's chunk outputs) and thresholds.json
when the run has them:

    tf_saved_model (default)   the folder is itself a TensorFlow SavedModel; its serving
                               endpoint `serve` maps float32 (batch, n_bins, chunk_frames, 1)
                               chunks to (batch, classes) softmax. TensorFlow backend (also
                               JAX, with TensorFlow installed).
    onnx                       model.onnx (needs the `onnx`, `onnxruntime` and, under
                               TensorFlow, `tf2onnx` packages)
    litert                     model.tflite (TensorFlow backend)

The folder is written under a new hidden name beside --out (.OUT.<unique>.partial, made for
this export alone) and renamed to --out when complete, removed when the export fails; an
existing --out (a link too) is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from predict.predict import (
    PredictError,
    check_model_file_name,
    check_training_ended,
    read_inference,
)
from preprocess.cli import command_parser, run_command
from preprocess.params import SpectrogramParams
from preprocess.paths import partial_name
from train import run_files

logger = logging.getLogger("export_model")

MODEL_FILES = {"tf_saved_model": None, "onnx": "model.onnx", "litert": "model.tflite"}
# copied when present
RUN_FILES = (run_files.PARAMS, run_files.CLASSES, run_files.INFERENCE, run_files.THRESHOLDS)


class ExportError(Exception):
    """A run folder or target that export cannot work with; the message says why."""


def new_partial_folder(out: Path) -> Path:
    """A new empty folder beside out, to fill and rename to out. Its name is unique (made as
    `replace_atomically` makes a file's: `is_partial_of` out's name) and it is made exclusively
    (mkdir fails on any file, folder or link of that name), so nothing already there, a user's
    or another export's, is ever written into or removed. A killed export leaves it behind,
    hidden: .OUT.<pid>-<random>.partial, for the user to delete."""
    partial = partial_name(out)
    partial.mkdir()
    return partial


def export_run(
    run_dir: Path, out: Path, model_file: str | None = None, fmt: str = "tf_saved_model"
) -> Path:
    """Export run_dir/model_file in format fmt into the new folder out; returns out.

    model_file: None takes the model the run predicts with, once its training has ended (a
    run still training, or stopped, has not chosen it yet).
    """
    if fmt not in MODEL_FILES:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(MODEL_FILES)}")
    try:
        check_model_file_name(model_file)
        if model_file is None:
            check_training_ended(run_dir)
        inference = read_inference(run_dir)
    except PredictError as error:
        raise ExportError(str(error)) from None
    if model_file is None:
        model_file = inference.model_file
    elif model_file != inference.model_file and (run_dir / run_files.INFERENCE).is_file():
        logger.warning(
            "the run predicts with %s, and its pooling and thresholds were chosen for that "
            "model: exporting %s, they are copied as they are",
            inference.model_file,
            model_file,
        )
    for name in (model_file, *RUN_FILES):
        if (run_dir / name).is_symlink():  # its target, any file, would be shared as the run's
            raise ExportError(
                f"{run_dir / name} is a link: export takes only the run's own files (replace "
                "the link by a copy of the file)"
            )
    for name in (model_file, run_files.PARAMS, run_files.CLASSES):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir} has no {name}: not a finished training run")
    if out.exists() or out.is_symlink():
        raise ExportError(f"{out} exists: choose another --out, or delete it first")
    try:
        params = SpectrogramParams.from_json((run_dir / run_files.PARAMS).read_text("utf-8"))
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as error:
        raise ExportError(f"{run_dir / run_files.PARAMS} is damaged ({error})") from None

    import keras  # TensorFlow takes seconds to load: only once the inputs are known good

    from train.saved_model import ModelFileError, load_saved_model

    logger.info("exporting %s", run_dir / model_file)
    try:
        model = load_saved_model(run_dir / model_file)
    except ModelFileError as error:
        raise ExportError(str(error)) from error
    # a model loaded from its file has not been called yet, which the ONNX export requires:
    # once on a chunk of the run's shape (where the model leaves a size open, None)
    chunk = (params.n_bins, params.chunk_frames, 1)
    shape = [given or size for given, size in zip(model.inputs[0].shape[1:], chunk, strict=False)]
    try:
        model(np.zeros((1, *shape), dtype="float32"))
    except Exception as error:  # a model that fails on its own input cannot be exported
        raise ExportError(
            f"{run_dir / model_file} fails on a chunk of shape {tuple(shape)}: "
            f"{type(error).__name__}: {error}"
        ) from error
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = new_partial_folder(out)
    try:
        target = partial if MODEL_FILES[fmt] is None else partial / MODEL_FILES[fmt]
        try:
            model.export(str(target), format=fmt, verbose=False)
        except Exception as error:  # a missing converter package, a backend without the format
            raise ExportError(
                f"exporting {run_dir / model_file} as {fmt} with the {keras.backend.backend()} "
                f"backend failed: {type(error).__name__}: {error}"
            ) from error
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, partial / name)
        # a folder is renamed onto a missing name or an empty folder only: never onto a link
        # or a file, nor onto a folder with something in it (made meanwhile)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # ours alone: its name was made for us
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument(
        "--model-file",
        help="model in the run folder (default: the one the run predicts with, as predict.py)",
    )
    parser.add_argument(
        "--format", choices=tuple(MODEL_FILES), default="tf_saved_model", help="export format"
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    def work() -> int:
        out = export_run(args.run, args.out, args.model_file, args.format)
        print(f"{args.run} exported as {args.format} to {out}")
        return 0

    return run_command(work, args.verbose, (ExportError,))


if __name__ == "__main__":
    sys.exit(main())
