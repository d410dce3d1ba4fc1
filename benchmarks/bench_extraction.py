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

PIECE_S = 600  # the reference and the plain floor run on 10-minute recordings (soundscapes)
SHORT_S = 60  # a typical training recording


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="audio length (default 60)")
    parser.add_argument("--repeats", type=int, default=5, help="best of N for (a), (b)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out (c)")
    args = parser.parse_args()

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
