"""Extraction speed on one core: the bare-FFT floor, our extraction, the 2016 reference.

For one hour (by default) of synthetic 16 kHz audio on the int16 scale (deterministic
bird-like chirps over noise) it prints seconds for
  (a)  the floor: windowed float64 rfft + |X|^2 + log10 of every frame, blockwise, nothing
       else; for information also the same in float32 (too imprecise for us to use) and
       the plain whole-array numpy version per 10-minute piece (what the issue timed),
  (b)  `extract_chunks` (spectrogram + noise filter + chunks) on the whole hour as one
       recording and as 60 one-minute recordings, and `read_wav` of the same audio as a
       16-bit wav file (page cache warm), measured separately,
  (c)  the direct 2016 implementation (tests/reference_2016.py: mlab.specgram, per-cell
       loops), run on 10-minute pieces so that its full-matrix FFT fits in memory, after
       one untimed warm-up piece (the first big allocations of a process are slow),
and the ratios. Numerical libraries are pinned to one thread. Run it alone:

    flock /tmp/bench.lock python benchmarks/bench_extraction.py

With --short-files DIR (a folder of short 16 kHz wavs, e.g. ESC-10 resampled by
preprocess/resample_wavs_to_16k.sh) it instead times `load_data.py` end to end on those
files as they are and on the same audio concatenated into one-minute wavs, with both
recipes and 1 and 2 workers: wall seconds per audio hour inside load_data's main (imports
excluded) and CPU seconds of the parent and its workers, the median of --repeats runs.
Give --code CHECKOUT twice to compare two checkouts, run alternately:

    python benchmarks/bench_extraction.py --short-files work/bench-esc10/audio_16k \\
        --code /tmp/before --code . --repeats 3
"""

import os

for _variable in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_variable] = "1"  # before numpy is imported: per-core numbers

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.fft  # noqa: E402
from scipy.io import wavfile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make the stages importable
from preprocess.audio import read_wav  # noqa: E402
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.spectrogram import BLOCK_FRAMES, extract_chunks  # noqa: E402
from tests import reference_2016  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hdf5 import concatenated_wavs, write_labels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIECE_S = 600  # the reference and the plain floor run on 10-minute recordings (soundscapes)
SHORT_S = 60  # a typical training recording

