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

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_RANK = 100  # the official evaluator's limit of returned species per recording


class RunFileError(ValueError):
    """A run file line the official evaluator would refuse; the message names file and line."""


def top_classes(probs: np.ndarray, top_k: int) -> np.ndarray:
    """Column indices of the top_k largest probs (n_classes,), highest first, ties by column."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
    return order[:top_k]


def format_probability(probability: float) -> str:
    return f"{min(max(float(probability), 0.0), 1.0):.6g}"


def seconds_to_hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class AtomicTextWriter:
    """Text lines into a temporary file, moved onto path on a clean close, removed on error."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, self._temp_name = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part"
        )
        self.file = os.fdopen(handle, "w", encoding="utf-8", newline="\n")

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.file.close()
        if error_type is None:
            os.replace(self._temp_name, self.path)
        else:
            os.unlink(self._temp_name)


class RunFileWriter(AtomicTextWriter):
    """Writes `MediaId;ClassId;Probability;Rank` lines, top_k classes per recording.

    with RunFileWriter(path, classes, top_k=100) as run:
        run.write(media_id, probs)   # probs (n_classes,), column order of classes
    """

    def __init__(self, path, classes: Sequence[str], top_k: int = MAX_RANK):
        if not 1 <= top_k <= MAX_RANK:
            raise ValueError(f"top_k must be 1..{MAX_RANK} (the official limit), got {top_k}")
        if len(set(classes)) != len(classes):
            raise ValueError("class list has duplicates")
        super().__init__(path)
        self.classes = list(classes)
        self.top_k = top_k
        self._media_ids: set[str] = set()

    def write(self, media_id: str, probs: np.ndarray) -> None:
        if len(probs) != len(self.classes):
            raise ValueError(f"{len(probs)} probabilities for {len(self.classes)} classes")
        if media_id in self._media_ids:
            raise ValueError(f"MediaId {media_id!r} written twice to {self.path}")
        self._media_ids.add(media_id)
        for rank, column in enumerate(top_classes(probs, self.top_k), 1):
            probability = format_probability(probs[column])
            self.file.write(f"{media_id};{self.classes[column]};{probability};{rank}\n")


class SoundscapeWriter(AtomicTextWriter):
    """Writes `MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability`, top_k classes per window.

    with SoundscapeWriter(path, classes, window_seconds=5) as run:
        run.write(media_id, window_probs, duration_s)   # window_probs (n_windows, n_classes)
    The last window ends at the recording's end (duration_s).
    """

    def __init__(
        self, path, classes: Sequence[str], top_k: int = MAX_RANK, window_seconds: float = 5.0
    ):
        super().__init__(path)
        self.classes = list(classes)
        self.top_k = top_k
        self.window_seconds = window_seconds

    def write(self, media_id: str, window_probs: np.ndarray, duration_s: float) -> None:
        for window, probs in enumerate(window_probs):
            start = window * self.window_seconds
            end = min(start + self.window_seconds, duration_s)
            span = f"{seconds_to_hms(start)}-{seconds_to_hms(end)}"
            for column in top_classes(probs, self.top_k):
                probability = format_probability(probs[column])
                self.file.write(f"{media_id};{span};{self.classes[column]};{probability}\n")


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
    duplicate (MediaId, ClassId). Blank lines are ignored.
    """
    path = Path(path)
    entries: list[RunEntry] = []
    last_rank: dict[str, int] = {}
    pairs: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path} line {number}"
            try:
                entry = _parse_line(line)
            except ValueError as reason:
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


def _parse_line(line: str) -> RunEntry:
    """One run file line as a RunEntry; ValueError saying what is wrong with it."""
    fields = line.split(";")
    if len(fields) != 4:
        raise ValueError(f"{len(fields)} fields, expected 4 (MediaId;ClassId;Probability;Rank)")
    media_id, class_id, probability_text, rank_text = (field.strip() for field in fields)
    if not media_id or not class_id:
        raise ValueError("empty MediaId or ClassId")
    try:
        probability = float(probability_text)
    except ValueError:
        raise ValueError(f"probability {probability_text!r} is not a number") from None
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ValueError(f"probability {probability_text} is outside [0, 1]")
    try:
        rank = int(rank_text)
    except ValueError:
        raise ValueError(f"rank {rank_text!r} is not an integer") from None
    return RunEntry(media_id, class_id, probability, rank)
