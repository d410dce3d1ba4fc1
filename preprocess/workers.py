"""The worker processes that extract recordings for load_data.py and predict.py.

`run_in_workers` runs tasks in a process pool and yields their results in order, a bounded
number ahead; a worker that dies ends the run with `WorkerLost` instead of a wait forever,
and a worker whose parent was killed ends too. `hand_over` and `take_chunks` move a
recording's chunks from a worker to its parent through a file in memory (/dev/shm) where one
can be written, else through the pool's pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np

MEMORY_FOLDER = Path("/dev/shm")  # a tmpfs on Linux: files there live in memory
HANDOFF_PREFIX = "birdclef-handoff-"  # + the parent's pid: a folder of hand_over files
IN_FLIGHT_PER_WORKER = 2  # tasks queued or finished per worker: keeps it busy, bounds memory


class WorkerLost(Exception):
    """An extraction worker process ended abruptly: killed (out of memory?) or crashed."""


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
    describe: Callable[[tuple], str],
    context=None,
) -> Iterator:
    """function(*task) for every task, yielded in the tasks' order, computed by `workers`
    processes (`start_extraction_worker`; context: a multiprocessing context, None for the
    platform's default) at most IN_FLIGHT_PER_WORKER tasks per worker ahead of the one
    consumed.

    Memory does not grow with the number of tasks (Pool.imap keeps every finished result when
    the consumer falls behind). A worker that dies ends the run with `WorkerLost`, naming the
    tasks in flight with describe(task), where multiprocessing.Pool would wait forever.
    """
    tasks, ahead = iter(tasks), IN_FLIGHT_PER_WORKER * workers
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
                message = "a worker process ended abruptly (killed, or out of memory?)"
                if queued:
                    message += f" while extracting {describe(queued[0][0])} or a file after it"
                raise WorkerLost(message) from None
            queued.popleft()
            yield result
    finally:
        executor.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Handing chunks from a worker to its parent
#
# Through the pool's pipe a recording's chunks are pickled, written, read and unpickled in
# 64 KB pieces: 1,500-2,400 chunks/s (0.4-0.6 GB/s) on a 2-core VM. A file in memory costs the
# worker's write and the parent's read: 4,500-5,500 chunks/s there (BENCHMARKS.md).


class FileChunks(NamedTuple):
    """A recording's chunks that a worker wrote to a file for its parent (`hand_over`)."""

    path: str
    dtype: str
    shape: tuple[int, ...]  # every piece stacked: (chunks, n_bins, chunk_frames)
    piece_lengths: tuple[int, ...]


@contextlib.contextmanager
def handoff_folder(memory: Path = MEMORY_FOLDER) -> Iterator[str | None]:
    """A private folder in memory for the workers' `hand_over` files, removed with what is
    left in it at the end; None where memory has no writable folder (the pipe is used then).
    Folders left by runs that were killed (kill -9) are removed first."""
    try:
        remove_stale_handoff_folders(memory)
        folder = tempfile.mkdtemp(prefix=f"{HANDOFF_PREFIX}{os.getpid()}-", dir=memory)
    except OSError:  # no such folder (not Linux), read-only, full
        yield None
        return
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_handoff_folders(memory: Path) -> None:
    """Remove the handoff folders in memory whose process has ended."""
    for folder in memory.glob(f"{HANDOFF_PREFIX}*"):
        pid = folder.name[len(HANDOFF_PREFIX) :].split("-")[0]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def hand_over(pieces: list[np.ndarray], folder: str | None) -> list[np.ndarray] | FileChunks:
    """A worker's pieces (arrays of the same dtype and trailing shape) as its parent takes
    them with `take_chunks`: written to a file in folder, or the pieces themselves (pickled
    through the pipe) where no file can be written: no folder, or no room left in memory (a
    default Docker container has 64 MB there; a failed write says so, where a full memory map
    would kill the worker)."""
    if folder is None or not pieces:
        return pieces
    path = None
    try:
        descriptor, path = tempfile.mkstemp(suffix=".chunks", dir=folder)
        with open(descriptor, "wb") as file:
            for piece in pieces:
                file.write(np.ascontiguousarray(piece).data)
    except OSError:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return pieces
    lengths = tuple(len(piece) for piece in pieces)
    shape = (sum(lengths), *pieces[0].shape[1:])
    return FileChunks(path, pieces[0].dtype.str, shape, lengths)


def take_chunks(handed: list[np.ndarray] | FileChunks) -> list[np.ndarray]:
    """The pieces that `hand_over` gave; its file is read and removed."""
    if not isinstance(handed, FileChunks):
        return handed
    try:
        chunks = np.fromfile(handed.path, dtype=handed.dtype).reshape(handed.shape)
    finally:
        os.unlink(handed.path)
    return np.split(chunks, np.cumsum(handed.piece_lengths)[:-1])
