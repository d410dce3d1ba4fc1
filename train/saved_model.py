"""Trained models on disk: saved whole or not at all, loaded with a clear error for a missing
or damaged file, and their softmax outputs for a split's chunks.

Training writes checkpoints and the final model with `save_model_atomically`; prediction,
export and the scoring at the end of training load them with `load_saved_model`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from preprocess.paths import partial_name, remove_partials, replace_atomically
from train.data import predict_rows, read_errors_reported


def save_atomically(
    save: Callable[[Path], None], path: Path, suffix: str, sync: bool = True
) -> None:
    """save(name) (Keras's model.save or save_weights) under a new name beside path that ends
    with suffix (Keras wants its own), renamed to path once written (and on the disk, with
    sync), so path is whole or as it was. The name is unique to this call (`partial_name`):
    a link put at a name Keras would write through cannot be there in advance. Such files a
    kill left are removed first (the run folder's lock keeps other writers out), a link
    among them too, never what it points to."""
    remove_partials(path, suffix)
    partial = partial_name(path)
    partial = partial.with_name(partial.name + suffix)
    try:
        save(partial)
        if sync:
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk gets its space back
        raise


def saved_model_probs(path: Path, batches) -> np.ndarray:
    """The softmax outputs (chunks, C) of the model saved at path (`load_saved_model`) for
    the chunks of batches (a ChunkBatches), a read error naming the data file."""
    model = load_saved_model(path)
    with read_errors_reported(batches):
        return predict_rows(model, batches)


def copy_atomically(source: Path, target: Path) -> None:
    """target made a whole copy of source, under a new name renamed into place
    (`replace_atomically`): a link at target is replaced, never written through."""
    replace_atomically(target, lambda file: file.write(source.read_bytes()), "wb")


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """model.save(path), atomically (`save_atomically`)."""
    save_atomically(lambda name: model.save(name, overwrite=True), path, ".keras")


class ModelFileError(ValueError):
    """A saved model that cannot be loaded; the message names the file and says why."""


# Keras stores a .keras file's members uncompressed: an archive unpacking to much more than
# its own size is a zip bomb, which would take all memory before Keras says anything
MOST_UNPACKED_RATIO, MOST_UNPACKED_EXTRA = 2, 64 * 2**20


def load_saved_model(path: Path) -> keras.Model:
    """keras.saving.load_model of a .keras file, uncompiled (every caller only predicts), or
    ModelFileError saying the file is missing or damaged (Keras itself reports a truncated
    file as "File not found")."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:  # a .keras file is a zip archive
            unpacked = sum(member.file_size for member in archive.infolist())
            if unpacked > MOST_UNPACKED_RATIO * path.stat().st_size + MOST_UNPACKED_EXTRA:
                raise ModelFileError(
                    f"{path}: not a model file Keras wrote: its members would unpack to "
                    f"{unpacked / 1e9:.1f} GB (Keras stores them uncompressed)"
                )
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ModelFileError(
            f"{path}: damaged model file (truncated or not a .keras file: {error})"
        ) from error
    if bad_member is not None:
        raise ModelFileError(f"{path}: damaged model file ({bad_member} fails its checksum)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds on a damaged or foreign file
        raise ModelFileError(
            f"{path}: damaged model file, Keras cannot load it ({type(error).__name__}: {error})"
        ) from error
