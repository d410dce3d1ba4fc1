"""One recording file -> its chunks: the extraction entry point of load_data and predict.

Training (load_data.py) and prediction (predict.py) both call `recording_chunks`, so a
recording is read, turned into features and cut into chunks in one way only, whatever the
front end (preprocess/params.py). A 16 kHz 16-bit mono wav longer than STREAM_SECONDS is
streamed (`stream_chunks`: memory independent of its length); any other file is read whole
and its spectrogram cut in slices of max_chunks (`chunk_slices`, equal to `extract_chunks`).
Both commands extract in worker processes by `run_in_workers`; `whole_recording_chunks` is
prediction's task for one.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import numpy as np

from preprocess.audio import (
    AudioError,
    read_wav,
    read_wav_blocks,
    streamable_seconds,
    to_sample_rate,
)
from preprocess.params import SpectrogramParams
from preprocess.spectrogram import (
    STREAM_SECONDS,
    chunk_slices,
    log_spectrogram,
    stream_chunks,
    window_chunks,
)


class WorkerLost(Exception):
    """An extraction worker process ended abruptly: killed (out of memory?) or crashed."""


class ChunkSource(NamedTuple):
    """What `recording_chunks` returns."""

    # arrays (<= max_chunks, n_bins, chunk_frames) float32 in time order (one per window with
    # window_seconds); returns (StopIteration.value) the frames after the noise filter
    pieces: Generator[np.ndarray, None, int]
    seconds: float  # the audio's duration
    sample_rate: int  # the file's


def recording_chunks(
    path: str | os.PathLike,
    params: SpectrogramParams,
    max_chunks: int,
    *,
    window_seconds: float | None = None,
    resample: bool = False,
) -> ChunkSource:
    """The chunks of one audio file, as `ChunkSource`.

    window_seconds: one piece per window of that length (`window_chunks`, for soundscape
    rankings) instead of pieces of at most max_chunks training chunks. resample: a wav at
    another rate than params.sample_rate is resampled in process (soxr); else it is an
    `AudioError`, as is any unreadable file. A streamed file is read only as the pieces are
    asked for, so its read errors come from the pieces.
    """
    seconds = streamable_seconds(path, params.sample_rate)
    if window_seconds is None and seconds > STREAM_SECONDS:
        pieces = stream_chunks(lambda: read_wav_blocks(path), params, max_chunks)
        return ChunkSource(pieces, seconds, params.sample_rate)
    samples, rate = read_wav(path)
    seconds = len(samples) / rate
    if rate != params.sample_rate:
        if not resample:
            raise AudioError(path, f"sample rate {rate} Hz, expected {params.sample_rate} Hz")
        samples = to_sample_rate(samples, rate, params.sample_rate)
        if len(samples) == 0:
            raise AudioError(path, f"too short to resample ({seconds}s)")
    log_spec = log_spectrogram(samples, params)
    del samples
    if window_seconds is not None:
        return ChunkSource(window_chunks(log_spec, params, window_seconds), seconds, rate)
    return ChunkSource(chunk_slices(log_spec, params, max_chunks), seconds, rate)


def whole_recording_chunks(
    path: str | os.PathLike,
    params: SpectrogramParams,
    max_chunks: int,
    window_seconds: float | None = None,
) -> tuple[list[np.ndarray], float] | str:
    """`recording_chunks`' pieces all at once, for a worker process to send back: (pieces,
    seconds), or the reason the file is unusable (an `AudioError` would not survive the trip)."""
    try:
        source = recording_chunks(path, params, max_chunks, window_seconds=window_seconds)
        return list(source.pieces), source.seconds
    except AudioError as error:
        return error.reason
    except Exception as error:  # a bug or resource failure: say which file triggered it
        raise RuntimeError(f"{path}: {type(error).__name__}: {error}") from None


def keep_freed_memory() -> None:
    """Let this process's malloc (glibc's; other C libraries are left as they are) keep up to
    64 MB of freed memory for reuse, for every allocation up to 8 MB: glibc's own adaptive
    limits reach 32 and 64 MB, but only after freeing an allocation that large.

    Extraction allocates and frees the same few MB of work arrays for every recording (the
    STFT's blocks); by default glibc gives them back to the system after each one, and the
    next recording pays for fresh pages again: a third to half of the CPU time on 5 s clips
    (BENCHMARKS.md).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no mallopt, or no C library to ask
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 8 * 2**20)
    mallopt(m_trim_threshold, 64 * 2**20)


def start_extraction_worker() -> None:
    """Initializer of an extraction worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    keep_freed_memory()
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """End this process once its parent has (killed with -9, say): the other workers hold its
    task pipe open, so it would otherwise wait for tasks, holding its memory, forever."""
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os._exit(1)


def run_in_workers(
    function: Callable,
    tasks: Iterable[tuple],
    workers: int,
    ahead: int,
    describe: Callable[[tuple], str],
    context=None,
) -> Iterator:
    """function(*task) for every task, yielded in the tasks' order, computed by `workers`
    processes (`start_extraction_worker`; context: a multiprocessing context, None for the
    platform's default) at most `ahead` tasks ahead of the one consumed.

    Memory does not grow with the number of tasks (Pool.imap keeps every finished result when
    the consumer falls behind). A worker that dies ends the run with `WorkerLost`, naming the
    tasks in flight with describe(task), where multiprocessing.Pool would wait forever.
    """
    tasks = iter(tasks)
    queued: deque = deque()
    executor = ProcessPoolExecutor(workers, context, initializer=start_extraction_worker)
    try:
        while True:
            try:
                for task in itertools.islice(tasks, max(0, ahead - len(queued))):
                    queued.append((task, executor.submit(function, *task)))
                if not queued:
                    return
                result = queued[0][1].result()
            except BrokenProcessPool:  # from submit, or from the result
                where = f" while extracting {describe(queued[0][0])} or a file after it"
                raise WorkerLost(
                    "a worker process ended abruptly (killed, or out of memory?)"
                    + (where if queued else "")
                ) from None
            queued.popleft()
            yield result
    finally:
        executor.shutdown(cancel_futures=True)
