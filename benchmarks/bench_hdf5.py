"""Benchmark of the HDF5 stage: compression, shard writing, copying, reading, and load_data.

    flock /tmp/bench.lock python benchmarks/bench_hdf5.py [--hours H] [--repeat N]

0. Chunk formats (file size, rows/s of reading per core, with 1 and 2 reader processes):
   every --compression choice and candidates besides (Blosc2 with LZ4 or Zstd, byte or bit
   shuffle; float16 rows, which are lossy and so only an option), on 20 minutes of audio.
1. One hour of synthetic bird-like audio (frequency-modulated calls over red noise, 16 kHz,
   int16 scale) is cut into chunks by preprocess/spectrogram.py (about 725 chunks of
   200 x 310 float32). For each --compression choice: the compression cost and the shard
   write (paid in the workers), the copy into the output (paid in the parent), file size,
   and the read
   throughput of random batches of 64 rows, as training reads them (read_rows), and row by
   row through HDF5's own filters.
2. load_data.py end to end on the same hour written as 60 wav files, with --workers 1 and 2:
   files/s, audio seconds per second, peak memory (largest process, and parent + workers).
3. Peak memory with 20 and with 200 short recordings: it must not grow with their number.
4. One 1 h and one 3 h recording, read whole and streamed (load_data.py streams recordings
   over STREAM_SECONDS): wall time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import scipy.signal
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # make the stages importable
from preprocess.dataset import (  # noqa: E402
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DatasetInfo,
    RecordingChunks,
    StoredRecordings,
    atomic_dataset,
    compress_chunks,
    open_dataset,
    read_rows,
    shard_path,
)
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.spectrogram import extract_chunks  # noqa: E402

RATE = 16000
RECORDING_SECONDS = 60
# Runs load_data.main in this process, then prints its peak memory (VmHWM: ru_maxrss would
# include the benchmark's own memory, inherited through fork), its largest worker's, and the
# CPU seconds of both (a shared machine slows the wall clock, not the CPU time).
MEASURED_RUN = """
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
from preprocess import extract, load_data
if "BENCH_STREAM_SECONDS" in os.environ:
    extract.STREAM_SECONDS = float(os.environ["BENCH_STREAM_SECONDS"])
code = load_data.main(sys.argv[2:])
with open("/proc/self/status") as status:
    parent = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
me, workers = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print("PEAK_MB " + json.dumps({
    "parent": parent / 1024, "worker": workers.ru_maxrss / 1024,
    "parent_cpu": me.ru_utime + me.ru_stime, "workers_cpu": workers.ru_utime + workers.ru_stime,
}))
sys.exit(code)
"""


def concatenated_wavs(clips: list[Path], folder: Path, seconds: float) -> list[Path]:
    """The clips (16 kHz 16-bit mono wavs) joined in order into wavs of at least `seconds`
    (the last one shorter) in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    joined, pending, pending_samples = [], [], 0
    for index, clip in enumerate(clips):
        rate, samples = wavfile.read(clip)
        if rate != 16000 or samples.dtype != np.int16 or samples.ndim != 1:
            raise SystemExit(f"{clip}: not a 16 kHz 16-bit mono wav")
        pending.append(samples)
        pending_samples += samples.size
        if pending_samples >= seconds * rate or index == len(clips) - 1:
            joined.append(folder / f"joined{len(joined):04d}.wav")
            wavfile.write(joined[-1], rate, np.concatenate(pending))
            pending, pending_samples = [], 0
    return joined


def write_labels(wavs: list[Path], wav_dir: Path) -> Path:
    """A load_data CSV of the wavs (paths relative to wav_dir), ten made-up classes."""
    csv = wav_dir / "labels.csv"
    lines = [f"{wav.relative_to(wav_dir)},class{index % 10}" for index, wav in enumerate(wavs)]
    csv.write_text("\n".join(["file,label", *lines]) + "\n")
    return csv


