"""Output paths that never destroy an input: one check shared by every command, the file
helpers every command writes, lists and names files through (`replace_atomically`,
`write_text_atomically`, `files_under`, `shown_name`), and the lock of a run's output
(`exclusive_run`).

A command refuses to write to a path that is one of its inputs (or a link to one), a folder,
or an existing file of another kind than the command writes: `predict.py --out clips/x.wav`
must not replace a recording, `evaluate.py --json RUN.csv` the run file it scores. A file of
the command's own kind (a run file for predict, an HDF5 file for load_data) or an empty file
may be replaced: that is what rerunning a command, or `--overwrite`, is for. Each command
says what its own kind looks like with a small predicate on the file's first bytes.
"""

from __future__ import annotations

import codecs
import errno
import glob
import json
import os
import re
import secrets
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

import filelock

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SNIFF_BYTES = 64 * 1024  # enough for a first line or a small JSON file


# why an entry named like an input is skipped: reading a pipe waits for a writer forever
NOT_REGULAR = "not a regular file (a pipe, a device or a broken link)"


class OutputPathError(ValueError):
    """An output path that would destroy an input or a file of another kind."""


def same_file(a: Path, b: Path) -> bool:
    """True when a and b are the same file (through links too), or resolve to one path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def check_output(
    path: Path,
    *,
    own_kind: Callable[[Path], bool],
    kind: str,
    inputs: Iterable[Path] = (),
    option: str = "--out",
) -> None:
    """Raise OutputPathError when writing `path` could destroy something not the command's.

    own_kind(path) says whether an existing file is one the command writes (`kind` names it,
    with its article, in the message); inputs are the files the command reads (and outputs
    already claimed by another option, so two options cannot name one file).
    """
    for source in inputs:
        if same_file(path, source):
            raise OutputPathError(
                f"{option} {path} is also an input ({source}): choose another path"
            )
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder: give a file name")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{option} {path} exists and is not a regular file")
    if path.is_file() and path.stat().st_size > 0 and not own_kind(path):
        raise OutputPathError(
            f"{option} {path} exists and is not {kind}: it is left alone (remove it yourself "
            "or choose another path)"
        )


def current_umask() -> int:
    """The process's umask, which decides the mode of what it creates."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return umask


def is_own_file(path: Path) -> bool:
    """A regular file, not a symbolic link to one (a hard link counts: `has_one_name`)."""
    return path.is_file() and not path.is_symlink()


def has_one_name(status: os.stat_result) -> bool:
    """Whether a stat (os.lstat, os.fstat) is of a regular file with no other name: writing
    it changes no file that another name, a hard link, stands for."""
    return stat.S_ISREG(status.st_mode) and status.st_nlink == 1


