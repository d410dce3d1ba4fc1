"""Prediction speed of the BirdClef CNN on the CPU, and peak memory on long recordings.

Setup (untimed): synthetic demo test recordings (preprocess/make_demo_dataset.py), resampled
to 16 kHz by preprocess/resample_wavs_to_16k.sh, and a run folder with an untrained BirdClef
model (speed does not depend on the weights). Timed, after one warm-up recording:
  (a) the model alone: chunks/s of `predict_on_batch` on fixed batches,
  (b) `predict.predict()`: read, spectrogram, filter, chunks, shared batches, run file,
and the share of (b)'s time the model takes; once for each --workers count (extraction in
this process between model calls, or in that many worker processes beside the model).
  (c) peak memory (RSS) of `predict()` on one synthetic 1-hour and one 10-hour 16 kHz wav
(noise and tone bursts), each in a fresh process with a NumPy stand-in for the model (its
memory does not depend on the recording): streamed as predict does it, and 1 hour read whole
as shorter recordings are, for comparison; beside a 10-second recording's peak (the imports).
  (d) the hand-off alone: chunks/s that --workers worker processes (counts of 2 or more) hand
to this one, each task 32 ready chunks of 200 x 310 float32, through the pool's pipe and
through a slot in memory (preprocess/workers.py), copied into a batch; best of 3 runs of 20
tasks per worker, timed once every worker has begun.
  (e) the CPU time this process spends per recording in (b) with --workers workers (counts of
2 or more) and a NumPy stand-in for the model, this process pinned to core 0 and its workers
kept off it (Linux): what feeding the model costs, which bounds prediction on a GPU.
Run it alone:

    flock /tmp/bench.lock python benchmarks/bench_predict.py
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make the stages importable
import preprocess.extract as extract_module  # noqa: E402
from predict.predict import Run, find_audio, predict  # noqa: E402
from predict.runfile import read_run_file  # noqa: E402
from preprocess.audio import read_wav  # noqa: E402
from preprocess.make_demo_dataset import SPECIES, make_demo_dataset  # noqa: E402
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.spectrogram import extract_chunks  # noqa: E402
from preprocess.workers import hand_over, run_in_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class StandInModel:
    """Uniform softmax for any batch: the pipeline's memory without TensorFlow's."""

    output_shape = (None, 50)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), self.output_shape[1]), 1 / self.output_shape[1], np.float32)


def write_long_wav(path: Path, minutes: int, params: SpectrogramParams) -> None:
    """A 16-bit mono wav of `minutes` copies of one minute of noise with 1 s tone bursts."""
    rate = params.sample_rate
    t = np.arange(60 * rate) / rate
    minute = 300 * np.random.default_rng(0).standard_normal(t.size)
    for start in range(0, 60, 4):
        burst = (t >= start) & (t < start + 1)
        minute[burst] += 5000 * np.sin(2 * np.pi * (1000 + 80 * start) * t[burst])
    frames = minute.astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        for _ in range(minutes):
            out.writeframes(frames)


def print_peak_memory(wav: Path, whole: bool) -> None:
    """Child process: predict wav with the stand-in model, print the peak RSS in MB."""
    if whole:
        extract_module.STREAM_SECONDS = math.inf
    run = Run(StandInModel(), SpectrogramParams(), [f"c{i:03d}" for i in range(50)], {})
    predict(run, find_audio([wav])[0], wav.with_suffix(".csv"))
    # VmHWM, not getrusage's maxrss: that one keeps the forked parent's peak across exec
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    print(int(status.split("VmHWM:")[1].split()[0]) / 1024)  # kB -> MB


def peak_memory(wav: Path, whole: bool = False) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of predicting wav in a fresh process."""
    command = [sys.executable, __file__, "--peak-memory-of", str(wav)]
    start = time.perf_counter()
    done = subprocess.run(command + ["--whole"] * whole, check=True, capture_output=True)
    return float(done.stdout.split()[-1]), time.perf_counter() - start


def measure_memory(temp: Path, params: SpectrogramParams) -> dict[str, tuple[float, float]]:
    """(c): {case: (peak RSS in MB, seconds)} for 10 s, 1 h (whole and streamed) and 10 h."""
    wavs = {}
    for name, minutes in [("1h", 60), ("10h", 600)]:
        wavs[name] = temp / f"{name}.wav"
        write_long_wav(wavs[name], minutes, params)
    wavs["10s"] = temp / "10s.wav"
    with wave.open(str(wavs["1h"])) as source, wave.open(str(wavs["10s"]), "wb") as out:
        out.setparams(source.getparams())
        out.writeframes(source.readframes(10 * params.sample_rate))
    return {
        "10 s": peak_memory(wavs["10s"]),
        "1 h read whole": peak_memory(wavs["1h"], whole=True),
        "1 h streamed": peak_memory(wavs["1h"]),
        "10 h streamed": peak_memory(wavs["10h"]),
    }


