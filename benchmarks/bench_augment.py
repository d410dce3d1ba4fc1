"""Cost of the modern recipe's augmentations: chunks per second that the training batches
deliver with and without them, and the milliseconds of each augmentation per batch.

    python benchmarks/bench_augment.py [--bins 128] [--frames 312] [--batch-size 32]

Batches are served from memory (the cost of augmentation alone; streaming from HDF5 adds the
same read cost to both), one thread, as a training worker does. Compare the chunks/s with
the training speed of the model (bench_training.py): augmentation must stay well above it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from train.augment import (  # noqa: E402
    AUGMENTATIONS,
    AugmentedBatches,
    AugmentSettings,
    add_noise,
    mixup,
    quietest_chunks,
    random_gain,
    roll_time,
    spec_augment,
)
from train.data import ChunkBatches  # noqa: E402


def chunks_per_second(batches, n_batches: int) -> float:
    start = time.perf_counter()
    for index in range(n_batches):
        batches[index % len(batches)]
    return n_batches * batches.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bins", type=int, default=128)
    parser.add_argument("--frames", type=int, default=312)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 20 * args.batch_size
    x = rng.normal(3, 1, (n, args.bins, args.frames, 1)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    recording = np.arange(n) // 3  # three chunks per recording
    same_next = np.append(recording[1:] == recording[:-1], False)
    common = dict(shuffle=True, seed=0)
    plain = ChunkBatches(x, np.arange(n), labels, 10, args.batch_size, **common)
    augmented = AugmentedBatches(
        x, np.arange(n), labels, 10, args.batch_size, **common,
        settings=AugmentSettings(use=AUGMENTATIONS),
        next_positions=np.where(same_next, np.arange(n) + 1, -1),
        first_of_recording=np.insert(recording[1:] != recording[:-1], 0, True),
        noise=quietest_chunks(x), band_means=x.mean(axis=(0, 2, 3)),
        class_weights=np.ones(10, np.float32),
    )  # fmt: skip
    print(f"chunks ({args.bins}, {args.frames}), batch {args.batch_size}, one thread")
    print(f"  plain batches      {chunks_per_second(plain, args.batches):8.0f} chunks/s")
    print(f"  all augmentations  {chunks_per_second(augmented, args.batches):8.0f} chunks/s")
    batch, y = plain[0]
    noise = quietest_chunks(x)
    parts = {
        "crop (roll)": lambda: roll_time(batch, rng.integers(0, args.frames, len(batch))),
        "gain": lambda: random_gain(batch, rng, 6.0),
        "noise": lambda: add_noise(batch, noise, rng, 0.5, (-10.0, 5.0)),
        "mixup": lambda: mixup(batch, y, rng, 0.4, 0.5),
        "specaugment": lambda: spec_augment(batch, rng, 2, 2),
    }
    for name, step in parts.items():
        start = time.perf_counter()
        for _ in range(args.batches):
            step()
        print(f"  {name:18s} {1000 * (time.perf_counter() - start) / args.batches:8.1f} ms/batch")


if __name__ == "__main__":
    main()
