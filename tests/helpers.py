"""Helpers for the tests and benchmarks, which the pipeline itself does without."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from preprocess.dataset import DatasetInfo, DatasetWriter, RecordingChunks, compress_chunks
from preprocess.params import SpectrogramParams

SKIPPED_FOLDERS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}  # tools' caches


def write_dataset(path: str | os.PathLike, info: DatasetInfo, items: list[RecordingChunks]):
    """Write recordings `items` (in order) as one complete dataset file at path, at once
    (load_data writes shards and merges them)."""
    writer = DatasetWriter(path, info)
    for item in items:
        writer.append(item)
    writer.close()


PARAMS = SpectrogramParams(n_bins=16, chunk_frames=20, n_band_edges=9)  # tiny chunks: fast tests
CLASSES = ["aaa", "bbb", "ccc", "ddd"]
# a small CNN in a user's model file: conv, batch norm over channels, softmax
TINY_MODEL = """
import keras
from keras import layers


def build_model(input_shape, n_classes):
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(4, 3, activation="relu"),
        layers.BatchNormalization(),
        layers.Flatten(),
        layers.Dense(n_classes, activation="softmax"),
    ])
"""


def write_easy_dataset(
    path: Path,
    per_class: int = 10,
    n_unlabelled: int = 2,
    classes: list[str] = CLASSES,
    clips_per_source: int = 1,
) -> None:
    """Chunks whose class is which of the frequency bands (one per class) holds extra energy,
    1-3 chunks per recording, every third recording with a background class; plus unlabelled
    recordings. clips_per_source > 1: the recordings of a class in groups of that many."""
    rng = np.random.default_rng(0)
    band = PARAMS.n_bins // len(classes)
    items = []
    plan = [(c, r) for c in range(len(classes)) for r in range(per_class)]
    plan += [(-1, r) for r in range(n_unlabelled)]
    for label, number in plan:
        chunks = rng.normal(0, 1, (int(rng.integers(1, 4)), PARAMS.n_bins, PARAMS.chunk_frames))
        background = np.zeros(len(classes), np.uint8)
        if label >= 0:
            chunks[:, label * band : (label + 1) * band] += 2
            background[(label + 1) % len(classes)] = number % 3 == 0
        class_id = classes[label] if label >= 0 else ""
        media_id = f"{class_id or 'none'}{number}"
        items.append(
            RecordingChunks(
                media_id,
                class_id,
                f"{media_id}.wav",
                label,
                background,
                n_frames=len(chunks) * PARAMS.chunk_frames,
                duration_s=1.0,
                chunks=compress_chunks(chunks.astype(np.float32), "gzip"),
                group=f"{class_id}-{number // clips_per_source}" if clips_per_source > 1 else "",
            )
        )
    info = DatasetInfo(PARAMS, classes, {c: c.upper() for c in classes}, {"kind": "test"}, "gzip")
    write_dataset(path, info, items)


def process_state(pid: int) -> tuple[str, int]:
    """(state, parent) of a process from Linux's /proc; ("gone", 0) when it has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except OSError:
        return "gone", 0
    return fields[0], int(fields[1])


def still_running(pids: list[int], seconds: float) -> list[int]:
    """Those of pids still running (neither gone nor a zombie) after waiting up to seconds
    for them to end."""
    give_up = time.monotonic() + seconds
    while True:
        pids = [pid for pid in pids if process_state(pid)[0] not in ("gone", "Z")]
        if not pids or time.monotonic() > give_up:
            return pids
        time.sleep(0.05)


def folder_contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder (None for a folder) with its bytes."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under root (relative path -> kind, size, mtime), links not followed."""
    state = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]
        for name in subfolders + files:
            path = Path(folder, name)
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            size = 0 if kind == "dir" else info.st_size  # a folder's size and time change
            mtime = 0 if kind == "dir" else info.st_mtime_ns  # with its entries: those count
            state[str(path.relative_to(root))] = (kind, size, mtime)
    return state


def changes(before: dict, after: dict) -> list[str]:
    """Paths created, changed or removed between two tree_state()s."""
    return sorted(
        path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )
