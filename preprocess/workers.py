"""The worker processes that extract recordings for load_data.py and predict.py, and read
chunks for training.

`run_in_workers` runs tasks in a process pool and yields their results in order, a bounded
number ahead; a worker that dies ends the run with `WorkerLost` instead of a wait forever,
and a worker whose parent was killed ends too. With its `handoff`, a worker's `hand_over`
moves a recording's chunks to the parent through a slot, a file in memory (/dev/shm) used
again and again, where one can be written, else through the pool's pipe. `RowReaders` read
rows of a chunk dataset for training in several processes, through files in memory too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import math
import mmap
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import stat
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from preprocess.dataset import check_finite, open_dataset, read_rows
from preprocess.paths import process_exists

MEMORY_FOLDER = Path("/dev/shm")  # a tmpfs on Linux: files there live in memory
HANDOFF_PREFIX = "birdclef-handoff-"  # + the parent's pid: a folder of hand_over files
OWNER_NAME = ".owner"  # in a handoff folder: locked (flock) by the process using it
IN_FLIGHT_PER_WORKER = 2  # tasks queued or finished per worker: keeps it busy, bounds memory
TASKS_PER_WORKER = 4  # at least, where there are items enough: the workers finish together
_owner_locks: dict[str, int] = {}  # handoff folder -> the descriptor holding its lock


class WorkerLost(Exception):
    """A worker process (extracting, or reading for training) ended abruptly: killed (out of
    memory?) or crashed."""


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


def start_worker(parent: int) -> None:
    """Initializer of a worker process, extracting or reading (`RowReaders`); parent: the pid
    of the process that asked for it, given by that process (not os.getppid(): a spawned
    worker runs this only once its imports are done, when a parent killed meanwhile has left
    it to init; and a forkserver's worker is the fork server's child)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    keep_freed_memory()
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """End this process once the process parent has (killed with -9, say): the other workers
    hold its task pipe open, so it would otherwise wait for tasks, holding its memory,
    forever."""
    while process_exists(parent):
        time.sleep(poll_seconds)
    os._exit(1)


