"""Benchmark of training: samples/s streaming batches from HDF5 vs model.fit on arrays in memory.

    flock /tmp/bench.lock python benchmarks/bench_training.py [--models BirdClef AlexNet]
        [--batch-size 32] [--chunks 480] [--epochs 3] [--rounds 4] [--data FILE.h5]

Without --data, synthetic demo recordings (preprocess/make_demo_dataset.py's species, field
noise and hiss) go through the real spectrogram, noise filter and chunking into a temporary
HDF5 file (blosc2-lz4, as load_data.py writes by default), so compression and read costs are those
of real use. For each model and each way of feeding it, a model of its own (switching one
model between input pipelines makes TensorFlow retrace its step function, which would be
timed) gets a warm-up epoch; then --rounds alternating rounds of --epochs epochs each way:
in memory (model.fit on numpy arrays x, y) and streamed (train.data's ChunkBatches reading
shuffled batches from the file, as train_model.py --in-memory no does), with 1 reader (the
training thread) and with 2 reader processes (--workers 2). TensorFlow on a small CPU
switches between fast and slow spells of tens of seconds (one core idle), so every epoch is
timed and the best and the median epoch of each way are printed, with streamed / in memory
for both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # make the stages importable

import keras  # noqa: E402

from preprocess.audio import to_sample_rate  # noqa: E402
from preprocess.dataset import (  # noqa: E402
    DEFAULT_COMPRESSION,
    DatasetInfo,
    RecordingChunks,
    compress_chunks,
    open_dataset,
    read_rows,
)
from preprocess.make_demo_dataset import SAMPLE_RATE, SPECIES, make_recording  # noqa: E402
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.spectrogram import extract_chunks  # noqa: E402
from tests.helpers import write_dataset  # noqa: E402
from train.data import ChunkBatches  # noqa: E402
from train.model_file import build_model_from_file, list_devices  # noqa: E402


def synthetic_dataset(path: Path, n_chunks: int, seed: int = 0) -> None:
    """Demo-species recordings through the real extraction into an HDF5 dataset of at least
    n_chunks chunks."""
    params, rng = SpectrogramParams(), np.random.default_rng(seed)
    classes = [species.class_id for species in SPECIES]
    items, total = [], 0
    while total < n_chunks:
        label = len(items) % len(SPECIES)
        audio = make_recording(SPECIES[label], None, rng)
        samples = to_sample_rate(audio.astype(np.float32), SAMPLE_RATE, params.sample_rate)
        chunks, n_frames = extract_chunks(samples, params)
        items.append(
            RecordingChunks(
                f"{len(items)}",
                classes[label],
                f"{len(items)}.wav",
                label,
                np.zeros(len(classes), np.uint8),
                n_frames,
                len(audio) / SAMPLE_RATE,
                compress_chunks(chunks, DEFAULT_COMPRESSION),
            )
        )
        total += len(chunks)
    source = {"kind": "benchmark"}
    info = DatasetInfo(params, classes, {c: c for c in classes}, source, DEFAULT_COMPRESSION)
    write_dataset(path, info, items)


def build(model_name: str, input_shape: tuple, n_classes: int) -> keras.Model:
    model = build_model_from_file(ROOT / "train" / f"model-{model_name}.py", input_shape, n_classes)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


class EpochRates(keras.callbacks.Callback):
    """Collects the samples/s of every epoch."""

    def __init__(self, n_samples: int):
        super().__init__()
        self.n_samples, self.rates = n_samples, []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(self.n_samples / (time.perf_counter() - self.start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["BirdClef", "AlexNet"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=480, help="chunks of synthetic data")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, help="an HDF5 chunk dataset instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        path = args.data
        if path is None:
            path = Path(work) / "bench.h5"
            start = time.perf_counter()
            synthetic_dataset(path, args.chunks)
            print(f"synthetic dataset: {time.perf_counter() - start:.1f} s")
        with open_dataset(path) as dataset:
            rows = np.flatnonzero(dataset.label[...] >= 0)
            labels = dataset.label[...][rows]
            n_classes = len(dataset.classes)
            input_shape = dataset.X.shape[1:]
            x = read_rows(dataset.X, rows)
            size_mb = path.stat().st_size / 1e6
        y = np.eye(n_classes, dtype=np.float32)[labels]
        print(
            f"{len(rows)} chunks {input_shape}, {n_classes} classes, {size_mb:.0f} MB on disk "
            f"({size_mb * 1e6 / x.nbytes:.0%} of raw), batch {args.batch_size}, backend "
            f"{keras.backend.backend()}, {', '.join(list_devices())}"
        )

        def streamed(workers: int) -> ChunkBatches:
            return ChunkBatches(
                path, rows, labels, n_classes, args.batch_size, shuffle=True, readers=workers
            )

        start = time.perf_counter()
        batches = streamed(1)
        for index in range(len(batches)):
            batches[index]
        read_rate = len(rows) / (time.perf_counter() - start)
        print(f"reading alone: {read_rate:.0f} chunks/s (shuffled batches, one thread)")

        ways = {
            "in memory": {"x": x, "y": y, "batch_size": args.batch_size, "shuffle": True},
            "streamed": {"x": streamed(1)},
            "streamed, 2 processes": {"x": streamed(2)},
        }
        for model_name in args.models:
            models, rates = {}, {way: EpochRates(len(rows)) for way in ways}
            for way, data in ways.items():
                keras.utils.set_random_seed(0)
                models[way] = build(model_name, input_shape, n_classes)
                models[way].fit(**data, epochs=1, verbose=0)  # tracing, compilation, caches
            for _ in range(args.rounds):
                for way, data in ways.items():
                    models[way].fit(**data, epochs=args.epochs, verbose=0, callbacks=[rates[way]])
            best = {way: max(r.rates) for way, r in rates.items()}
            median = {way: float(np.median(r.rates)) for way, r in rates.items()}
            print(f"{model_name}: samples/s over {args.rounds * args.epochs} epochs each way")
            for way in ways:
                print(
                    f"  {way:20s} best {best[way]:7.1f}  median {median[way]:7.1f}   vs in "
                    f"memory: best {best[way] / best['in memory']:4.0%}  median "
                    f"{median[way] / median['in memory']:4.0%}"
                )


if __name__ == "__main__":
    main()
