"""BirdCLEF run files: write them, read them back, and validate them as the official evaluator did.

A run file has one line per (recording, species) the run returns, no header:

    MediaId;ClassId;Probability;Rank

ranks 1, 2, 3... by falling probability, at most 100 lines per recording, no duplicate
(MediaId, ClassId). The soundscape format (BirdCLEF 2017 on) has one line per class and 5 s
window instead:

    MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability

Writers stream into a temporary file beside the target and move it into place only when the
whole file is written, so a crash never leaves half a run file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.metadata import field_problem
from preprocess.paths import (
    NOT_REGULAR,
    NotText,
    current_umask,
    first_line,
    text_file,
)

MAX_RANK = 100  # the official evaluator's limit of returned species per recording
PART_SUFFIX = ".part"  # a run file being written
MAX_LINE_CHARS = 100_000  # far beyond any run file or ground-truth line
SOUNDSCAPE_SPAN = re.compile(r"\d\d+:\d\d:\d\d-\d\d+:\d\d:\d\d")


class RunFileError(ValueError):
    """A run file line the official evaluator would refuse; the message names file and line."""


def top_classes(probs: np.ndarray, top_k: int) -> np.ndarray:
    """Column indices of the top_k largest probs (n_classes,), highest first, ties by column."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
    return order[:top_k]


def looks_like_run_file(path: Path) -> bool:
    """True when path's first line is a run file line (either format): a file predict wrote."""
    line = first_line(path)
    if line is None:
        return False
    try:
        _parse_line(line)
        return True
    except ValueError:
        return is_soundscape_line(line)


def is_soundscape_line(line: str) -> bool:
    """True for a line `MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability` (a soundscape run)."""
    fields = line.split(";")
    return len(fields) == 4 and SOUNDSCAPE_SPAN.fullmatch(fields[1].strip()) is not None


def format_probabilities(probs: np.ndarray) -> list[str]:
    """probs (n,) as the run file writes them: clipped to [0, 1], 6 significant digits."""
    return [f"{p:.6g}" for p in np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0).tolist()]


def seconds_to_hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def window_span(
    window: int, last: bool, window_seconds: float, duration_s: float
) -> tuple[float, float]:
    """(start, end) seconds of soundscape window number `window` of a recording of duration_s:
    windows are window_seconds long, and the last one ends at the recording's end (it can be
    longer: `spectrogram.window_bounds` joins a short remainder to it)."""
    start = window * window_seconds
    return start, duration_s if last else min(start + window_seconds, duration_s)


