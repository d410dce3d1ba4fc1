"""Front-end cost: seconds of `extract_chunks` per audio hour for the 2016 PSD and for log-mel
features of several band counts and hops, and the size of a 5 s chunk they give (what the
network's cost grows with).

    python benchmarks/bench_frontend.py [--minutes 10] [--repeats 3]

One core (numerical libraries pinned to one thread), synthetic 16 kHz audio on the int16 scale
(noise with chirps), the best of --repeats runs in CPU seconds of this process (on a shared
machine the wall clock says more about the neighbours). The log-mel settings run without the
noise filter and with 5 s chunks, as in the modern recipe; the 2016 one as it runs.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before numpy is imported: per-core numbers

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make the stages importable
from preprocess.params import MODERN, SpectrogramParams  # noqa: E402
from preprocess.spectrogram import extract_chunks, frames_for_seconds  # noqa: E402


def synthetic_audio(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """(n,) float32: noise plus about two chirps per second."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    audio = rng.normal(0, 200, n).astype(np.float32)
    for start in rng.integers(0, n - rate, size=int(seconds * 2)):
        t = np.arange(int(rng.integers(rate // 20, rate // 3))) / rate
        low, high = rng.uniform(1500, 6000, size=2)
        phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * t[-1]))
        audio[start : start + t.size] += 4000 * np.sin(phase).astype(np.float32)
    return np.round(audio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    audio = synthetic_audio(args.minutes * 60)
    settings = [("2016 PSD, noise filter", SpectrogramParams())]
    for n_mels in (64, 96, 128):
        for nfft, hop in ((512, 256), (1024, 320), (1024, 512)):
            params = dataclasses.replace(MODERN, n_bins=n_mels, nfft=nfft, hop=hop)
            params = dataclasses.replace(params, chunk_frames=frames_for_seconds(5.0, params))
            settings.append((f"log-mel {n_mels:3d}, nfft {nfft:4d}, hop {hop}", params))
    print(f"{args.minutes:g} min of audio, one core, best of {args.repeats}")
    print(f"  {'front end':34s} {'CPU s / audio hour':>18s} {'5 s chunk':>12s}")
    for name, params in settings:
        best = np.inf
        for _ in range(args.repeats):
            start = time.process_time()
            extract_chunks(audio, params)
            best = min(best, time.process_time() - start)
        shape = f"{params.n_bins} x {params.chunk_frames}"
        print(f"  {name:34s} {best * 60 / args.minutes:18.2f} {shape:>12s}")


if __name__ == "__main__":
    main()