def ready_chunks(index: int, slot: str | None, cache: dict = {}):  # noqa: B006 (per worker)
    """(d)'s task: 32 chunks computed once per worker, handed over as prediction's are, with
    the time this worker began its first task."""
    if "chunks" not in cache:
        cache["chunks"], cache["began"] = [np.ones((32, 200, 310), np.float32)], time.time()
    return hand_over(cache["chunks"], slot), cache["began"]


def handoff_rates(workers: int, tasks_per_worker: int = 20) -> dict[str, float]:
    """(d): {"pipe" | "slot": chunks/s} that `workers` spawned processes hand over and this
    one copies into a batch (as predict_pieces does), best of 3: the chunks that arrive after
    the last worker began its first task, over the time since (the workers start one after
    another, in about 3 s on the H100 machine, which would count otherwise). workers >= 2:
    run_in_workers runs the tasks in this process for fewer, with nothing handed over."""
    if workers < 2:
        raise ValueError(f"the hand-off needs 2 or more worker processes, not {workers}")
    rates, batch, n_tasks = {}, np.empty((32, 200, 310), np.float32), tasks_per_worker * workers
    for way in ("pipe", "slot"):
        best = 0.0
        for _ in range(3):
            context = multiprocessing.get_context("spawn")  # as predict's
            handoff = way == "slot"  # run_in_workers then adds each task's slot; else None
            arguments = ((index,) if handoff else (index, None) for index in range(n_tasks))
            arrivals, began_at = [], set()  # (time, chunks) of every result; workers' starts
            for pieces, began in run_in_workers(
                ready_chunks, arguments, workers, str, context, handoff
            ):
                for piece in pieces:
                    batch[: len(piece)] = piece
                arrivals.append((time.time(), sum(len(piece) for piece in pieces)))
                began_at.add(began)
            if len(began_at) < workers:
                print(f"  (hand-off, {way}: only {len(began_at)} of {workers} workers began)")
            after = [(at, n) for at, n in arrivals if at > max(began_at)]
            if len(after) > 1 and after[-1][0] > after[0][0]:
                seconds = after[-1][0] - after[0][0]
                best = max(best, sum(n for _, n in after[1:]) / seconds)
        rates[way] = best
    return rates


def pin_workers_elsewhere(core: int, expected: int, stop: threading.Event, spent: list) -> None:
    """Move this process's child processes to every core but `core` until `expected` of them
    run as spawned workers (`spawn_main` in their command line, which a child has only once
    it has started Python; multiprocessing's resource tracker is a child too), or stop is
    set; then append the CPU seconds this took to spent."""
    moved: set[int] = set()
    others = os.sched_getaffinity(0) - {core} or {core}
    while not stop.wait(0.02):
        workers = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):  # ended meanwhile
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # "pid (name) S ppid"
                pid = int(stat.parent.name)
                if parent == os.getpid():
                    if pid not in moved:
                        os.sched_setaffinity(pid, others)  # kept through its exec
                        moved.add(pid)
                    workers += b"spawn_main" in (stat.parent / "cmdline").read_bytes()
        if workers >= expected:
            break
    spent.append(time.thread_time())


