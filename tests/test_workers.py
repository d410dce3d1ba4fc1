"""The worker processes: results in order, a worker's death said, chunks handed over, rows
read together by reader processes."""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from preprocess import workers as workers_module
from preprocess.workers import (
    HANDOFF_PREFIX,
    IN_FLIGHT_PER_WORKER,
    MEMORY_FOLDER,
    OWNER_NAME,
    FileChunks,
    RowReaders,
    SlotMaps,
    WorkerLost,
    hand_over,
    handoff_folder,
    make_handoff_folder,
    remove_folder_of,
    run_in_workers,
    tasks_of,
)
from tests.helpers import still_running


def square_or_die(number: int) -> int:
    if number == 13:
        os._exit(9)  # as the out-of-memory killer ends a process
    return number * number


def first(task: tuple) -> str:
    return f"extracting {task[0]}"


def test_tasks_group_short_items_up_to_a_size_a_count_and_a_share_of_the_items():
    items = list("abcdefghijkl")
    seconds = [10, 10, 10, 10, 10, 10, 100, 5, 5, 5, 5, 5]
    tasks = tasks_of(items, seconds, workers=1, most_size=30, most_items=16)
    assert tasks == [list("abc"), list("def"), ["g"], list("hij"), list("kl")]  # 3: 12 / 4
    tasks = tasks_of(items, seconds, workers=1, most_size=60, most_items=2)
    assert [len(task) for task in tasks] == [2, 2, 2, 1, 2, 2, 1]
    assert tasks_of(items, seconds, workers=8, most_size=60, most_items=16) == [[i] for i in items]
    assert tasks_of([], [], workers=2, most_size=60, most_items=16) == []


@pytest.mark.parametrize("method", [None, "fork", "spawn", "forkserver"])
def test_results_come_in_the_tasks_order_a_bounded_number_ahead(method):
    """With every start method (forkserver is Python 3.14's default on Linux): a worker's
    parent process is then the fork server, not the process that asked for it."""
    context = multiprocessing.get_context(method) if method else None
    results = run_in_workers(square_or_die, ((n,) for n in range(20, 60)), 2, first, context)
    assert list(results) == [n * n for n in range(20, 60)]


def pid_and_arguments(*arguments) -> tuple:
    return os.getpid(), arguments


def test_one_worker_runs_the_tasks_here_as_they_are_consumed():
    """No process is started for one worker; a hand-off slot is None (nothing to hand)."""
    results = run_in_workers(pid_and_arguments, [(1,), (2,)], 1, first, handoff=True)
    assert list(results) == [(os.getpid(), (1, None)), (os.getpid(), (2, None))]
    assert list(run_in_workers(pid_and_arguments, [(3,)], 1, first)) == [(os.getpid(), (3,))]


def test_a_worker_that_dies_is_one_error_naming_a_task_in_flight():
    results = run_in_workers(square_or_die, ((n,) for n in range(10, 20)), 2, first)
    done = []
    with pytest.raises(WorkerLost, match=r"ended abruptly .* while extracting 1[0-3] or a file"):
        for result in results:
            done.append(result)
    assert done == [n * n for n in range(10, 10 + len(done))] and len(done) <= 3


def pieces(*lengths: int) -> list[np.ndarray]:
    rng = np.random.default_rng(len(lengths))
    return [rng.standard_normal((n, 4, 6)).astype(np.float32) for n in lengths]


