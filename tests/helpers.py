"""Helpers for the tests and benchmarks, which the pipeline itself does without."""

from __future__ import annotations

import os

from preprocess.dataset import DatasetInfo, DatasetWriter, RecordingChunks


def write_dataset(path: str | os.PathLike, info: DatasetInfo, items: list[RecordingChunks]):
    """Write recordings `items` (in order) as one complete dataset file at path, at once
    (load_data writes shards and merges them)."""
    writer = DatasetWriter(path, info)
    for item in items:
        writer.append(item)
    writer.close()