def tasks_of(items: list, sizes: list[float], workers: int, most_size: float, most_items: int):
    """items (of these sizes: bytes, seconds) cut in order into the lists that tasks of
    `run_in_workers` take: up to most_size in all (one item at least), up to most_items, and
    at most 1 / (TASKS_PER_WORKER * workers) of the items, so that the workers finish about
    together. Each task costs the parent a submission and a result (some 0.3 ms): a task for
    each short file would make that the limit."""
    most_items = max(1, min(most_items, -(-len(items) // (TASKS_PER_WORKER * workers))))
    tasks: list[list] = []
    total = 0.0
    for item, size in zip(items, sizes, strict=True):
        if tasks and total + size <= most_size and len(tasks[-1]) < most_items:
            tasks[-1].append(item)
            total += size
        else:
            tasks.append([item])
            total = size
    return tasks


def run_in_workers(
    function: Callable,
    tasks: Iterable[tuple],
    workers: int,
    describe: Callable[[tuple], str],
    context=None,
    handoff: bool = False,
) -> Iterator:
    """function(*task) for every task, yielded in the tasks' order, computed by `workers`
    processes (`start_worker`; context: a multiprocessing context, None for the
    platform's default) at most IN_FLIGHT_PER_WORKER tasks per worker ahead of the one
    consumed. With `handoff`, every task gets one more argument: a slot for its `hand_over`,
    a file in a private folder in memory (`handoff_folder`; None where there is none), and
    a result's `FileChunks` (the result itself, or an item of a result that is a tuple) come
    out as the arrays they hold: read-only views of this process's lasting map of the slot,
    valid until the next result is asked for, when the slot goes to a later task. The
    folder is removed once the workers have ended. With fewer than 2 workers the tasks run
    in this process, one at a time as they are consumed (with no slot: nothing to hand over).

    Memory does not grow with the number of tasks (Pool.imap keeps every finished result when
    the consumer falls behind). A worker that dies ends the run with `WorkerLost`, naming the
    tasks in flight with describe(task) (what the task does: "extracting FILE", say), where
    multiprocessing.Pool would wait forever.
    """
    if workers < 2:
        for task in tasks:
            yield function(*task, None) if handoff else function(*task)
        return
    tasks, ahead = iter(tasks), IN_FLIGHT_PER_WORKER * workers
    queued: deque = deque()  # (task, its slot, its future)
    with contextlib.ExitStack() as stack:  # on leaving: the workers end, then the folder goes
        folder = stack.enter_context(handoff_folder()) if handoff else None
        # a slot per task in flight: the consumer is done with a result when it asks for
        # the next one, before more tasks are given out
        free_slots = [os.path.join(folder, f"slot-{n}") for n in range(ahead)] if folder else []
        slot_maps = SlotMaps()
        executor = ProcessPoolExecutor(
            workers, context, initializer=start_worker, initargs=(os.getpid(),)
        )
        stack.callback(executor.shutdown, cancel_futures=True)
        while True:
            try:
                for task in itertools.islice(tasks, max(0, ahead - len(queued))):
                    slot = free_slots.pop() if free_slots else None
                    arguments = (*task, slot) if handoff else task
                    queued.append((task, slot, executor.submit(function, *arguments)))
                if not queued:
                    return
                result = queued[0][2].result()
            except BrokenProcessPool:  # from submit, or from the result
                message = "a worker process ended abruptly (killed, or out of memory?)"
                if queued:
                    message += f" while {describe(queued[0][0])} or a file after it"
                raise WorkerLost(message) from None
            _, slot, _ = queued.popleft()
            yield slot_maps.received(result)
            if slot is not None:
                free_slots.append(slot)


# ---------------------------------------------------------------------------------------------
# Handing chunks from a worker to its parent
#
# Through the pool's pipe a recording's chunks are pickled, written, read and unpickled in
# 64 KB pieces: 1,500-2,400 chunks/s (0.4-0.6 GB/s) on a 2-core VM. A new file in memory for
# each recording cost fresh pages twice (the worker's write, the parent's read) and freeing
# them: 8,300-8,700 chunks/s there, against 31,500-35,000 through slots: written into pages
# they already have and read through a map the parent keeps (BENCHMARKS.md, Prediction).


class FileChunks(NamedTuple):
    """A task's chunks that a worker wrote into its slot for its parent (`hand_over`)."""

    path: str
    dtype: str
    shape: tuple[int, ...]  # every piece stacked: (chunks, n_bins, chunk_frames)
    piece_lengths: tuple[int, ...]


@contextlib.contextmanager
def handoff_folder(memory: Path = MEMORY_FOLDER) -> Iterator[str | None]:
    """A private folder in memory for the workers' slots (`hand_over`), removed with what is
    in it at the end; None where memory has no writable folder (the pipe is used then).
    Folders left by runs that were killed (kill -9) are removed first."""
    folder = make_handoff_folder(memory)
    try:
        yield folder
    finally:
        if folder is not None:
            remove_folder_of(os.getpid(), folder)


def make_handoff_folder(memory: Path = MEMORY_FOLDER) -> str | None:
    """A new private folder in memory named after this process (the caller removes it with
    `remove_folder_of`), or None where memory has no writable folder. This process holds a
    lock on its OWNER_NAME file until then. Folders that no process uses are removed."""
    try:
        remove_stale_handoff_folders(memory)
        # made under another name and renamed once locked: a scan in another container
        # (`remove_stale_handoff_folders`) never sees it unlocked
        made = tempfile.mkdtemp(prefix=f".{HANDOFF_PREFIX}{os.getpid()}-", dir=memory)
    except OSError:  # no such folder (not Linux), read-only, full
        return None
    descriptor = None
    try:
        owner = os.path.join(made, OWNER_NAME)
        descriptor = os.open(owner, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        folder = os.path.join(memory, os.path.basename(made)[1:])
        os.rename(made, folder)
    except OSError:
        shutil.rmtree(made, ignore_errors=True)
        if descriptor is not None:
            os.close(descriptor)
        return None
    _owner_locks[folder] = descriptor
    return folder


def remove_folder_of(owner_pid: int, folder: str) -> None:
    """Remove folder, and let go of its lock, if this is the process that made it (a forked
    reader process that drops its copy of the owner must leave the folder to its parent)."""
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)
        descriptor = _owner_locks.pop(folder, None)
        if descriptor is not None:
            os.close(descriptor)


def remove_stale_handoff_folders(memory: Path) -> None:
    """Remove the handoff folders in memory that no process uses: their process has ended
    here, and no process holds the lock on their OWNER_NAME file, as one in another container
    that shares this memory folder (and whose pids mean nothing here) does while it runs.
    Folders without that file (of versions before it, or not this code's) are left alone."""
    for folder in memory.glob(f"{HANDOFF_PREFIX}*"):
        pid = folder.name[len(HANDOFF_PREFIX) :].split("-")[0]
        if not pid.isdigit() or process_exists(int(pid)):
            continue
        try:  # no link followed, no wait on a pipe so named
            descriptor = os.open(folder / OWNER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while held
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue
        finally:
            os.close(descriptor)


def hand_over(pieces: list[np.ndarray], slot: str | None) -> list[np.ndarray] | FileChunks:
    """A worker's pieces (arrays of one dtype and trailing shape) for its parent: written
    into the file slot from its start, or the pieces themselves (pickled through the pipe)
    where no slot can be written: none, or no room left in memory (a default Docker
    container has 64 MB there; a failed write says so, where a full memory map would kill
    the worker). The slot keeps its size for the next task given it, so its pages are not
    allocated anew; the parent takes the chunks with `SlotMaps.received`."""
    if slot is None or not any(piece.nbytes for piece in pieces):
        return pieces
    try:
        descriptor = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return pieces
    try:
        offset = 0
        for piece in pieces:
            data = memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8))
            while data:  # a write may stop short of the whole
                written = os.pwrite(descriptor, data, offset)
                data, offset = data[written:], offset + written
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)  # what it holds would stay in memory for the run
        return pieces
    finally:
        os.close(descriptor)
    lengths = tuple(len(piece) for piece in pieces)
    return FileChunks(slot, pieces[0].dtype.str, (sum(lengths), *pieces[0].shape[1:]), lengths)


class SlotMaps:
    """This process's maps of the slots its workers hand chunks over in, each kept until the
    slot grows past it: a new map per task would fault every page of it in again."""

    def __init__(self):
        self.maps: dict[str, mmap.mmap] = {}

    def received(self, result):
        """result with its FileChunks (result itself, or items of a tuple) as the pieces they
        hold: read-only views of the slot's map, valid until a worker writes the slot again."""
        if isinstance(result, FileChunks):
            return self.take(result)
        if type(result) is tuple:
            return tuple(self.received(item) for item in result)
        return result

    def take(self, handed: FileChunks) -> list[np.ndarray]:
        dtype = np.dtype(handed.dtype)
        count = math.prod(handed.shape)
        mapped = self.maps.get(handed.path)
        if mapped is None or len(mapped) < count * dtype.itemsize:
            descriptor = os.open(handed.path, os.O_RDONLY | os.O_NOFOLLOW)
            try:  # views of an older, shorter map keep it open until they go
                mapped = self.maps[handed.path] = mmap.mmap(descriptor, 0, prot=mmap.PROT_READ)
            finally:
                os.close(descriptor)
        chunks = np.frombuffer(mapped, dtype, count).reshape(handed.shape)
        ends = itertools.accumulate(handed.piece_lengths)  # not np.split: 10 times slower here
        return [chunks[end - n : end] for n, end in zip(handed.piece_lengths, ends, strict=True)]


# ---------------------------------------------------------------------------------------------
# Reading rows of a chunk dataset in several processes, for training


class Slot(NamedTuple):
    """A file in memory that reader processes write rows into (`RowReaders`)."""

    path: str
    n_rows: int  # rows it holds
    mapped: mmap.mmap  # this process's map of it, kept for the slot's life


class RowReaders:
    """Processes that read rows of X in the HDF5 dataset file `path` together: `read(rows)`
    splits the rows among them, and each writes its share straight into a slot: a file in
    memory that this process maps. A slot is used again once the array read into it is
    gone, so its memory is neither zeroed nor faulted in anew for every batch. Where memory
    has no folder for slots, or no room for one, the shares come through the pipes.

    h5py serialises its calls within a process, so reading scales with processes, not
    threads; and through a pipe an array is pickled and moved 64 KB at a time: on the H100
    machine 16 processes read 30,969 rows/s but returned 1,567 rows/s that way (BENCHMARKS.md,
    GPU). The processes are forked once (not every epoch, as Keras's PyDataset
    use_multiprocessing does), each with a pipe of its own that the asking thread writes and
    reads itself: there, 16 processes handed over 36,836 rows/s that way, against 10,034
    through a ProcessPoolExecutor. Share i of every batch goes to process i, which thus
    writes the same part of a slot each time. They end with this object, or with their
    parent.
    """

    def __init__(self, path: Path, processes: int, row_shape: tuple[int, ...]):
        self.path, self.row_shape = Path(path), tuple(row_shape)
        self.row_bytes = 4 * int(np.prod(self.row_shape))
        self.folder = make_handoff_folder()
        self.slots: list[Slot] = []
        self.free_slots: deque[int] = deque()  # filled from any thread, as arrays are freed
        self.slots_lock = threading.Lock()
        # read() is called from several threads at once (PyDataset's workers, say): a batch
        # is sent while the processes still read the one before, and answered after it
        self.sending, self.turn = threading.Lock(), threading.Condition()
        self.tickets = self.answered = 0  # batches sent, batches answered
        self.lost: str | None = None  # why the processes can no longer be asked
        context = multiprocessing.get_context("fork")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.Process] = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            self.pipes.append(ours)  # before the fork: the process closes its copy of it
            process = context.Process(
                target=_serve_reads,
                args=(self.path, theirs, self.pipes, os.getpid()),
                daemon=True,
            )
            process.start()
            theirs.close()
            self.processes.append(process)
        weakref.finalize(self, _stop_readers, self.pipes, self.processes)
        if self.folder is not None:
            weakref.finalize(self, remove_folder_of, os.getpid(), self.folder)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """X[rows] as float32, (len(rows), *row_shape), for sorted unique rows. Raises
        DatasetError naming a row HDF5 cannot decode or that holds NaN or infinity,
        WorkerLost if a process died."""
        if not len(rows):
            return np.empty((0, *self.row_shape), dtype=np.float32)
        pieces = np.array_split(rows, len(self.pipes))
        starts = np.cumsum([0, *(len(piece) for piece in pieces)])[:-1]
        slot = self._free_slot(len(rows))
        slot_path = None if slot is None else self.slots[slot].path
        ended = f"a process reading {self.path} ended abruptly (killed, or out of memory?)"
        with self.sending:  # every process gets a share (maybe empty) of every batch
            if self.lost:
                raise WorkerLost(self.lost)
            ticket, self.tickets = self.tickets, self.tickets + 1
            try:
                for pipe, piece, start in zip(self.pipes, pieces, starts, strict=True):
                    pipe.send((piece, slot_path, int(start)))
            except OSError:  # its pipe closed with it
                self._lose(ended)
                raise WorkerLost(ended) from None
            except BaseException:  # Ctrl-C, say: the pipes are out of step from now on
                self._lose(f"reading a batch of {self.path} was interrupted")
                raise
        with self.turn:  # the answers come in the order the batches were sent
            try:
                self.turn.wait_for(lambda: self.answered == ticket or self.lost)
                if self.lost:
                    raise WorkerLost(self.lost)
                shares = [pipe.recv() for pipe in self.pipes]
            except (EOFError, OSError):
                self._lose(ended)
                raise WorkerLost(ended) from None
            except WorkerLost:
                raise
            except BaseException:
                self._lose(f"reading a batch of {self.path} was interrupted")
                raise
            self.answered += 1
            self.turn.notify_all()
        failed = [share for share in shares if isinstance(share, BaseException)]
        if failed:
            if slot is not None:
                self.free_slots.append(slot)
            raise failed[0]
        if slot is None:
            out = np.empty((len(rows), *self.row_shape), dtype=np.float32)
        else:
            out = self._map_slot(slot, len(rows))  # the slot is freed with the array
        for share, piece, start in zip(shares, pieces, starts, strict=True):
            if share is not None:  # came through the pipe
                out[start : start + len(piece)] = share
        return out

    def _lose(self, why: str) -> None:
        """Ask the processes no more (their pipes are out of step, or one has ended) and wake
        the threads that wait for answers; the caller raises. A slot that was being read into
        is never freed: a process may still write into it."""
        with self.turn:
            self.lost = self.lost or why
            self.turn.notify_all()

    def _free_slot(self, n_rows: int) -> int | None:
        """A slot of at least n_rows that no array uses, made where none is free (with its
        memory taken now); None where memory has no room or folder for one."""
        with self.slots_lock:
            for _ in range(len(self.free_slots)):
                slot = self.free_slots.popleft()
                if self.slots[slot].n_rows >= n_rows:
                    return slot
                self.free_slots.append(slot)
            if self.folder is None:
                return None
            path = None
            try:
                descriptor, path = tempfile.mkstemp(suffix=".rows", dir=self.folder)
                try:
                    os.posix_fallocate(descriptor, 0, n_rows * self.row_bytes)
                finally:
                    os.close(descriptor)
            except OSError:  # memory is full
                if path:
                    os.unlink(path)
                return None
            with open(path, "r+b") as file:
                mapped = mmap.mmap(file.fileno(), n_rows * self.row_bytes)
            self.slots.append(Slot(path, n_rows, mapped))
            return len(self.slots) - 1

    def _map_slot(self, slot: int, n_rows: int) -> np.ndarray:
        """The first n_rows rows of a slot as an array; the slot is free again once the
        array, and every view of it, is gone (a ctypes window on the slot's lasting map is
        the one owner that all views keep, and can be watched; a map of its own for every
        batch cost this process about 9 ms per batch of 256 chunks on the 2-core VM)."""
        window = (ctypes.c_char * (n_rows * self.row_bytes)).from_buffer(self.slots[slot].mapped)
        weakref.finalize(window, self.free_slots.append, slot)
        return np.frombuffer(window, dtype=np.float32).reshape(n_rows, *self.row_shape)