def file_mode() -> int:
    """The mode a plain open() gives a new file: 0o666 less the process's umask."""
    return 0o666 & ~current_umask()


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove the temporary files that a killed writer of path left, and return them.

    Only names this module makes (`.<name>.<random>.part` beside path) are touched, only
    regular files (a link, a pipe or a device so named is left alone, never opened), and only
    those no live writer holds: a writer keeps an exclusive lock on its file until it ends,
    and the kernel releases the lock of a killed process.
    """
    removed = []
    for part in path.parent.glob(f".{glob.escape(path.name)}.*{PART_SUFFIX}"):
        if not re.fullmatch(r"[a-z0-9_]{8}", part.name[len(path.name) + 2 : -len(PART_SUFFIX)]):
            continue
        try:
            if not stat.S_ISREG(os.lstat(part).st_mode):  # a pipe would block open() forever
                continue  # a link, pipe, device or folder: not one of ours, left alone
            # no link followed, no wait for a writer, should the name change meanwhile
            handle = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with open(handle, "rb") as file:
                if not stat.S_ISREG(os.fstat(handle).st_mode):
                    continue
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                part.unlink()
            removed.append(part)
        except OSError:  # held by a running writer, or gone already
            continue
    return removed


def check_class_ids(classes: Sequence[str]) -> None:
    """ValueError unless every class id can be a run file field, once."""
    if len(set(classes)) != len(classes):
        raise ValueError("class list has duplicates")
    for class_id in classes:
        problem = field_problem(class_id)
        if problem:
            raise ValueError(f"class id {class_id!r} {problem}")


def read_classes(path: Path) -> tuple[list[str], dict[str, str]]:
    """A run folder's classes.json: (class ids, {class id: display name}).

    ValueError naming the file where it is not one: not a regular file (/dev/zero would be
    read without end), not JSON, or ids a run file cannot hold, names that are not text.
    """
    if not path.is_file():
        raise ValueError(f"{path}: not a file (a run folder's classes.json)")
    try:
        class_info = json.loads(path.read_bytes())
        if not isinstance(class_info, dict):
            raise ValueError("not a JSON object")
        classes, class_names = class_info["classes"], class_info.get("class_names", {})
        if not (isinstance(classes, list) and isinstance(class_names, dict)):
            raise ValueError("classes must be a list, class_names a mapping")
        if not all(isinstance(class_id, str) for class_id in classes):
            raise ValueError("classes must be a list of class ids (text)")
        check_class_ids(classes)
        for class_id, name in class_names.items():
            if not isinstance(name, str):
                raise ValueError(f"class_names[{class_id!r}] is {name!r}, not text")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        if isinstance(error, KeyError):
            error = f"no {error}"
        raise ValueError(f"{path}: not a run folder's classes.json ({error})") from None
    return classes, dict(class_names)


def check_media_id(media_id: str) -> None:
    """ValueError unless media_id can be a run file field."""
    problem = field_problem(media_id)
    if problem:
        raise ValueError(f"MediaId {media_id!r} {problem}")


def open_part_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside path, for writing path atomically: (descriptor, name).

    Named `.<name>.<random>.part`, locked while the descriptor is open (so a later
    `remove_stale_parts` knows it is alive), with the mode a plain open() would give path.
    Temporary files of killed writers of the same path are removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    handle = name = None  # the file, and what it is called now
    try:  # under a name `remove_stale_parts` does not match, given the .part one once
        # locked: another writer of path, clearing up, never sees it unlocked
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
        fcntl.flock(handle, fcntl.LOCK_EX)
        temp_name = name[: -len(".new")] + PART_SUFFIX
        os.rename(name, temp_name)
        name = temp_name
        os.fchmod(handle, file_mode())  # mkstemp makes 0600 whatever the umask
    except BaseException as error:
        if handle is not None:
            os.close(handle)
            with contextlib.suppress(OSError):
                os.unlink(name)
        if isinstance(error, OSError):  # named after the file asked for, not the temporary one
            raise type(error)(error.errno, error.strerror, str(path)) from error
        raise
    return handle, name


def as_text_cell(text: str) -> str:
    """text as a spreadsheet shows it, never as a formula: a cell that begins with = + - @, a
    tab or a carriage return (a file named '=HYPERLINK(...).wav', say) gets a leading
    apostrophe, as OWASP advises for CSV files people open in a spreadsheet."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class AtomicWriter:
    """Text lines (or bytes, with binary) into a temporary file, moved onto path on a clean
    close, removed on error (in the body, or in the move itself: a folder at path, a full
    disk).

    The file gets the mode a plain open() would give it (the umask decides); temporary files
    of killed writers of the same path are removed first (`open_part_file`).
    """

    def __init__(self, path: str | os.PathLike, binary: bool = False):
        self.path = Path(path)
        handle, self._temp_name = open_part_file(self.path)
        text = {} if binary else {"encoding": "utf-8", "newline": "\n"}
        self.file = os.fdopen(handle, "wb" if binary else "w", **text)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        with self.file:  # closed (and its lock released) only once it is in place or gone
            if error_type is not None:
                os.unlink(self._temp_name)
                return
            try:
                self.file.flush()
                os.replace(self._temp_name, self.path)
            except BaseException as failure:  # a full disk, a folder at path: no file left
                os.unlink(self._temp_name)
                if isinstance(failure, OSError):  # named after path, not the temporary file
                    raise type(failure)(failure.errno, failure.strerror, str(self.path)) from None
                raise


class RunFileWriter(AtomicWriter):
    """Writes `MediaId;ClassId;Probability;Rank` lines, top_k classes per recording.

    with RunFileWriter(path, classes, top_k=100) as run:
        run.write(media_id, probs)   # probs (n_classes,), column order of classes
    """

    def __init__(self, path, classes: Sequence[str], top_k: int = MAX_RANK):
        if not 1 <= top_k <= MAX_RANK:
            raise ValueError(f"top_k must be 1..{MAX_RANK} (the official limit), got {top_k}")
        check_class_ids(classes)
        super().__init__(path)
        self.classes = list(classes)
        self.top_k = top_k
        self._media_ids: set[str] = set()

    def write(self, media_id: str, probs: np.ndarray) -> None:
        if len(probs) != len(self.classes):
            raise ValueError(f"{len(probs)} probabilities for {len(self.classes)} classes")
        check_media_id(media_id)
        if media_id in self._media_ids:
            raise ValueError(f"MediaId {media_id!r} written twice to {self.path}")
        self._media_ids.add(media_id)
        columns = top_classes(probs, self.top_k)
        ranked = zip(columns.tolist(), format_probabilities(probs[columns]), strict=True)
        self.file.write(
            "".join(
                f"{media_id};{self.classes[column]};{probability};{rank}\n"
                for rank, (column, probability) in enumerate(ranked, 1)
            )
        )