def first_bytes(path: Path, size: int = SNIFF_BYTES) -> bytes:
    """The first size bytes of a file; b"" when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


# byte-order marks of the Unicode encodings other than UTF-8 that editors and spreadsheets
# save text in (Windows "Unicode", Excel's "Unicode Text"); UTF-32's before UTF-16's, whose
# little-endian mark starts UTF-32's
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class NotText(ValueError):
    """A file given as text that is none this code reads (`text_file`): NUL bytes, or bytes
    its encoding cannot hold; the message names it and says what to do."""


def text_encoding(path: Path) -> str:
    """The encoding to read a text file with: UTF-16 or UTF-32 where it starts with their
    byte-order mark, else UTF-8 without a byte-order mark it may start with ('utf-8-sig').
    NotText for a file whose start is a tenth or more NUL bytes, as UTF-16 without its mark
    (half of ASCII's bytes) or no text is (a stray NUL is left to the reader to name)."""
    head = first_bytes(path)
    encoding = next((name for mark, name in BYTE_ORDER_MARKS if head.startswith(mark)), None)
    if encoding is None and head.count(0) * 10 >= len(head) > 0:
        raise NotText(
            f"{path}: not UTF-8 text (it holds NUL bytes, as UTF-16 text without a byte-order "
            "mark or a file that is no text does): save it as UTF-8"
        )
    return encoding or "utf-8-sig"


def not_utf8(error: UnicodeDecodeError) -> str:
    """What to say of a text file that the encoding `text_encoding` chose could not read."""
    if error.encoding.startswith("utf-8"):
        byte = error.object[error.start]
        return (
            f"not UTF-8 text (it holds byte 0x{byte:02x} where UTF-8 cannot, as text saved as "
            "Windows-1252 or Latin-1 does, or a file that is no text): save text as UTF-8"
        )
    return f"not {error.encoding.upper()} text, though it starts as such ({error.reason})"


@contextmanager
def text_file(path: Path) -> Iterator[IO[str]]:
    """path open for reading as text in the encoding `text_encoding` finds (UTF-8 without a
    byte-order mark it may start with, or UTF-16 or UTF-32 with theirs). NotText, saying what
    to do, for a file that is mostly NUL bytes, or that the block finds undecodable."""
    encoding = text_encoding(path)
    try:
        with open(path, encoding=encoding) as file:
            yield file
    except UnicodeDecodeError as error:
        raise NotText(f"{path}: {not_utf8(error)}") from None


IGNORED_FOLDER = "__MACOSX"  # a Mac zip's resource forks (`._<name>`), never recordings


def is_ignored(relative: PurePosixPath) -> bool:
    """True for a path (relative to a data folder) through a hidden entry (`.x`, a Mac's `._x`
    copy, a `.x.part` being written) or a Mac zip's __MACOSX: never a recording to read."""
    return any(part.startswith(".") or part == IGNORED_FOLDER for part in relative.parts)


def is_mac_copy(relative: PurePosixPath) -> bool:
    """True for a path (relative to a data folder) under a Mac zip's __MACOSX or named `._x`:
    the resource fork a Mac writes beside a file, never audio, whatever its name says."""
    return relative.name.startswith("._") or IGNORED_FOLDER in relative.parts


def first_line(path: Path) -> str | None:
    """The first non-blank line of a text file, stripped; None for a binary or unreadable file."""
    head = first_bytes(path)
    if b"\0" in head:
        return None
    text = head.decode("utf-8", errors="ignore")
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


def is_hdf5(path: Path) -> bool:
    return first_bytes(path, len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def is_json_with(path: Path, key: str) -> bool:
    """True for a (small) JSON object holding key: a results file a command wrote."""
    head = first_bytes(path)
    try:
        document = json.loads(head)
    except ValueError:  # not JSON, or larger than any file of this kind
        return False
    return isinstance(document, dict) and key in document


def is_zip_with(path: Path, member: str) -> bool:
    """True for a zip archive holding member (an .npz of numpy arrays, say), not any zip: a
    .keras model is a zip too."""
    try:
        with zipfile.ZipFile(path) as archive:
            return member in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def partial_name(path: Path) -> Path:
    """A new name beside path to fill before renaming it to path: hidden, unique to this
    process and call (`is_partial_of` recognises it), for a file or folder to be created
    exclusively, so that nothing already there, a user's or a link, is ever written."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


def replace_atomically(path: Path, write: Callable[[IO], None], mode: str) -> None:
    """Fill path through write(file), whole or not at all: a new file beside it, opened with
    `mode` ("w": UTF-8 text, or "wb"), is filled and renamed over path. Its name is unique
    and it is created exclusively (with the umask's mode, like any file), so two processes
    never share it and no file but path is ever replaced."""
    temporary = partial_name(path)
    text = "b" not in mode  # UTF-8 text; csv writes its own line ends
    encoding, newline = ("utf-8", "") if text else (None, None)
    # opened before the try: were the name taken, the cleanup would remove another's file
    exclusive = mode.replace("w", "x")
    file = open(temporary, exclusive, encoding=encoding, newline=newline)  # noqa: SIM115
    try:
        with file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """path.write_text(text) in UTF-8, whole or not at all (`replace_atomically`): a kill or
    a full disk never leaves a run file cut short."""
    replace_atomically(path, lambda file: file.write(text), "w")


def is_partial_of(name: str, target: str, suffix: str = "") -> bool:
    """Whether a file name is one that `partial_name` gives for `target` (then suffix, as
    Keras wants its own: `train/saved_model.save_atomically`): a temporary file of a write
    that a kill cut short. Exactly that form, so `.OUT.old.<pid>-...` is not OUT's."""
    form = rf"\.{re.escape(target)}\.\d+-[0-9a-f]{{8}}\.partial{re.escape(suffix)}"
    return re.fullmatch(form, name) is not None


def process_exists(pid: int) -> bool:
    """Whether process pid runs: a zombie (ended, not yet reaped) does not, nor a number no
    process can have (0 names a process group to os.kill)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none; a number beyond any pid
        return False
    except PermissionError:  # another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:  # "pid (name) state ..."
            return status.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (not Linux), or gone meanwhile
        return True


def partials_of(path: Path, suffix: str = "") -> list[Path]:
    """The files beside path that writes of it cut short by a kill leave: named as
    `partial_name` names them (then suffix), `is_partial_of` exactly."""
    pattern = f".{glob.escape(path.name)}.*.partial{glob.escape(suffix)}"
    return [
        each for each in path.parent.glob(pattern) if is_partial_of(each.name, path.name, suffix)
    ]


def remove_partials(path: Path, suffix: str = "", locked: bool = True) -> None:
    """Remove the files that writes of path a kill cut short left beside it, named as
    `partial_name` names them (then suffix: `train/saved_model.save_atomically`): a link among
    them too, never what it points to. locked: the caller holds the lock of path's writers,
    so every such file is a kill's; without it, one whose writer (the pid in its name) runs,
    and is not this process, is another writer's in progress, and stays."""
    for leftover in partials_of(path, suffix):
        writer = int(leftover.name[len(path.name) + 2 :].split("-")[0])
        in_progress = not locked and writer != os.getpid() and process_exists(writer)
        if not in_progress and (leftover.is_symlink() or leftover.is_file()):
            leftover.unlink()


def files_under(root: Path) -> list[Path]:
    """Every non-folder entry under root, sorted by path. Links to folders are followed (Path.rglob
    does not before Python 3.13), each folder walked once so that a link loop ends."""
    found, walked = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        if os.path.realpath(folder) in walked:  # a link to a folder already walked (a loop)
            subfolders.clear()
            continue
        walked.add(os.path.realpath(folder))
        subfolders.sort()  # which of two links to one folder counts: the same every time
        found += [Path(folder, name) for name in files]
    return sorted(found)


def first_names(names: Sequence[str], shown: int = 5) -> str:
    """The first `shown` names, and how many more there are: 'a, b, ... (3 more)'."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def shown_name(name: str) -> str:
    """A file name to print on one line: quoted (escapes and all) when it holds a newline or
    other character that is not printable."""
    return name if name.isprintable() else repr(name)


class RunLocked(Exception):
    """Another process is writing the same output; the message says which."""


@contextmanager
def exclusive_run(lock_path: Path, output: str) -> Iterator[None]:
    """Hold an exclusive lock on lock_path while this process writes `output`.

    Two runs writing the same shards or run folder would corrupt each other, so the second
    one raises RunLocked (naming the first one's pid) instead. `filelock` takes an flock on
    the file, released when the process ends, even by kill -9, and dropped in forked worker
    processes. The lock file stays: removing it would race (a later run locking the removed
    inode while a third locks a new one).
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)

    def write_pid(fd: int) -> None:
        # filelock opens no link, but a hard link is the file it names: never write another
        # file's content (raising here releases the lock and leaves the file as it is)
        status = os.fstat(fd)
        if not has_one_name(status):
            raise OSError(
                errno.EEXIST,
                "the lock file is not a file of its own (a hard link, as a folder copied "
                "with cp -al shares; a device?): it is left as it is; remove it, or choose "
                "another output",
                str(lock_path),
            )
        held = os.pread(fd, 33, 0)  # the pid an earlier run wrote, or nothing
        if len(held) > 32 or (held and not held.strip().isdigit()):
            raise OSError(
                errno.EEXIST,
                "the lock file holds something other than a process id (a file of "
                "someone's of that name?): it is left as it is; move it away, or choose "
                "another output",
                str(lock_path),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    lock = filelock.FileLock(lock_path, timeout=0, on_acquired=write_pid)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            holder = lock_path.read_text(encoding="utf-8").strip() or "?"
        except OSError:
            holder = "?"
        raise RunLocked(
            f"{output} is being written by another process (pid {holder}, lock "
            f"{lock_path}): wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()