def birdsong(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Bird-like test audio (n,) float32 on the int16 scale: chirps of 50-400 ms sweeping
    1.5-6 kHz with vibrato and a harmonic, about 3 per second, over red noise."""
    n = int(seconds * RATE)
    noise = scipy.signal.lfilter([1.0], [1.0, -0.95], rng.standard_normal(n))
    song = noise * rng.uniform(20, 80)
    start = rng.uniform(0, 1)
    while True:
        length = int(rng.uniform(0.05, 0.4) * RATE)
        first = int(start * RATE)
        if first + length > n:
            break
        t = np.arange(length) / RATE
        sweep = np.linspace(*rng.uniform(1500, 6000, 2), length)
        frequency = sweep * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(5, 40) * t))
        phase = 2 * np.pi * np.cumsum(frequency) / RATE
        call = np.sin(phase) + 0.3 * np.sin(2 * phase)
        song[first : first + length] += rng.uniform(300, 6000) * np.hanning(length) * call
        start += length / RATE + rng.exponential(0.1)
    return np.clip(song, -32768, 32767).astype(np.float32)


class Stopwatch:
    """`with Stopwatch() as watch: ...` then watch.seconds."""

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


def bench_storage(chunk_sets: list[np.ndarray], params: SpectrogramParams, work: Path) -> None:
    n_chunks = sum(len(chunks) for chunks in chunk_sets)
    raw_mb = n_chunks * params.n_bins * params.chunk_frames * 4 / 1e6
    print(f"\n## storage: {n_chunks} chunks, {raw_mb:.0f} MB raw float32")
    print("reads: 20 random batches of 64 rows, file in the page cache")
    rng = np.random.default_rng(1)
    for compression in COMPRESSIONS:
        info = DatasetInfo(params, ["a", "b"], {"a": "a", "b": "b"}, compression=compression)
        with Stopwatch() as compress:
            stored = [compress_chunks(chunks, compression) for chunks in chunk_sets]
        items = [
            RecordingChunks(f"m{i}", "a", f"f{i}.wav", 0, np.zeros(2, np.uint8), 0, 60.0, chunks)
            for i, chunks in enumerate(stored)
        ]
        parts, out = work / f"{compression}.parts", work / f"{compression}.h5"
        parts.mkdir(exist_ok=True)
        shards = [shard_path(parts, "bench", task) for task in range(math.ceil(len(items) / 4))]
        with Stopwatch() as write:  # shards of 4 one-minute recordings, as load_data's tasks
            for number, shard in enumerate(shards):
                with atomic_dataset(shard, info) as writer:
                    for item in items[4 * number : 4 * number + 4]:
                        writer.append(item)
        with Stopwatch() as copy, atomic_dataset(out, info) as writer:
            for shard in shards:
                source = StoredRecordings(shard)
                for index in range(len(source)):
                    writer.append(source.recording(index))
                source.close()
        size_mb = out.stat().st_size / 1e6

        with open_dataset(out) as dataset:
            batches = [np.sort(rng.choice(len(dataset), 64, replace=False)) for _ in range(20)]
            with Stopwatch() as batch_read:
                for batch in batches:
                    read_rows(dataset.X, batch)
            with Stopwatch() as per_row_read:
                for batch in batches:
                    for row in batch:
                        dataset.X[row]
        rows = 20 * 64
        print(
            f"{compression:7s} compress {compress.seconds:5.2f} s "
            f"({raw_mb / compress.seconds:4.0f} MB/s) | shards {write.seconds:5.2f} s | "
            f"copy {copy.seconds:5.2f} s | {size_mb:5.1f} MB (x{raw_mb / size_mb:4.1f}) | "
            f"read {rows / batch_read.seconds:5.0f} rows/s (read_rows, as training), "
            f"{rows / per_row_read.seconds:5.0f} rows/s (X[row], HDF5's filters)"
        )


BLOSC2 = hdf5plugin.Blosc2
CANDIDATES = {  # name: (dtype of X, h5py filter settings); COMPRESSIONS are added
    "blosc2-lz4-bitshuffle": ("<f4", dict(BLOSC2("lz4", 5, BLOSC2.BITSHUFFLE))),
    "blosc2-lz4hc": ("<f4", dict(BLOSC2("lz4hc", 5, BLOSC2.SHUFFLE))),
    "blosc2-zstd1": ("<f4", dict(BLOSC2("zstd", 1, BLOSC2.SHUFFLE))),
    "blosc2-zstd1-bitshuffle": ("<f4", dict(BLOSC2("zstd", 1, BLOSC2.BITSHUFFLE))),
    "float16 blosc2-lz4 (lossy)": ("<f2", dict(BLOSC2("lz4", 5, BLOSC2.SHUFFLE))),
    "float16 none (lossy)": ("<f2", {}),
}


def read_batches(path: Path, batches: list[np.ndarray]) -> tuple[int, float]:
    """Rows read and CPU seconds spent reading `batches` of X in path (in a process)."""
    with h5py.File(path, "r") as h5:
        started = time.process_time()
        for batch in batches:
            read_rows(h5["X"], batch)
        return sum(len(batch) for batch in batches), time.process_time() - started


def bench_formats(chunks: np.ndarray, work: Path, n_batches: int = 40) -> None:
    """Size and read speed of X in each format, read as training reads it (read_rows of
    random sorted batches of 64 rows) by 1 and 2 processes, each with its own handle."""
    print(f"\n## chunk formats: {len(chunks)} chunks, batches of 64 random rows")
    print(
        "format                      write rows/cpu-s  KB/row  read rows/s (per cpu-s): "
        "1 process, 2 processes"
    )
    formats = {name: ("<f4", filters) for name, filters in COMPRESSIONS.items()} | CANDIDATES
    rng = np.random.default_rng(3)
    fork = multiprocessing.get_context("fork")
    for name, (dtype, filters) in formats.items():
        path = work / "format.h5"
        with h5py.File(path, "w") as h5:
            x = h5.create_dataset(
                "X",
                (len(chunks), *chunks.shape[1:], 1),
                dtype,
                chunks=(1, *chunks.shape[1:], 1),
                **filters,
            )
            started = time.process_time()
            for row, chunk in enumerate(chunks):
                x[row] = chunk[..., None].astype(dtype)
            write = len(chunks) / (time.process_time() - started)
            kb_per_row = x.id.get_storage_size() / len(chunks) / 1e3
        reads = []
        for processes in (1, 2):
            batches = [
                [np.sort(rng.choice(len(chunks), 64, replace=False)) for _ in range(n_batches)]
                for _ in range(processes)
            ]
            started = time.perf_counter()
            with fork.Pool(processes) as pool:
                done = pool.starmap(read_batches, [(path, each) for each in batches])
            rows, cpu = (sum(column) for column in zip(*done, strict=True))
            reads.append(f"{rows / (time.perf_counter() - started):6.0f} ({rows / cpu:6.0f})")
        print(f"{name:27s} {write:16.0f}  {kb_per_row:6.1f}  {reads[0]}, {reads[1]}")


def bench_standard_deflate(chunk_sets: list[np.ndarray], raw_mb: float) -> None:
    """What HDF5's own gzip filter (shuffle + deflate at a level) would cost instead."""
    for level in (1, 4):
        with Stopwatch() as compress:
            size = sum(
                len(zlib.compress(chunk.view(np.uint8).reshape(-1, 4).T.tobytes(), level))
                for chunks in chunk_sets
                for chunk in chunks
            )
        print(
            f"for comparison, HDF5's own gzip level {level} + shuffle: compress "
            f"{compress.seconds:5.2f} s ({raw_mb / compress.seconds:4.0f} MB/s), "
            f"x{raw_mb * 1e6 / size:4.1f}"
        )


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of pid and all its descendants now, from /proc (MB)."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status", encoding="utf-8") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="utf-8") as children:
                    stack += [int(child) for child in children.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_load_data(argv: list[str], stream_seconds: float | None = None) -> dict:
    """Run load_data.py as a child: wall seconds, peak MB (parent, largest worker, sum).
    stream_seconds: its STREAM_SECONDS instead of the default."""
    started = time.perf_counter()
    env = {**os.environ}
    if stream_seconds is not None:
        env["BENCH_STREAM_SECONDS"] = str(stream_seconds)
    child = subprocess.Popen(
        [sys.executable, "-c", MEASURED_RUN, str(ROOT), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak_sum = 0.0
    while child.poll() is None:
        peak_sum = max(peak_sum, process_tree_rss_mb(child.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"load_data failed:\n{stderr[-3000:]}")
    peak = json.loads(stdout.split("PEAK_MB ")[-1])
    return {"seconds": seconds, **peak, "sum": peak_sum}


def write_wavs(folder: Path, seconds: list[float], rng: np.random.Generator) -> Path:
    """Wav files (16 kHz int16) of the given lengths and a CSV listing them; returns the CSV."""
    folder.mkdir(parents=True)
    lines = ["file,label"]
    for index, length in enumerate(seconds):
        name = f"rec{index:04d}.wav"
        wavfile.write(folder / name, RATE, birdsong(length, rng).astype(np.int16))
        lines.append(f"{name},species{index % 5}")
    csv = folder / "labels.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv


def load_data_argv(csv: Path, out: Path, workers: int, compression: str) -> list[str]:
    options = {"--csv": csv, "--out": out, "--workers": workers, "--compression": compression}
    return ["--wav-dir", str(csv.parent), *(str(x) for pair in options.items() for x in pair)]


def best_of(repeat: int, argv: list[str]) -> dict:
    """The fastest of `repeat` runs (the machine is shared), with the highest memory peaks."""
    runs = []
    for _ in range(repeat):
        Path(argv[argv.index("--out") + 1]).unlink(missing_ok=True)
        runs.append(run_load_data(argv))
    best = min(runs, key=lambda run: run["seconds"])
    return {**best, **{key: max(run[key] for run in runs) for key in ("parent", "worker", "sum")}}


def bench_end_to_end(hours: float, work: Path, repeat: int) -> None:
    rng = np.random.default_rng(2)
    n_files = round(hours * 3600 / RECORDING_SECONDS)
    csv = write_wavs(work / "wav", [RECORDING_SECONDS] * n_files, rng)
    audio_h = n_files * RECORDING_SECONDS / 3600
    print(f"\n## load_data.py end to end: {n_files} wavs x {RECORDING_SECONDS} s at 16 kHz")
    print("(python start-up, metadata, wav reading, extraction, compression, shards, copy)")
    header = "workers compression  s/audio-h  files/s  audio s/s  CPU s: parent workers"
    print(f"{header}  peak MB: parent largest-worker all")
    runs = [(1, DEFAULT_COMPRESSION), (2, DEFAULT_COMPRESSION), (1, "lzf"), (2, "lzf"), (2, "none")]
    for workers, compression in runs:
        out = work / f"e2e-{workers}-{compression}.h5"
        run = best_of(repeat, load_data_argv(csv, out, workers, compression))
        wall = run["seconds"]
        print(
            f"{workers:7d} {compression:11s} {wall / audio_h:7.2f}  {n_files / wall:7.1f}  "
            f"{audio_h * 3600 / wall:9.0f}  {run['parent_cpu']:13.2f} {run['workers_cpu']:7.2f}"
            f"  {run['parent']:15.0f} {run['worker']:14.0f} {run['sum']:4.0f}"
        )

    print("\n## peak memory against the number of recordings (10 s each, --workers 2)")
    print("recordings  wall s  peak MB: parent largest-worker all")
    for count in (20, 200):
        csv = write_wavs(work / f"many{count}", [10.0] * count, rng)
        out = work / f"many{count}.h5"
        run = best_of(repeat, load_data_argv(csv, out, 2, DEFAULT_COMPRESSION))
        print(
            f"{count:10d}  {run['seconds']:6.2f}  {run['parent']:15.0f} {run['worker']:14.0f}"
            f" {run['sum']:4.0f}"
        )

    print("\n## one long recording (--workers 1): read whole, or streamed (over STREAM_SECONDS)")
    print("hours  way       wall s  peak MB (parent)")
    for hours_long in (1, 3):
        csv = write_wavs(work / f"long{hours_long}", [hours_long * 3600.0], rng)
        for way, stream_seconds in (("whole", math.inf), ("streamed", None)):
            out = work / f"long{hours_long}-{way}.h5"
            run = run_load_data(load_data_argv(csv, out, 1, DEFAULT_COMPRESSION), stream_seconds)
            print(f"{hours_long:5d}  {way:8s}  {run['seconds']:6.1f}  {run['parent']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="audio hours (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="load_data runs, best kept")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    params = SpectrogramParams()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")

    rng = np.random.default_rng(0)
    n_recordings = round(args.hours * 3600 / RECORDING_SECONDS)
    audio = [birdsong(RECORDING_SECONDS, rng) for _ in range(n_recordings)]
    with Stopwatch() as extract:
        chunk_sets = [extract_chunks(samples, params).chunks for samples in audio]
    hours = n_recordings * RECORDING_SECONDS / 3600
    print(f"extraction (wav read excluded), one core: {extract.seconds:.2f} s for {hours:g} h")
    with tempfile.TemporaryDirectory(prefix="bench_hdf5_") as tmp:
        bench_formats(np.concatenate(chunk_sets[:20]), Path(tmp))
        bench_storage(chunk_sets, params, Path(tmp))
        raw_mb = sum(chunks.nbytes for chunks in chunk_sets) / 1e6
        bench_standard_deflate(chunk_sets, raw_mb)
        del audio, chunk_sets
        if not args.skip_end_to_end:
            bench_end_to_end(args.hours, Path(tmp), args.repeat)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nbenchmark process peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