def parent_cpu_per_recording(items: list, workers: int, batch_size: int) -> float:
    """(e): CPU ms of this process (every thread but the one that moves the workers) per
    recording of predict() with `workers` extraction workers and the NumPy stand-in model,
    this process's threads on one core and the workers kept off it, so that their work does
    not slow it: what it costs to feed a GPU.
    """
    run = Run(StandInModel(), SpectrogramParams(), [f"c{i:03d}" for i in range(50)], {})
    everywhere = os.sched_getaffinity(0)
    core = min(everywhere)
    stop, spent = threading.Event(), []
    pinning = threading.Thread(target=pin_workers_elsewhere, args=(core, workers, stop, spent))
    with tempfile.TemporaryDirectory() as temp:
        os.sched_setaffinity(0, {core})  # this thread; those it starts (the model's) inherit it
        pinning.start()
        try:
            before = resource.getrusage(resource.RUSAGE_SELF)
            predict(run, items, Path(temp) / "run.csv", batch_size=batch_size, workers=workers)
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            stop.set()
            pinning.join()
            os.sched_setaffinity(0, everywhere)
    seconds = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime - sum(spent)
    return 1000 * seconds / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recordings", type=int, default=300, help="test recordings (3-40 s)")
    parser.add_argument("--classes", type=int, default=50, help="output classes (paper: 50)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", type=Path, default=ROOT / "train" / "model-BirdClef.py")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1], help="(b)'s counts"
    )
    parser.add_argument("--peak-memory-of", type=Path, help=argparse.SUPPRESS)  # (c)'s child
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_of:
        print_peak_memory(args.peak_memory_of, args.whole)
        return
    params = SpectrogramParams()

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        per_species = max(1, args.recordings // len(SPECIES))
        make_demo_dataset(temp / "demo", recordings_per_species=1, test_per_species=per_species)
        subprocess.run(
            [
                "bash",
                str(ROOT / "preprocess" / "resample_wavs_to_16k.sh"),
                str(temp / "demo" / "TestSet" / "wav"),
                str(temp / "16k"),
            ],
            check=True,
            capture_output=True,
        )
        items, _ = find_audio([temp / "16k"])
        seconds = sum(len(read_wav(item.path)[0]) / params.sample_rate for item in items)
        n_chunks = sum(len(extract_chunks(read_wav(item.path)[0], params).chunks) for item in items)

        classes = [f"c{index:03d}" for index in range(args.classes)]
        # imported here: (c)'s child processes must not load Keras, or it would be measured
        from train.model_file import build_model_from_file

        model = build_model_from_file(
            args.model, (params.n_bins, params.chunk_frames, 1), len(classes)
        )
        run = Run(model, params, classes, {})
        predict(run, items[:1], temp / "warmup.csv", batch_size=args.batch_size)

        batch = (
            np.random.default_rng(0)
            .normal(size=(args.batch_size, params.n_bins, params.chunk_frames, 1))
            .astype(np.float32)
        )
        start, n_batches = time.perf_counter(), 10
        for _ in range(n_batches):
            model.predict_on_batch(batch)
        model_rate = n_batches * args.batch_size / (time.perf_counter() - start)

        elapsed = {}
        for workers in args.workers:
            start = time.perf_counter()
            predict(run, items, temp / "run.csv", batch_size=args.batch_size, workers=workers)
            elapsed[workers] = time.perf_counter() - start
        n_recordings = len({e.media_id for e in read_run_file(temp / "run.csv")})
        memory = measure_memory(temp, params)
        parent_ms = {
            workers: parent_cpu_per_recording(items, workers, args.batch_size)
            for workers in args.workers
            if workers > 1 and (os.cpu_count() or 1) > 1
        }
    handoff = {workers: handoff_rates(workers) for workers in args.workers if workers > 1}

    print(f"model {args.model.name}, {args.classes} classes, batch {args.batch_size}, CPU")
    print(f"(a) model alone: {model_rate:.0f} chunks/s")
    for workers, took in elapsed.items():
        print(
            f"(b) predict(), {workers} workers: {n_recordings} recordings, {seconds:.0f} s of "
            f"audio in {took:.2f} s: {n_recordings / took:.1f} recordings/s, "
            f"{seconds / took:.0f} audio s/s"
        )
        print(
            f"    {n_chunks / took:.0f} chunks/s; the model's share of the time: "
            f"{n_chunks / model_rate / took:.0%}"
        )
    print("(c) peak memory (RSS) of predict() on one recording, NumPy stand-in model:")
    for case, (mb, process_seconds) in memory.items():
        print(f"    {case:>14}: {mb:5.0f} MB (process: {process_seconds:.1f} s)")
    for workers, ms in parent_ms.items():
        print(f"(e) this process's CPU per recording, {workers} workers off its core: {ms:.3f} ms")
    print("(d) the hand-off alone, chunks/s:")
    for workers, rates in handoff.items():
        print(
            f"    {workers} workers: pipe {rates['pipe']:.0f}, slot in memory {rates['slot']:.0f}"
        )
    print(
        json.dumps(
            {
                **{f"recordings_per_s {w} workers": n_recordings / t for w, t in elapsed.items()},
                **{
                    f"handoff {w} workers {way}": r
                    for w, d in handoff.items()
                    for way, r in d.items()
                },
                **{f"parent_cpu_ms_per_recording {w} workers": ms for w, ms in parent_ms.items()},
                "model_chunks_per_s": model_rate,
                **{f"peak_rss_mb {case}": mb for case, (mb, _) in memory.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
