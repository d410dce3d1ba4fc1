"""Benchmark resampling: one hour of 44.1 kHz 16-bit audio to 16 kHz, one job and all cores.

    flock /tmp/bench.lock python benchmarks/bench_resample.py [--minutes 60] [--fallback]

Writes 60 one-minute wav files (noise under a tone; 44.1 kHz 16-bit mono, the BirdCLEF
format) to a temporary folder and times preprocess/resample_wavs_to_16k.sh on them with
--jobs 1 and with all cores; --fallback also times the soxr fallback (the script's --soxr).
Prints wall seconds and the speed as a multiple of real time.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "preprocess" / "resample_wavs_to_16k.sh"
RATE = 44100


def make_audio(folder: Path, minutes: int, seed: int = 0) -> None:
    """One 44.1 kHz 16-bit mono wav per minute of audio: a 2 kHz tone in Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(60 * RATE) / RATE
    tone = 3000 * np.sin(2 * np.pi * 2000 * t)
    for minute in range(minutes):
        samples = tone + rng.normal(0, 1000, t.size)
        wavfile.write(folder / f"minute_{minute:03d}.wav", RATE, samples.astype(np.int16))


def time_run(command: list[str], out_dir: Path) -> float:
    """Wall seconds of one complete run into an empty out_dir."""
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60, help="audio to resample (1 per file)")
    parser.add_argument("--fallback", action="store_true", help="also time the soxr fallback")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    audio_seconds = 60 * args.minutes

    with tempfile.TemporaryDirectory() as tmp:
        in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
        in_dir.mkdir()
        make_audio(in_dir, args.minutes)
        runs = {"sox": ["bash", str(SCRIPT)]}
        if args.fallback:
            runs["soxr fallback"] = ["bash", str(SCRIPT), "--soxr"]
        print(f"resampling {args.minutes} min of 44.1 kHz 16-bit mono to 16 kHz ({cores} cores)")
        for name, command in runs.items():
            for jobs in sorted({1, cores}):
                seconds = time_run(
                    [*command, str(in_dir), str(out_dir), "--jobs", str(jobs)], out_dir
                )
                print(
                    f"{name:>14}, {jobs} job(s): {seconds:6.2f} s "
                    f"({audio_seconds / seconds:6.0f}x real time)"
                )


if __name__ == "__main__":
    main()