def assert_same_pieces(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for got_piece, want_piece in zip(got, want, strict=True):
        assert got_piece.dtype == want_piece.dtype and np.array_equal(got_piece, want_piece)


def test_chunks_handed_over_in_a_slot_come_back_equal_and_the_slot_is_kept(tmp_path):
    """A slot keeps its size (its pages are written again, not allocated anew), and this
    process maps it anew only when it grows."""
    slot, maps = str(tmp_path / "slot"), SlotMaps()
    sent = pieces(3, 0, 5, 1)
    handed = hand_over(sent, slot)
    assert isinstance(handed, FileChunks) and handed.shape == (9, 4, 6)
    taken = maps.received(handed)
    assert_same_pieces(taken, sent)
    assert not taken[0].flags.writeable
    size, first_map = os.path.getsize(slot), maps.maps[slot]
    fewer = pieces(2)
    assert_same_pieces(maps.received((hand_over(fewer, slot), 7.5))[0], fewer)
    assert os.path.getsize(slot) == size and maps.maps[slot] is first_map
    more = pieces(4, 8)
    assert_same_pieces(maps.received(hand_over(more, slot)), more)
    assert maps.maps[slot] is not first_map and os.path.getsize(slot) == 12 * 4 * 6 * 4
    np.testing.assert_array_equal(taken[0], more[0][:3])  # the first views show the slot now
    assert list(tmp_path.iterdir()) == [tmp_path / "slot"]


def test_without_a_usable_slot_the_chunks_go_as_they_are(tmp_path):
    sent = pieces(2, 3)
    assert hand_over(sent, None) is sent
    assert hand_over(sent, str(tmp_path / "gone" / "slot")) is sent  # as when memory is full
    failing_after = iter([True, False])

    def pwrite_until_full(descriptor, data, offset):
        if next(failing_after):
            return real_pwrite(descriptor, data, offset)
        raise OSError(28, "No space left on device")

    real_pwrite = os.pwrite
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "pwrite", pwrite_until_full)
        assert hand_over(sent, str(tmp_path / "full")) is sent
    assert (tmp_path / "full").stat().st_size == 0  # what was written is given back
    empty, no_bytes = pieces(0, 0), [np.zeros((3, 0, 6), np.float32)]
    assert hand_over(empty, str(tmp_path / "slot")) is empty
    assert hand_over(no_bytes, str(tmp_path / "slot")) is no_bytes  # an empty file cannot map
    assert not (tmp_path / "slot").exists()  # nothing to write: no slot made
    assert SlotMaps().received((sent, "why")) == (sent, "why")


def pieces_in_slot(n: int, slot: str | None) -> tuple[FileChunks | list[np.ndarray], int]:
    return hand_over(pieces(*range(1, n + 2)), slot), n


def test_run_in_workers_hands_chunks_over_in_as_many_slots_as_tasks_in_flight():
    tasks = 12
    before = set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}{os.getpid()}-*"))
    results = run_in_workers(pieces_in_slot, ((n,) for n in range(tasks)), 2, first, handoff=True)
    for n, (got, number) in enumerate(results):
        assert number == n
        assert_same_pieces(got, pieces(*range(1, n + 2)))
        (folder,) = set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}{os.getpid()}-*")) - before
        assert 1 <= len(list(folder.glob("slot-*"))) <= 2 * IN_FLIGHT_PER_WORKER
    assert set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}{os.getpid()}-*")) == before


def test_the_handoff_folder_is_removed_and_killed_runs_folders_too(tmp_path):
    """Only folders that no process uses: a process of another container sharing /dev/shm
    has a pid that means nothing here, but holds its folder's lock."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = ended.stdout.strip()
    killed_run = tmp_path / f"{HANDOFF_PREFIX}{dead}-abc"
    running = tmp_path / f"{HANDOFF_PREFIX}{os.getppid()}-def"  # pytest's parent: alive
    other_container = tmp_path / f"{HANDOFF_PREFIX}{dead}-ghi"
    not_ours = tmp_path / f"{HANDOFF_PREFIX}{dead}-jkl"  # no lock file: left alone
    for folder in (killed_run, running, other_container, not_ours):
        folder.mkdir()
        (folder / "x.chunks").write_bytes(b"left")
    for folder in (killed_run, running, other_container):
        (folder / OWNER_NAME).write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(other_container / OWNER_NAME)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with handoff_folder(tmp_path) as folder:
            assert folder is not None and os.path.basename(folder).startswith(
                f"{HANDOFF_PREFIX}{os.getpid()}-"
            )
            (tmp_path / folder / "left.chunks").write_bytes(b"not taken")
            assert not killed_run.exists() and running.exists() and other_container.exists()
    finally:
        holder.kill()
        holder.wait()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([running.name, other_container.name, not_ours.name])
    with handoff_folder(tmp_path):  # the other container's run has ended now
        assert not other_container.exists() and not_ours.exists()


def test_no_handoff_folder_where_memory_has_none(tmp_path):
    with handoff_folder(tmp_path / "no such folder") as folder:
        assert folder is None
    assert workers_module.MEMORY_FOLDER.name == "shm"


def test_row_readers_read_what_one_process_reads_with_or_without_memory_files(
    tmp_path, monkeypatch
):
    path = tmp_path / "rows.h5"
    x = np.random.default_rng(0).standard_normal((30, 4, 6, 1)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("X", data=x, chunks=(1, 4, 6, 1))
    x_of = lambda path: SimpleNamespace(X=h5py.File(path, "r")["X"])  # noqa: E731
    monkeypatch.setattr(workers_module, "open_dataset", x_of)  # a bare X: no dataset around it
    rows = np.array([0, 1, 2, 7, 8, 20, 29])
    readers = RowReaders(path, 3, (4, 6, 1))
    assert Path(readers.folder).parent == workers_module.MEMORY_FOLDER
    for some in (rows, rows[:2], rows[:0]):
        np.testing.assert_array_equal(readers.read(some), x[some])
    held = readers.read(rows)[1:]  # a view keeps its slot in use
    np.testing.assert_array_equal(readers.read(rows[3:]), x[rows[3:]])
    assert len(readers.slots) == 2
    np.testing.assert_array_equal(held, x[rows[1:]])  # not overwritten
    del held
    np.testing.assert_array_equal(readers.read(rows), x[rows])
    assert len(readers.slots) == 2 and len(list(Path(readers.folder).glob("*.rows"))) == 2
    monkeypatch.setattr(workers_module, "make_handoff_folder", lambda: None)
    piped = RowReaders(path, 2, (4, 6, 1))  # where memory has no folder: through the pipe
    np.testing.assert_array_equal(piped.read(rows), x[rows])
    assert piped.slots == []


class InterruptedOnce:
    """A reader's pipe whose next recv is interrupted (Ctrl-C), as the answer is awaited."""

    def __init__(self, pipe):
        self.pipe, self.interrupted = pipe, False

    def send(self, message):
        self.pipe.send(message)

    def close(self):
        self.pipe.close()

    def recv(self):
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return self.pipe.recv()


