"""Shared fixtures: paths to the real recordings beside the checkout (skipped when absent),
a lock held by another process, and the training tests' easy dataset and tiny model file."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, write_easy_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real recordings); tests using it skip on a clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real recordings not found at {SHARED_DATA} (present only beside a CI checkout)"
        )
    return SHARED_DATA


HOLD_LOCK = """
import fcntl, os, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)  # as filelock takes it
lock.write(f"{os.getpid()}\\n")
lock.flush()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def lock_held_elsewhere():
    """Call with a lock file path: another process holds the lock (as a running
    load_data.py or train_model.py would) until the test ends. Returns its pid."""
    holders = []

    def hold(path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout.readline().strip() == "locked"
        return holder.pid

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "easy.h5"
    write_easy_dataset(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "model-Tiny.py"
    path.write_text(TINY_MODEL)
    return path