# Runs load_data.main of the checkout argv[1] on argv[2:] and prints its wall seconds and the
# CPU seconds of this process (imports excluded) and of its worker processes.
MEASURED_LOAD_DATA = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from preprocess import load_data
def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
parent_before, start = cpu(resource.RUSAGE_SELF), time.perf_counter()
code = load_data.main(sys.argv[2:])
print("MEASURED " + json.dumps({
    "seconds": time.perf_counter() - start,
    "parent_cpu": cpu(resource.RUSAGE_SELF) - parent_before,
    "workers_cpu": cpu(resource.RUSAGE_CHILDREN),
}))
sys.exit(code)
"""


def synthetic_audio(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """(n,) float32 on the int16 scale: noise plus ~2 chirps per second, integer-valued."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    audio = rng.normal(0, 200, n).astype(np.float32)
    for start in rng.integers(0, n - rate // 2, size=int(seconds * 2)):
        length = int(rng.integers(rate // 20, rate // 3))
        t = np.arange(length) / rate
        low, high = rng.uniform(1500, 6000, size=2)
        phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * t[-1]))
        amplitude = rng.uniform(500, 12000)
        audio[start : start + length] += amplitude * np.hanning(length) * np.sin(phase)
    return np.clip(np.round(audio), -32768, 32767)


def floor_seconds(samples: np.ndarray, params: SpectrogramParams, dtype: type) -> float:
    """rfft + |X|^2 + log10 of every frame, blockwise like ours, in the given float type."""
    frames = np.lib.stride_tricks.sliding_window_view(samples, params.nfft)[:: params.hop]
    window = np.hanning(params.nfft).astype(dtype)
    start_time = time.perf_counter()
    for start in range(0, len(frames), BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES] * window
        spectrum = scipy.fft.rfft(block, axis=1, overwrite_x=True, workers=1)
        power = spectrum.real**2
        power += spectrum.imag**2
        np.log10(power, out=power)
    return time.perf_counter() - start_time


def plain_floor_seconds(samples: np.ndarray, params: SpectrogramParams) -> float:
    """The same as one whole-array numpy expression per 10-minute piece."""
    window = np.hanning(params.nfft)
    start_time = time.perf_counter()
    for start in range(0, len(samples), PIECE_S * params.sample_rate):
        piece = samples[start : start + PIECE_S * params.sample_rate]
        frames = np.lib.stride_tricks.sliding_window_view(piece, params.nfft)[:: params.hop]
        np.log10(np.abs(np.fft.rfft(frames * window, axis=1)) ** 2)
    return time.perf_counter() - start_time


def pieces(samples: np.ndarray, seconds: int, rate: int) -> list[np.ndarray]:
    return [
        samples[start : start + seconds * rate] for start in range(0, len(samples), seconds * rate)
    ]


def timed(function, *args) -> tuple[float, object]:
    start_time = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start_time, result


def measured_load_data(code: Path, argv: list[str]) -> dict:
    """load_data.py of checkout `code` run in a child process: `MEASURED_LOAD_DATA`'s dict."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED_LOAD_DATA, str(code), *argv],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"load_data failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.split("MEASURED ")[-1])


def short_files_main(args) -> None:
    """load_data.py on many short files against the same audio in one-minute files."""
    clips = sorted(args.short_files.glob("*.wav"))
    if not clips:
        raise SystemExit(f"no wav files in {args.short_files}")
    hours = sum(wavfile.read(clip, mmap=True)[1].size for clip in clips) / 16000 / 3600
    codes = [path.resolve() for path in args.code or [ROOT]]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cases = {"short": (args.short_files, clips)}
        long_files = concatenated_wavs(clips, folder / "long", SHORT_S)
        cases["long"] = (folder / "long", long_files)
        labels = {name: write_labels(wavs, wav_dir) for name, (wav_dir, wavs) in cases.items()}
        print(
            f"{hours:.3f} h of audio: {len(clips)} files of {args.short_files} ('short') and "
            f"the same joined into {len(long_files)} files of {SHORT_S} s ('long')"
        )
        print(
            "load_data.py end to end (imports excluded), median of "
            f"{args.repeats}: s per audio hour, wall and CPU (parent + workers)"
        )
        print(
            f"{'checkout':24s} {'recipe':7s} {'workers':>7s} {'files':>6s} "
            f"{'wall':>7s} {'CPU':>7s} {'parent':>7s}"
        )
        for recipe in args.recipes:
            for workers in args.workers:
                for name, (wav_dir, wavs) in cases.items():
                    runs = {code: [] for code in codes}
                    for _ in range(args.repeats):
                        for code in codes:  # alternately: the same conditions for each
                            argv = ["--wav-dir", str(wav_dir), "--csv", str(labels[name]),
                                    "--out", str(folder / "out.h5"), "--recipe", recipe,
                                    "--workers", str(workers), "--overwrite"]  # fmt: skip
                            runs[code].append(measured_load_data(code, argv))
                    for code, measured in runs.items():
                        wall, parent, cpu = (
                            statistics.median(run[key] for run in measured) / hours
                            for key in ("seconds", "parent_cpu", "workers_cpu")
                        )
                        print(
                            f"{str(code)[-24:]:24s} {recipe:7s} {workers:7d} {len(wavs):6d} "
                            f"{wall:7.2f} {cpu + parent:7.2f} {parent:7.2f}   {name}"
                        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="audio length (default 60)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="best of N for (a), (b); median with --short-files"
    )
    parser.add_argument("--skip-reference", action="store_true", help="leave out (c)")
    parser.add_argument(
        "--short-files",
        type=Path,
        metavar="DIR",
        help="time load_data.py on DIR's short 16 kHz wavs against the same audio in "
        "one-minute files instead (median of --repeats)",
    )
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        metavar="CHECKOUT",
        help="with --short-files: the checkout whose load_data.py runs (this one by default); "
        "give it twice to compare two",
    )
    parser.add_argument("--recipes", type=lambda text: text.split(","), default=["2016", "modern"])
    parser.add_argument(
        "--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2]
    )
    args = parser.parse_args()
    if args.short_files:
        short_files_main(args)
        return

    params = SpectrogramParams()
    seconds = args.minutes * 60
    samples = synthetic_audio(seconds, params.sample_rate)
    per_hour = 3600 / seconds
    print(f"{args.minutes:g} min of 16 kHz audio, numbers in seconds per audio hour, one thread")
    print(f"machine: {os.cpu_count()} cores, numpy {np.__version__}, scipy {scipy.__version__}")

    floor_seconds(samples, params, np.float64)  # warm-up, like every other contender gets
    floor = min(floor_seconds(samples, params, np.float64) for _ in range(args.repeats))
    floor32 = min(floor_seconds(samples, params, np.float32) for _ in range(args.repeats))
    plain = min(plain_floor_seconds(samples, params) for _ in range(args.repeats))
    print(f"(a)  floor, float64 rfft + log10:       {floor * per_hour:7.3f}")
    print(f"     (float32 rfft + log10, info only:  {floor32 * per_hour:7.3f})")
    print(f"     (plain numpy per 10 min, info:     {plain * per_hour:7.3f})")

    ours, extraction = min(
        (timed(extract_chunks, samples, params) for _ in range(args.repeats)),
        key=lambda pair: pair[0],
    )
    print(
        f"(b)  extract_chunks:                    {ours * per_hour:7.3f}   "
        f"({extraction.chunks.shape[0]} chunks, {extraction.n_frames} frames kept)"
    )
    short = pieces(samples, SHORT_S, params.sample_rate)
    ours_short = min(
        sum(timed(extract_chunks, piece, params)[0] for piece in short) for _ in range(args.repeats)
    )
    print(f"     ... as {len(short)} recordings of {SHORT_S} s:       {ours_short * per_hour:7.3f}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.wav"
        wavfile.write(path, params.sample_rate, samples.astype(np.int16))
        read_wav(path)  # warm the page cache: this measures decoding, not the disk
        reading = min(timed(read_wav, path)[0] for _ in range(args.repeats))
    print(f"     read_wav (16-bit wav, warm cache): {reading * per_hour:7.3f}")
    print(f"     (b) / (a):                         {ours / floor:7.2f}x   (goal <= 2)")
    print(f"     (b, {SHORT_S} s recordings) / (a):        {ours_short / floor:7.2f}x")
    print(f"     (b) / plain numpy floor:           {ours / plain:7.2f}x")
    print(f"     (read + b) / (a):                  {(reading + ours) / floor:7.2f}x")

    tracemalloc.start()
    extract_chunks(samples, params)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    output_mb = extraction.chunks.nbytes / 2**20
    print(
        f"     peak memory of extract_chunks:     {peak / 2**20:7.0f} MB "
        f"beyond the input (output {output_mb:.0f} MB, input {samples.nbytes / 2**20:.0f} MB)"
    )

    if args.skip_reference:
        return
    long_pieces = pieces(samples, PIECE_S, params.sample_rate)
    reference_2016.extract_chunks(long_pieces[0])  # warm-up: first-touch page faults
    reference = sum(timed(reference_2016.extract_chunks, piece)[0] for piece in long_pieces)
    print(f"(c)  2016 reference (mlab + loops):     {reference * per_hour:7.3f}")
    print(f"     (c) / (b):                         {reference / ours:7.2f}x faster")


if __name__ == "__main__":
    main()