def _serve_reads(path: Path, pipe, parent_ends: list, parent: int) -> None:
    """A reader process (`RowReaders`) of the process parent: (rows, slot path, start) asked
    through pipe, answered with `_read_rows_into`'s result, or with the error met, until None
    is asked or the pipe closes."""
    start_worker(parent)
    for end in parent_ends:  # copies made by the fork: the pipe closes when RowReaders's does
        end.close()
    while True:
        try:
            asked = pipe.recv()
        except EOFError:  # its parent ended
            return
        if asked is None:
            return
        rows, slot_path, start = asked
        try:
            answer = _read_rows_into(path, rows, slot_path, start)
        except Exception as error:  # DatasetError, say: the asking process raises it
            answer = error
        try:
            pipe.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError):  # an error pickle cannot send
            pipe.send(RuntimeError(f"reading rows of {path}: {answer!r}"))


def _stop_readers(pipes: list, processes: list) -> None:
    """End the reader processes: each is asked to (processes forked since, by other
    RowReaders say, hold copies of its pipe's end here, so that its closing is not seen)."""
    for pipe in pipes:
        with contextlib.suppress(OSError):
            pipe.send(None)
        pipe.close()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


_open_files: dict[Path, h5py.Dataset] = {}  # a reader process's X of each dataset file
_slot_maps: dict[str, np.memmap] = {}  # a reader process's map of each slot


def _read_rows_into(path: Path, rows: np.ndarray, slot_path: str | None, start: int):
    """X[rows] of path, read (in a reader process) straight into the slot's rows from
    `start` on and checked (`check_finite`); returns None, or the rows themselves where
    there is no slot."""
    if path not in _open_files:
        _open_files[path] = open_dataset(path).X
    x = _open_files[path]
    out = None
    if slot_path is not None:
        if slot_path not in _slot_maps:
            _slot_maps[slot_path] = np.memmap(slot_path, dtype=np.float32, mode="r+")
        out = _slot_maps[slot_path][: (start + len(rows)) * int(np.prod(x.shape[1:]))]
        out = out.reshape(-1, *x.shape[1:])[start:]
    read = read_rows(x, rows, out)
    check_finite(read, rows, path)
    return None if out is not None else read