def test_row_readers_interrupted_mid_batch_refuse_to_read_out_of_step(tmp_path, monkeypatch):
    """After a batch whose answers were not all taken (Ctrl-C), the next answers would belong
    to the batch before: the readers say so rather than hand over wrong rows."""
    path = tmp_path / "rows.h5"
    x = np.random.default_rng(1).standard_normal((12, 2, 3, 1)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("X", data=x, chunks=(1, 2, 3, 1))
    x_of = lambda path: SimpleNamespace(X=h5py.File(path, "r")["X"])  # noqa: E731
    monkeypatch.setattr(workers_module, "open_dataset", x_of)
    readers = RowReaders(path, 2, (2, 3, 1))
    rows = np.array([1, 4, 5, 9])
    np.testing.assert_array_equal(readers.read(rows), x[rows])
    readers.pipes[0] = InterruptedOnce(readers.pipes[0])
    with pytest.raises(KeyboardInterrupt):
        readers.read(rows)
    with pytest.raises(WorkerLost, match=r"reading a batch of .*rows.h5 was interrupted"):
        readers.read(rows[:2])


def test_only_the_process_that_made_a_folder_removes_it(tmp_path):
    """A forked reader process that drops its copy of the batches leaves their folder."""
    folder = make_handoff_folder(tmp_path)
    remove_folder_of(os.getppid(), folder)
    assert os.path.isdir(folder)
    remove_folder_of(os.getpid(), folder)
    assert not os.path.exists(folder)


SLOW_START_SCRIPT = """
import multiprocessing, os, signal, sys, threading, time
from pathlib import Path
if __name__ == "__mp_main__":  # a spawned worker importing this file: slow, as a real import
    with open(sys.argv[1], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    time.sleep(2)
sys.path.insert(0, sys.argv[2])
from preprocess.workers import run_in_workers

def task(number):
    return number

if __name__ == "__main__":
    results = run_in_workers(task, [(n,) for n in range(8)], 2, str,
                             multiprocessing.get_context("spawn"))
    threading.Thread(target=next, args=(results,), daemon=True).start()  # workers start
    time.sleep(1)  # they are still importing this file
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_killed_parent_during_their_start_end_too(tmp_path):
    script, pids = tmp_path / "slow_start.py", tmp_path / "pids.txt"
    script.write_text(SLOW_START_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, script, pids, root], timeout=60)
    time.sleep(2.5)  # their imports done, they run their initializer after the parent died
    workers = [int(pid) for pid in pids.read_text().split()]
    assert len(workers) == 2
    assert still_running(workers, seconds=10) == []