class SoundscapeWriter(AtomicWriter):
    """Writes `MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability`, top_k classes per window.

    with SoundscapeWriter(path, classes, window_seconds=5) as run:
        run.write(media_id, window_probs, duration_s)   # window_probs (n_windows, n_classes)
    The last window ends at the recording's end (duration_s; `window_span`).
    """

    def __init__(
        self, path, classes: Sequence[str], top_k: int = MAX_RANK, window_seconds: float = 5.0
    ):
        check_class_ids(classes)
        super().__init__(path)
        self.classes = list(classes)
        self.top_k = top_k
        self.window_seconds = window_seconds

    def write(self, media_id: str, window_probs: np.ndarray, duration_s: float) -> None:
        check_media_id(media_id)
        for window, probs in enumerate(window_probs):
            last = window == len(window_probs) - 1
            start, end = window_span(window, last, self.window_seconds, duration_s)
            # in whole seconds, a window at least one long (a clip under half a second is one)
            end = max(round(end), round(start) + 1)
            span = f"{seconds_to_hms(start)}-{seconds_to_hms(end)}"
            columns = top_classes(probs, self.top_k)
            ranked = zip(columns.tolist(), format_probabilities(probs[columns]), strict=True)
            self.file.write(
                "".join(
                    f"{media_id};{span};{self.classes[column]};{probability}\n"
                    for column, probability in ranked
                )
            )


@dataclass(frozen=True)
class RunEntry:
    media_id: str
    class_id: str
    probability: float
    rank: int


def read_run_file(path: str | os.PathLike) -> list[RunEntry]:
    """Read and validate a run file; raises RunFileError naming the first bad line.

    Checks, as the official evaluator did: 4 fields separated by ';', a probability in [0, 1],
    an integer rank, each recording's ranks 1, 2, 3... in file order and at most MAX_RANK, no
    duplicate (MediaId, ClassId). Blank lines are ignored, and so is a byte-order mark. A file
    that is not UTF-8 text (a binary file given by mistake) or a soundscape run file (its lines
    hold no rank to score) is a RunFileError too.
    """
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):  # a pipe: read without end
        raise RunFileError(f"{path}: {NOT_REGULAR}, so not a run file")
    try:
        return _read_entries(path)
    except NotText as error:
        raise RunFileError(f"{error}, or not a run file") from None


def text_lines(file, path: Path, max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a text file, a RunFileError for one longer than max_chars: a binary file
    or /dev/zero given by mistake is named instead of read into memory without end."""
    for number, line in enumerate(iter(lambda: file.readline(max_chars + 1), ""), 1):
        if len(line) > max_chars:
            raise RunFileError(f"{path} line {number}: over {max_chars} characters, not text")
        yield line


def _read_entries(path: Path) -> list[RunEntry]:
    entries: list[RunEntry] = []
    last_rank: dict[str, int] = {}
    pairs: set[tuple[str, str]] = set()
    # a byte-order mark is dropped (as preprocess/metadata.read_csv does), not read into the
    # first MediaId; UTF-16 and UTF-32 are read where such a mark says so
    with text_file(path) as file:
        for number, line in enumerate(text_lines(file, path), 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path} line {number}"
            try:
                entry = _parse_line(line)
            except ValueError as reason:
                if is_soundscape_line(line):  # named, not taken for a bad probability
                    raise RunFileError(
                        f"{where}: a soundscape run file (MediaId;hh:mm:ss-hh:mm:ss;ClassId;"
                        "Probability) has no ranks and cannot be scored: only run files "
                        f"MediaId;ClassId;Probability;Rank can: {line!r}"
                    ) from None
                raise RunFileError(f"{where}: {reason}: {line!r}") from None
            expected = last_rank.get(entry.media_id, 0) + 1
            if entry.rank != expected:
                raise RunFileError(
                    f"{where}: rank {entry.rank} for MediaId {entry.media_id}, expected "
                    f"{expected} (ranks must run 1, 2, 3... per recording): {line!r}"
                )
            if entry.rank > MAX_RANK:
                raise RunFileError(
                    f"{where}: rank {entry.rank} for MediaId {entry.media_id} is over "
                    f"the limit of {MAX_RANK} species per recording"
                )
            if (entry.media_id, entry.class_id) in pairs:
                raise RunFileError(
                    f"{where}: duplicate pair MediaId {entry.media_id}, ClassId {entry.class_id}"
                )
            last_rank[entry.media_id] = entry.rank
            pairs.add((entry.media_id, entry.class_id))
            entries.append(entry)
    if not entries:
        raise RunFileError(f"{path}: empty run file")
    return entries


DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _parse_line(line: str) -> RunEntry:
    """One run file line as a RunEntry; ValueError saying what is wrong with it."""
    fields = line.split(";")
    if len(fields) != 4:
        raise ValueError(f"{len(fields)} fields, expected 4 (MediaId;ClassId;Probability;Rank)")
    media_id, class_id, probability_text, rank_text = (field.strip() for field in fields)
    if not media_id or not class_id:
        raise ValueError("empty MediaId or ClassId")
    # ASCII numbers only: Python's float() and int() also take '0.0_5' or Arabic-Indic digits,
    # which other tools reading the file would not
    if not DECIMAL.fullmatch(probability_text):
        raise ValueError(f"probability {probability_text!r} is not a number")
    probability = float(probability_text)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability {probability_text} is outside [0, 1]")
    if not INTEGER.fullmatch(rank_text):
        raise ValueError(f"rank {rank_text!r} is not an integer")
    return RunEntry(media_id, class_id, probability, int(rank_text))
