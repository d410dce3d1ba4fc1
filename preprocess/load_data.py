"""Preprocessing command: wav files + labels -> chunk dataset (HDF5) for training or prediction.

Reads the metadata (BirdCLEF XML folder, CSV, or one folder per class), applies the 2016
selections, then for every recording: read the wav (16 kHz expected; other rates are
resampled in-process), the --recipe's front end (`job_params`: the 2016 log spectrogram,
noise filter and 5 s chunks, or the modern log-mel; preprocess/spectrogram.py), compressed and
appended to the dataset (preprocess/dataset.py, which documents the layout).
A 16 kHz 16-bit mono wav over STREAM_SECONDS (10 minutes) is streamed instead of read whole.

Workers extract and compress recordings in parallel, a few files per task, and write each
task's recordings to a shard file (OUT.parts/); the parent copies each shard into OUT as it
is done, in input order, while the workers go on. OUT is complete or absent: it is written
under a temporary name and renamed at the end. Killed at any moment (even kill -9), the same
command run again skips the recordings already in shards. OUT.parts/ is used only when it is
what the command leaves there (a folder of shard files): anything else, a link above all, is
refused by name before any work, never written through, emptied or deleted. OUT is written
under a hidden name unique to the run (.OUT.<pid>-<random>.partial); such a file a kill left
is deleted by the next run.
Bad inputs (missing, empty or corrupt wavs, unusable XML) are skipped, logged and counted in
the final summary with exit status 0; fatal errors (unreadable metadata, no usable recording,
an OUT made with other settings without --overwrite) end with one line `error: ...` and exit
status 2 (preprocess/cli.py). A rerun keeps what is already extracted, in OUT or in OUT.parts/,
and extracts what is new, changed (size, modification or status-change time: a chmod
counts) or failed before, once anything changed: where nothing did, OUT is complete for its
inputs and the rerun does nothing.

    python preprocess/load_data.py --wav-dir data/wav16k --xml-dir data/xml --out data/train.h5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import shutil
import sys
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from preprocess import metadata
from preprocess.audio import AudioError, audio_seconds
from preprocess.cli import at_least, most_workers, run_command
from preprocess.dataset import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    SHARD_TEMPORARY_PATTERN,
    DatasetError,
    DatasetInfo,
    DatasetNotOpened,
    DatasetWriter,
    RecordingChunks,
    StoredChunk,
    StoredRecordings,
    atomic_dataset,
    check_parts_folder,
    complete_shards,
    compress_chunks,
    is_chunk_dataset,
    open_dataset,
    parts_folder,
    remove_parts,
    shard_path,
)
from preprocess.extract import no_sound, recording_chunks
from preprocess.metadata import MetadataError
from preprocess.params import (
    FORMAT_VERSION,
    FRONTENDS,
    MODERN,
    MODERN_CHUNK_SECONDS,
    PADDINGS,
    SpectrogramParams,
)
from preprocess.paths import (
    OutputPathError,
    RunLocked,
    check_output,
    exclusive_run,
    first_names,
    is_hdf5,
    is_ignored,
    is_own_file,
    partial_name,
    partials_of,
    shown_name,
)
from preprocess.spectrogram import check_front_end, frames_for_seconds
from preprocess.workers import WorkerLost, keep_freed_memory, run_in_workers, tasks_of

logger = logging.getLogger("load_data")

# Audio per worker task (about 17 minutes of 16 kHz wav, one file at least): short files share
# a task, whose costs (a hand-off to a worker, a shard file of about 12 ms) would otherwise
# weigh (BENCHMARKS.md). A kill -9 loses at most the tasks in flight.
BATCH_BYTES = 32 * 2**20  # of wav files per worker task at most (one file at least)
STREAM_PIECE_CHUNKS = 64  # chunks extracted at a time from a streamed recording (16 MB)
XML_BATCH = 400  # BirdCLEF XML files parsed per worker task


class LoadDataError(Exception):
    """A fatal problem with the command's inputs or output; printed without a traceback."""


# ---------------------------------------------------------------------------------------------
# Extraction (runs in the workers)


class Outcome(NamedTuple):
    """What extraction found of one recording besides its chunks (a worker reports it; the
    chunks go into the task's shard)."""

    n_chunks: int
    n_frames: int  # after the noise filter
    duration_s: float
    sample_rate: int  # of the wav file
    error: str | None  # why the file was skipped, None when it was not
    emptied: bool = False  # sound, of which the noise filter left nothing: chunks all equal


def unusable(reason: str) -> tuple[list[StoredChunk], Outcome]:
    """No chunks, and why."""
    return [], Outcome(0, 0, 0.0, 0, reason)


def extract_recording(
    path: Path, params: SpectrogramParams, compression: str
) -> tuple[list[StoredChunk], Outcome]:
    """One wav file -> (its compressed chunks, `Outcome`); an unusable file gives no chunks
    and the outcome's `error`, and so does one of digital silence (every sample zero), whose
    chunks would train a label on nothing.

    `recording_chunks` (the same as prediction's) gives the chunks STREAM_PIECE_CHUNKS at a
    time, so a streamed long recording is held as compressed chunks only.
    """
    stored: list[StoredChunk] = []
    lowest, highest = np.inf, -np.inf  # of every feature: equal where there is no sound
    try:
        recording = recording_chunks(path, params, STREAM_PIECE_CHUNKS, resample=True)
        while True:
            try:
                piece = next(recording.pieces)
            except StopIteration as end:
                n_frames = end.value  # after the noise filter
                break
            if piece.size:
                lowest, highest = min(lowest, piece.min()), max(highest, piece.max())
            stored += compress_chunks(piece, compression)
        reason = no_sound(path, features_vary=lowest < highest)
    except AudioError as error:
        return unusable(error.reason)
    if reason:
        return unusable(reason)
    emptied = params.noise_filter and not lowest < highest
    outcome = Outcome(
        len(stored), n_frames, recording.seconds, recording.sample_rate, None, emptied
    )
    return stored, outcome


class Task(NamedTuple):
    """Recordings that one worker extracts, in order, into one shard."""

    paths: list[Path]
    recordings: list[RecordingChunks]  # labels and input keys, chunks still to extract
    shard: Path


def extract_into_shard(task: Task, info: DatasetInfo) -> list[Outcome]:
    """`extract_recording` of each of the task's files (in a worker); those that could be
    read are written in order to task.shard, which exists only once complete. Writing here,
    in parallel, leaves the parent one copy of each chunk, into OUT, where the pipe or a
    hand-over cost it two more (BENCHMARKS.md)."""
    outcomes = []
    with contextlib.ExitStack() as shard:
        writer = None
        for path, recording in zip(task.paths, task.recordings, strict=True):
            try:
                chunks, outcome = extract_recording(path, info.params, info.compression)
            except Exception as error:  # a bug or resource failure: say which file triggered it
                raise RuntimeError(f"{path}: {type(error).__name__}: {error}") from None
            if outcome.error is None:
                writer = writer or shard.enter_context(atomic_dataset(task.shard, info))
                writer.append(
                    dataclasses.replace(
                        recording,
                        n_frames=outcome.n_frames,
                        duration_s=outcome.duration_s,
                        chunks=chunks,
                    )
                )
            outcomes.append(outcome)
    return outcomes


def worker_batches(paths: list[Path], workers: int) -> list[list[Path]]:
    """paths cut, in order, into worker tasks of up to BATCH_BYTES of files (`tasks_of`)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError:  # extract_recording names the problem
            sizes.append(0)
    return tasks_of(paths, sizes, workers, BATCH_BYTES, len(paths))


def extract_tasks(tasks: list[Task], info: DatasetInfo, workers: int) -> Iterator[list[Outcome]]:
    """`extract_into_shard` of every task, yielded in order.

    With several workers (`run_in_workers`), a few tasks per worker are queued or finished
    ahead of the one consumed, so memory does not depend on the number of recordings.
    """
    keep_freed_memory()  # for a run in this process; run_in_workers's workers do it too

    def first_file(arguments: tuple) -> str:
        return f"extracting {arguments[0].paths[0]}"

    arguments = ((task, info) for task in tasks)
    in_order = run_in_workers(extract_into_shard, arguments, min(workers, len(tasks)), first_file)
    with contextlib.closing(in_order):  # its workers end with the run
        yield from in_order


# ---------------------------------------------------------------------------------------------
# Labels and the job's identity


def class_table(
    recordings: list[metadata.Recording], classes_from: Path | None
) -> tuple[list[str], dict[str, str], list[metadata.Recording]]:
    """(classes, {class_id: name}, the recordings): classes from another dataset, else the
    sorted labels present. Against another dataset's classes, a label that is one of them in
    another Unicode form only is spelt as it (`labels_spelt_as`) in the recordings returned.
    Labels that differ only in case or Unicode normalisation are warned of: they are classes
    of their own (or, against another dataset's classes, none of them)."""
    if classes_from is not None:
        with open_dataset(classes_from) as other:
            classes, class_names = other.classes, other.class_names
        recordings = labels_spelt_as(recordings, classes)
    labels = {r.class_id: r.species or r.class_id for r in recordings if r.class_id is not None}
    if classes_from is None:
        classes = sorted(labels)
        class_names = {class_id: labels[class_id] for class_id in classes}
    look_alike: dict[str, set[str]] = {}
    for class_id in (*classes, *labels):
        folded = metadata.nfc(class_id).casefold()
        look_alike.setdefault(folded, set()).add(class_id)
    for same in (sorted(ids) for ids in look_alike.values() if len(ids) > 1):
        unknown = [class_id for class_id in same if class_id not in classes]
        logger.warning(
            "labels %s differ only in case or Unicode normalisation: %s (correct the labels "
            "where they mean one)",
            " and ".join(ascii(class_id) for class_id in same),
            f"{', '.join(map(ascii, unknown))} is not one of {classes_from}'s classes: its "
            "recordings are unlabelled"
            if unknown
            else f"they are {len(same)} classes",
        )
    return classes, class_names, recordings


def labels_spelt_as(
    recordings: list[metadata.Recording], classes: list[str]
) -> list[metadata.Recording]:
    """The recordings, each label (and background name) that is one of classes in another
    Unicode form spelt as that class is: --classes-from a dataset built before labels were read
    in NFC, whose classes a Mac's folder names spelt in NFD."""
    known, spelling = set(classes), {metadata.nfc(class_id): class_id for class_id in classes}

    def spelt(name: str) -> str:
        return name if name in known else spelling.get(metadata.nfc(name), name)

    return [
        dataclasses.replace(
            r,
            class_id=None if r.class_id is None else spelt(r.class_id),
            background=[spelt(name) for name in r.background],
        )
        for r in recordings
    ]


def class_index(classes: list[str], class_names: dict[str, str]) -> dict[str, int]:
    """{class id or class name: column}: BirdCLEF XMLs name background species by their
    scientific name, CSVs by their label."""
    index = {
        class_names[class_id]: i for i, class_id in enumerate(classes) if class_id in class_names
    }
    index.update({class_id: i for i, class_id in enumerate(classes)})
    return index


def label_vectors(
    recording: metadata.Recording, index: dict[str, int], n_classes: int
) -> tuple[int, np.ndarray]:
    """(class index or -1 when unlabelled or not a class, background (n_classes,) uint8 with
    the background species that are classes)."""
    background = np.zeros(n_classes, dtype=np.uint8)
    for name in recording.background:
        if name in index:
            background[index[name]] = 1
    return index.get(recording.class_id, -1) if recording.class_id else -1, background


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def recording_key(recording: metadata.Recording, path: Path) -> str:
    """What one stored recording is made from besides the settings: its labels, its group
    (where it has one: keys of recordings alone are as older versions made them) and its wav's
    size, modification and status-change times, so a wav changed (or repaired) since gets a
    new key, and so does one replaced by a file of the same size and modification time."""
    try:
        status = path.stat()
        stamp = [status.st_size, status.st_mtime_ns, status.st_ctime_ns]
    except OSError:
        stamp = None
    made_from = [recording.media_id, recording.file, recording.class_id, recording.background,
                 stamp] + ([recording.group] if recording.group else [])  # fmt: skip
    return _digest(made_from)[:32]


def settings_digest(info: DatasetInfo) -> str:
    """Hash of what every stored recording depends on: recordings stored under the same
    settings digest can be kept by a rerun, whatever else changed."""
    return _digest(
        {
            "format_version": FORMAT_VERSION,
            "params": info.params.to_json(),
            "classes": info.classes,
            "class_names": info.class_names,
            "compression": info.compression,
        }
    )


def inputs_digest(info: DatasetInfo, keys: list[str]) -> str:
    """Hash of everything the dataset's content depends on: the settings, the source and
    each selected recording's `recording_key` (wavs that failed included, so a repaired one
    is noticed)."""
    return _digest({"settings": settings_digest(info), "source": info.source, "keys": keys})


# ---------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Summary:
    recordings: int = 0
    resumed: int = 0  # recordings found in shards of an interrupted run
    chunks: int = 0
    audio_s: float = 0.0  # audio extracted by this run
    resampled: dict[int, int] = dataclasses.field(default_factory=dict)  # sample rate -> files
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    emptied: list[str] = dataclasses.field(default_factory=list)  # kept, chunks all equal
    seconds: float = 0.0

    def skip(self, reason: str, name: str) -> None:
        self.skipped[reason].append(name)

    def report(self, out: Path) -> str:
        processed = self.recordings - self.resumed
        lines = [
            f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {self.seconds:.1f} s",
            f"  recordings  {self.recordings}"
            + (f" ({self.resumed} kept from an earlier run)" if self.resumed else ""),
            f"  chunks      {self.chunks}",
            f"  audio       {self.audio_s / 3600:.3g} h extracted by this run, "
            f"{processed / max(self.seconds, 1e-9):.1f} files/s, "
            f"{self.audio_s / max(self.seconds, 1e-9):.0f} audio s/s",
        ]
        if self.resampled:
            rates = ", ".join(f"{n} at {rate} Hz" for rate, n in sorted(self.resampled.items()))
            lines.append(f"  resampled   in-process: {rates}")
        if self.emptied:
            lines.append(
                f"  emptied     {len(self.emptied)} recording(s) of which the noise filter left "
                f"nothing (kept, as in 2016: every chunk all zeros): {first_names(self.emptied)}"
            )
        total = sum(len(names) for names in self.skipped.values())
        lines.append(f"  skipped     {total} file(s)" + (":" if total else ""))
        lines += [f"    {line}" for line in self.skipped_lines()]
        return "\n".join(lines)

    def skipped_lines(self) -> list[str]:
        """'N reason: the first five names, ... (M more)' per reason a file was skipped."""
        return [
            f"{len(names):6d} {reason}: {first_names(names)}"
            for reason, names in self.skipped.items()
        ]


def parse_xml_in_workers(paths: list[Path], workers: int) -> list[metadata.Recording | str]:
    """`metadata.parse_xml_files` in `workers` processes, XML_BATCH files a task: 0.1-0.2 ms
    a file, the parent's largest cost before extraction can start (BirdCLEF's 24,607 XML
    files: about 4 s on one core)."""
    batches = [paths[start : start + XML_BATCH] for start in range(0, len(paths), XML_BATCH)]

    def first_file(task: tuple) -> str:
        return f"reading the metadata in {task[0][0]}"

    tasks, workers = ((batch,) for batch in batches), min(workers, len(batches))
    in_order = run_in_workers(metadata.parse_xml_files, tasks, workers, first_file)
    with contextlib.closing(in_order):
        return [each for batch in in_order for each in batch]


def read_metadata(args, summary: Summary) -> tuple[list[metadata.Recording], dict]:
    """The selected recordings whose wav exists, and the `source` attribute describing them."""
    messages: list[str] = []
    if args.xml_dir:
        parse_files = functools.partial(parse_xml_in_workers, workers=args.workers)
        recordings, messages = metadata.read_birdclef_xml_dir(args.xml_dir, parse_files)
        kind, where = "birdclef-xml", args.xml_dir
    elif args.csv:
        recordings, kind, where = metadata.read_csv(args.csv), "csv", args.csv
    else:
        recordings = metadata.read_class_folders(args.wav_dir)
        kind, where = "class-folders", args.wav_dir
    for message in messages:  # "PATH: why"
        summary.skip("unusable XML", message)
    present, missing, unused = metadata.match_audio(recordings, args.wav_dir)
    for recording in missing:
        reason = "XML without wav" if kind == "birdclef-xml" else "missing wav"
        wav = shown_name(str(args.wav_dir / recording.file))
        given = (recording.fields.get("file") or recording.fields.get("FileName") or "").strip()
        # the name as the metadata gives it (x.mp3, train/x.wav), beside the wav it lacks
        summary.skip(reason, f"{shown_name(given)} (no {wav})" if given else wav)
    lost = sorted({r.class_id for r in missing if r.class_id} - {r.class_id for r in present})
    if lost:
        logger.warning(
            "%d classes have no recording: the audio of each of theirs is missing from %s: %s",
            len(lost),
            args.wav_dir,
            first_names(lost, 20),
        )
    for name in unused:
        hidden = is_ignored(PurePosixPath(name))  # never a class folder's recording
        reason = "hidden file (not used)" if hidden else "wav without metadata (not used)"
        summary.skip(reason, shown_name(str(args.wav_dir / name)))

    selections = {
        "top_n": args.top_n,
        "min_quality": args.min_quality,
        "max_quality": args.max_quality,
        "no_background": args.no_background,
    }
    selected = metadata.select(present, **selections)
    source = {
        "wav_dir": str(args.wav_dir.resolve()),
        "metadata": kind,
        "metadata_path": str(Path(where).resolve()),
        "selections": selections,
        "classes_from": str(args.classes_from.resolve()) if args.classes_from else None,
    }
    logger.info("%d recordings selected of %d in %s", len(selected), len(recordings), where)
    return selected, source


def resume(parts_dir: Path, settings: str) -> dict[Path, np.ndarray]:
    """The complete shards an interrupted run left in parts_dir: {shard: its recordings'
    input keys}. Shards cut short (temporary names) are deleted; shards extracted with other
    settings are not: LoadDataError says what --overwrite would discard; nor is a file named
    as a shard that is not one this command wrote (another program's, or damaged: shards are
    written whole), nor a shard HDF5 would not open, which may be held by another program:
    LoadDataError names it. parts_dir holds nothing else (`check_working_names`)."""
    for temporary in parts_dir.glob(SHARD_TEMPORARY_PATTERN):
        temporary.unlink()  # a shard cut short: redone below
    shards, other_recordings, other_chunks = {}, 0, 0
    for shard in complete_shards(parts_dir):
        try:
            with open_dataset(shard) as part:
                same = part.info.settings_digest == settings
                keys, n_chunks = part.recordings["input_key"], len(part)
        except DatasetNotOpened as error:  # a shard written whole, so damage is unlikely
            raise LoadDataError(
                f"{error}: if another program has it open, close that and run again; if it is "
                "damaged, delete it (its recordings are extracted again)"
            ) from None
        except DatasetError as error:
            raise LoadDataError(
                f"{error}: it is left as it is; if it is another program's, move it away or "
                "give another --out; if it is a damaged shard, delete it (its recordings are "
                "extracted again)"
            ) from None
        if same:
            shards[shard] = keys
        else:
            other_recordings, other_chunks = other_recordings + len(keys), other_chunks + n_chunks
    if other_recordings:
        raise LoadDataError(
            f"{parts_dir} holds {other_recordings} recordings ({other_chunks} chunks) extracted "
            "by an interrupted run with other settings (classes, --top-n, --classes-from, "
            "--compression or parameters). Run that command again to finish it, or add "
            "--overwrite to discard them and start anew"
        )
    return shards


def where_stored(
    sources: dict[Path, np.ndarray], wanted: set[str]
) -> tuple[dict[str, tuple[Path, int]], float]:
    """Where a rerun finds the recordings already extracted into datasets (an earlier OUT,
    shards; sources: {dataset: its recordings' input keys}) whose input_key is still
    wanted: {key: (dataset, index)}, the first dataset holding a key winning; and about how
    many bytes of OUT they make (each dataset's size times the share of its recordings
    kept)."""
    where: dict[str, tuple[Path, int]] = {}
    kept_bytes = 0.0
    for source, keys in sources.items():
        kept = 0
        for index, key in enumerate(keys):
            if key in wanted and key not in where:
                where[key] = (source, index)
                kept += 1
        if kept:
            kept_bytes += source.stat().st_size * kept / len(keys)
    return where, kept_bytes


def check_room(needed_bytes: float, out: Path) -> None:
    """Raise LoadDataError when OUT's folder lacks the room for needed_bytes more of it."""
    free = shutil.disk_usage(out.parent).free
    if needed_bytes * 1.05 + 1e6 > free:
        raise LoadDataError(
            f"writing {out} needs about {needed_bytes / 1e9:.2f} GB more, but only "
            f"{free / 1e9:.2f} GB are free in {out.parent}: make room and run the same "
            "command again (the extracted recordings are kept)"
        )


def make_tasks(
    todo: list[metadata.Recording],
    keys: list[str],
    wav_dir: Path,
    info: DatasetInfo,
    workers: int,
    parts_dir: Path,
) -> list[Task]:
    """The recordings to extract (keys: their `recording_key`s) cut into worker tasks
    (`worker_batches`), in order, each with its shard in parts_dir, named after this run."""
    index, n_classes = class_index(info.classes, info.class_names), len(info.classes)
    items = []
    for recording, key in zip(todo, keys, strict=True):
        label, background = label_vectors(recording, index, n_classes)
        items.append(
            RecordingChunks(
                recording.media_id,
                recording.class_id or "",
                recording.file,
                label,
                background,
                n_frames=0,
                duration_s=0.0,
                chunks=[],
                input_key=key,
                group=recording.group,
            )
        )
    tasks, start, run = [], 0, uuid.uuid4().hex[:8]
    for number, paths in enumerate(worker_batches([wav_dir / r.file for r in todo], workers)):
        shard = shard_path(parts_dir, run, number)
        tasks.append(Task(paths, items[start : start + len(paths)], shard))
        start += len(paths)
    return tasks


class SourceFiles:
    """The datasets that recordings are copied from (`StoredRecordings`), opened when first
    asked for; beyond `most` open at once, the one used longest ago is closed."""

    def __init__(self, most: int = 8):
        self.most, self.opened = most, OrderedDict[Path, StoredRecordings]()

    def get(self, path: Path) -> StoredRecordings:
        if path in self.opened:
            self.opened.move_to_end(path)
        else:
            self.opened[path] = StoredRecordings(path)
            if len(self.opened) > self.most:
                self.opened.popitem(last=False)[1].close()
        return self.opened[path]

    def __enter__(self) -> SourceFiles:
        return self

    def __exit__(self, *exc) -> None:
        for source in self.opened.values():
            source.close()


class InShard(NamedTuple):
    """A recording extracted now: all but its chunks, and their rows in the task's shard."""

    recording: RecordingChunks
    shard: Path
    rows: range


def places_in_shard(
    task: Task, outcomes: list[Outcome], params: SpectrogramParams, summary: Summary
) -> list[InShard | None]:
    """Per recording of a finished task, where its chunks are in the task's shard, or None for
    a file that could not be read; each outcome is logged and counted in summary."""
    places: list[InShard | None] = []
    row = 0
    for path, recording, outcome in zip(task.paths, task.recordings, outcomes, strict=True):
        if outcome.error is not None:
            summary.skip("unusable wav", f"{path} ({outcome.error})")
            logger.warning("skipped %s: %s", path, outcome.error)
            places.append(None)
            continue
        if outcome.sample_rate != params.sample_rate:
            if not summary.resampled:
                logger.warning(
                    "%s is at %d Hz, not %d: resampling in-process with soxr (and any "
                    "other such file). For exact reproduction resample first with "
                    "preprocess/resample_wavs_to_16k.sh (SoX).",
                    path,
                    outcome.sample_rate,
                    params.sample_rate,
                )
            rate = outcome.sample_rate
            summary.resampled[rate] = summary.resampled.get(rate, 0) + 1
        summary.audio_s += outcome.duration_s
        if outcome.emptied:
            summary.emptied.append(str(path))
        extracted = dataclasses.replace(
            recording, n_frames=outcome.n_frames, duration_s=outcome.duration_s
        )
        places.append(InShard(extracted, task.shard, range(row, row + outcome.n_chunks)))
        row += outcome.n_chunks
    return places


def write_in_input_order(
    keys: list[str],
    stored: dict[str, tuple[Path, int]],
    tasks: list[Task],
    info: DatasetInfo,
    workers: int,
    writer: DatasetWriter,
    out: Path,
    summary: Summary,
) -> None:
    """Append every recording of the job to writer, in input order (keys, their
    `recording_key`s): those stored by an earlier run (stored: key -> (file, index)) copied
    from there, the others extracted now by `tasks` and copied from each task's shard as soon
    as it is done, while the workers extract the next ones. Unreadable files are logged and
    counted in summary."""
    extracted = extract_tasks(tasks, info, workers)
    finished = zip(tasks, extracted, strict=True)
    extracted_next: deque[InShard | None] = deque()  # the recordings of the last task done
    progress = tqdm(
        total=sum(len(task.paths) for task in tasks), unit="file", desc="extracting",
        smoothing=0.05, disable=not tasks,
    )  # fmt: skip
    with (
        contextlib.closing(extracted),  # on an error, the workers end with their tasks done
        SourceFiles() as sources,
        logging_redirect_tqdm(),
        progress,
    ):
        for key in keys:
            if key in stored:
                source, index = stored[key]
                writer.append(sources.get(source).recording(index))
                continue
            if not extracted_next:
                task, outcomes = next(finished)
                extracted_next.extend(places_in_shard(task, outcomes, info.params, summary))
                if task.shard.exists():
                    check_room(task.shard.stat().st_size, out)
                progress.update(len(task.paths))
                progress.set_postfix_str(f"{summary.audio_s / 3600:.2f} h audio", refresh=False)
            place = extracted_next.popleft()
            if place is not None:
                chunks = sources.get(place.shard).chunks(place.rows)
                writer.append(dataclasses.replace(place.recording, chunks=chunks))


FRONT_END_OPTIONS = (
    "frontend",
    "n_mels",
    "fmin",
    "fmax",
    "nfft",
    "hop",
    "noise_filter",
    "padding",
    "drop_silence",
)


def median_chunk_seconds(paths: list[Path]) -> float:
    """The automatic chunk length: the median duration of the recordings that can be read,
    clamped to MODERN_CHUNK_SECONDS, so short clips fill about one chunk and long
    recordings are cut into chunks of the longest length."""
    durations, unreadable = [], []
    for path in paths:
        try:
            durations.append(audio_seconds(path))
        except AudioError as error:
            unreadable.append(f"{path}: {error.reason}")  # skipped, and said so, at extraction
    if not durations:
        first = f" (the first: {unreadable[0]})" if unreadable else ""
        raise LoadDataError(
            f"none of the {len(paths)} recordings can be read to choose the chunk length "
            f"from{first}"
        )
    low, high = MODERN_CHUNK_SECONDS
    median = float(np.median(durations))
    seconds = min(max(median, low), high)
    logger.info(
        "chunk length %.3g s: median duration of %d recordings %.3g s, clamped to [%g, %g] s",
        seconds,
        len(durations),
        median,
        low,
        high,
    )
    return seconds


def built_chunk_frames(out: Path) -> int | None:
    """The chunk length of the dataset at out, or of the shards an interrupted run left beside
    it, which a rerun with `--chunk-seconds auto` keeps (the rerun adds recordings to them);
    None where there is no readable one."""
    parts_dir = parts_folder(out)
    for built in [out] if out.is_file() else complete_shards(parts_dir):
        try:
            with open_dataset(built) as dataset:
                return dataset.params.chunk_frames
        except DatasetError:
            continue  # said, with what to do, where it is opened again
    return None


def job_params(args, recordings: list[metadata.Recording]) -> SpectrogramParams:
    """The preprocessing parameters: those of --classes-from's dataset (a test set must be
    cut as its training set), else the --recipe's with every front-end option given."""
    given = [name for name in FRONT_END_OPTIONS if getattr(args, name) is not None]
    if args.classes_from is not None:
        if given or args.recipe != "2016" or args.chunk_seconds is not None:
            raise LoadDataError(
                "--classes-from takes the preprocessing parameters of that dataset too: "
                "give no --recipe or front-end options with it"
            )
        with open_dataset(args.classes_from) as other:
            return other.params
    base = MODERN if args.recipe == "modern" else SpectrogramParams()
    changes = {name: getattr(args, name) for name in given if name != "n_mels"}
    frontend = args.frontend or base.frontend
    if args.n_mels is not None:
        if frontend != "logmel":
            raise LoadDataError("--n-mels needs --frontend logmel (or --recipe modern)")
        changes["n_bins"] = args.n_mels
    elif frontend != base.frontend:
        changes["n_bins"] = MODERN.n_bins if frontend == "logmel" else SpectrogramParams.n_bins
    if args.noise_filter and args.drop_silence is None:
        changes["drop_silence"] = False  # the filter removes empty frames itself
    try:
        params = dataclasses.replace(base, **changes)
        check_front_end(params)  # said now, not by every worker
    except ValueError as error:
        raise LoadDataError(str(error)) from None
    frames = chunk_frames(args, params, recordings)
    return params if frames is None else dataclasses.replace(params, chunk_frames=frames)


def chunk_frames(args, params: SpectrogramParams, recordings: list[metadata.Recording]):
    """The chunk length in frames that --chunk-seconds (or the modern recipe's "auto") asks
    for, None for params' own. "auto": the recordings' median duration (`median_chunk_seconds`),
    or OUT's length where it is being added to or repaired."""
    chunk_seconds = args.chunk_seconds or ("auto" if args.recipe == "modern" else None)
    if chunk_seconds == "auto":
        kept = None if args.overwrite else built_chunk_frames(args.out)
        if kept is not None:  # added or repaired files move the median: OUT's length stays
            logger.info(
                "chunk length %d frames, as %s was built (--overwrite chooses anew)", kept, args.out
            )
            return kept
        chunk_seconds = median_chunk_seconds([args.wav_dir / r.file for r in recordings])
    if chunk_seconds is None:
        return None
    return frames_for_seconds(float(chunk_seconds), params)


def input_files(args) -> list[Path]:
    """The files the command reads that an output or its clean-up must never be: --csv and
    --classes-from, where given."""
    return [path for path in (args.csv, args.classes_from) if path]


def check_working_names(out: Path, inputs: list[Path]) -> None:
    """Raise LoadDataError (DatasetError) unless OUT.parts/, which the command works in, is
    absent or what it left there itself, a real folder of shard files only
    (`check_parts_folder`), and holds none of the inputs (`input_files`), which its clean-up
    would delete. Anything else, a link above all, may be the user's: it is named, never
    written through, emptied or deleted. Checked before any work, so a refusal leaves
    nothing half done."""
    remedy = ", or choose another --out"
    parts = parts_folder(out)
    for source in inputs:
        if source.resolve().is_relative_to(parts.resolve()):
            raise LoadDataError(
                f"{source} is read by this command, but {out} is written through "
                f"{parts.name}/, whose clean-up would delete it{remedy}"
            )
    check_parts_folder(parts, remedy)


def remove_cut_short_writes(out: Path) -> None:
    """Delete what writes of out that a kill cut short left beside it: files named as
    `partial_name` names them (unique to a run, so no other program's) that are regular
    files, empty or HDF5 (HDF5 writes its signature first). Called under out's lock."""
    for leftover in partials_of(out):  # not .OUT.old.<pid>-...: another output's
        if is_own_file(leftover) and (leftover.stat().st_size == 0 or is_hdf5(leftover)):
            leftover.unlink()


def earlier_output(out: Path, info: DatasetInfo) -> dict[Path, np.ndarray] | None:
    """What a rerun keeps of an existing OUT: {OUT: its recordings' input keys} where it was
    built with the same settings ({} where there is no OUT), None where it is already
    complete for these inputs. A LoadDataError for an OUT that cannot be read, or was built
    with other settings (--overwrite replaces it)."""
    if not out.exists():
        return {}
    try:
        with open_dataset(out) as existing:
            built_from, built_keys = existing.info, existing.recordings["input_key"]
    except DatasetError as error:
        raise LoadDataError(f"{error}; use --overwrite to replace it") from None
    if built_from.inputs_digest == info.inputs_digest:
        return None
    if built_from.settings_digest != info.settings_digest:
        raise LoadDataError(
            f"{out} exists, built with other settings (classes, --top-n, --classes-from, "
            "--compression or parameters) or by an older version; use --overwrite to "
            "rebuild it, or another --out"
        )
    logger.info(
        "%s exists: keeping its recordings whose wav and labels are unchanged; new, "
        "changed and failed files are (re)tried",
        out,
    )
    return {out: built_keys}


def build(args) -> int:
    started = time.perf_counter()
    summary = Summary()
    out: Path = args.out
    parts_dir = parts_folder(out)
    check_working_names(out, input_files(args))

    recordings, source = read_metadata(args, summary)
    if not recordings:
        skipped = "; ".join(line.strip() for line in summary.skipped_lines())
        raise LoadDataError(f"no recordings to process (skipped: {skipped or 'none'})")
    params = job_params(args, recordings)
    classes, class_names, recordings = class_table(recordings, args.classes_from)
    keys = [recording_key(r, args.wav_dir / r.file) for r in recordings]
    info = DatasetInfo(params, classes, class_names, source, args.compression)
    info = dataclasses.replace(
        info, settings_digest=settings_digest(info), inputs_digest=inputs_digest(info, keys)
    )

    remove_cut_short_writes(out)
    earlier = {} if args.overwrite else earlier_output(out, info)
    if earlier is None:
        remove_parts(parts_dir)  # a run killed between the final rename and this clean-up
        print(
            f"{out} already complete for these inputs and settings: nothing to do "
            "(--overwrite rebuilds it)"
        )
        return 0
    if args.overwrite:
        remove_parts(parts_dir)  # the old OUT stays in place until the new one is complete
    if not classes:
        logger.warning(
            "no labelled recordings: every label is -1 (use --classes-from "
            "TRAIN.h5 to give a test set the training classes)"
        )

    shards = resume(parts_dir, info.settings_digest)
    stored, stored_bytes = where_stored({**earlier, **shards}, set(keys))
    todo = [(r, key) for r, key in zip(recordings, keys, strict=True) if key not in stored]
    summary.resumed = len(recordings) - len(todo)
    if summary.resumed:
        logger.info("%d recordings already extracted by an earlier run", summary.resumed)
    unlabelled = sum(r.class_id not in classes for r in recordings)
    if classes and unlabelled:
        logger.info(
            "%d recordings have no label among the %d classes: label -1", unlabelled, len(classes)
        )

    todo_recordings, todo_keys = [r for r, _ in todo], [key for _, key in todo]
    tasks = make_tasks(todo_recordings, todo_keys, args.wav_dir, info, args.workers, parts_dir)
    if tasks:
        parts_dir.mkdir(parents=True, exist_ok=True)
    if stored:
        check_room(stored_bytes, out)
    try:
        # the old OUT stays until this one is done
        with atomic_dataset(out, info, partial_name(out)) as writer:
            write_in_input_order(keys, stored, tasks, info, args.workers, writer, out, summary)
            if not writer.recordings:
                raise LoadDataError("no recording could be read: nothing written")
    except KeyboardInterrupt:
        logger.error(
            "interrupted: finished recordings are kept in %s; run the same command again to resume",
            parts_dir,
        )
        return 130
    remove_parts(parts_dir)
    summary.recordings, summary.chunks = len(writer.recordings), writer.n_rows
    summary.seconds = time.perf_counter() - started
    print(summary.report(out))
    return 0


EPILOG = """\
examples:
  # BirdCLEF: wavs resampled to 16 kHz by preprocess/resample_wavs_to_16k.sh, one XML each
  python preprocess/load_data.py --wav-dir data/wav16k --xml-dir data/TrainingSet/xml \\
      --top-n 50 --out data/train.h5
  # a test set without labels, with the training file's classes as columns
  python preprocess/load_data.py --wav-dir data/test16k --xml-dir data/TestSet/xml \\
      --classes-from data/train.h5 --out data/test.h5
  # any audio task: a CSV with columns file,label[,media_id][,background]
  python preprocess/load_data.py --wav-dir clips --csv clips/labels.csv --out clips.h5
  # or one folder per class: clips/<label>/<name>.wav
  python preprocess/load_data.py --wav-dir clips --class-folders --out clips.h5

Interrupted (Ctrl-C, kill -9)? Run the same command again: the recordings finished in
OUT.parts/ are kept. Rerun after adding, changing or repairing wav files: the recordings
already in OUT are kept and only those files are extracted. Other settings (--top-n,
--classes-from, --compression) need --overwrite. Unusable files are skipped and listed in
the summary.
"""


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def chunk_seconds(text: str) -> str:
    try:
        if text == "auto" or float(text) > 0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected seconds > 0 or auto, got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Turn wav files and their labels into the chunk dataset (HDF5) that "
        "training and prediction read, with the front end of --recipe (2016: log spectrogram, "
        "noise filter, 5 s chunks; modern: log-mel, 1-5 s chunks).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--wav-dir",
        type=Path,
        metavar="DIR",
        required=True,
        help="folder of 16 kHz wav files (other rates are resampled, slower)",
    )
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument(
        "--xml-dir", type=Path, metavar="DIR", help="BirdCLEF folder, one <Audio> XML each"
    )
    labels.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="CSV with columns file,label (file relative to --wav-dir; optional media_id, "
        "background ';'-separated; or as other data sets name them: filename, category, "
        "primary_label, secondary_labels, ...); fields separated by commas, semicolons or tabs",
    )
    labels.add_argument(
        "--class-folders",
        action="store_true",
        help="--wav-dir holds one subfolder per class, named after it",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE.h5", help="HDF5 file to write (.h5)"
    )
    parser.add_argument(
        "--top-n", type=at_least(1), metavar="N", help="keep only the N most common classes"
    )
    parser.add_argument("--min-quality", type=at_least(0), help="lowest BirdCLEF Quality kept")
    parser.add_argument("--max-quality", type=at_least(0), help="highest BirdCLEF Quality kept")
    parser.add_argument(
        "--no-background", action="store_true", help="drop recordings that list background species"
    )
    parser.add_argument(
        "--classes-from",
        type=Path,
        metavar="OTHER.h5",
        help="use the class list and preprocessing parameters of another dataset (e.g. the "
        "training set)",
    )
    recipe = parser.add_argument_group(
        "front end",
        "--recipe sets every one of these; an option given overrides the recipe's value. All "
        "are stored in OUT's params attribute, which training and prediction follow.",
    )
    recipe.add_argument(
        "--recipe",
        choices=["2016", "modern"],
        default="2016",
        help="2016 (default): the paper's log PSD, 200 bins to 6.2 kHz, noise filter, 4.96 s "
        f"chunks, zero padding. modern: {MODERN.n_bins} log-mel bands over "
        f"{MODERN.fmin / 1000:g}-{MODERN.fmax / 1000:g} kHz (nfft {MODERN.nfft}, hop "
        f"{MODERN.hop}), noise filter {'on' if MODERN.noise_filter else 'off'}, chunk length "
        f"auto, {MODERN.padding} padding",
    )
    recipe.add_argument("--frontend", choices=FRONTENDS, help="psd2016 or logmel")
    recipe.add_argument(
        "--n-mels", type=int, metavar="N", help=f"mel bands (logmel; {MODERN.n_bins})"
    )
    recipe.add_argument(
        "--fmin", type=float, metavar="HZ", help=f"lowest mel edge (logmel; {MODERN.fmin:g})"
    )
    recipe.add_argument(
        "--fmax", type=float, metavar="HZ", help=f"highest mel edge (logmel; {MODERN.fmax:g})"
    )
    recipe.add_argument("--nfft", type=int, metavar="N", help="samples per FFT window")
    recipe.add_argument("--hop", type=int, metavar="N", help="samples between frames")
    recipe.add_argument(
        "--noise-filter",
        type=on_off,
        metavar="on|off",
        help=f"the 2016 noise filter (2016: on; modern: {'on' if MODERN.noise_filter else 'off'})",
    )
    recipe.add_argument(
        "--drop-silence",
        type=on_off,
        metavar="on|off",
        help="drop frames of digital silence (exact zeros, as clips padded to a length have; "
        "without the noise filter only; off in both recipes)",
    )
    recipe.add_argument(
        "--padding",
        choices=PADDINGS,
        help="a recording shorter than a chunk: zero-padded (2016) or repeated (cyclic, modern)",
    )
    recipe.add_argument(
        "--chunk-seconds",
        type=chunk_seconds,
        metavar="S|auto",
        help="chunk length in seconds, or auto: the median duration of the recordings clamped "
        f"to [{MODERN_CHUNK_SECONDS[0]:g}, {MODERN_CHUNK_SECONDS[1]:g}] s (2016: 310 frames = "
        "4.96 s; modern: auto)",
    )
    parser.add_argument(
        "--workers",
        type=at_least(1, most_workers()),
        default=multiprocessing.cpu_count(),
        help="parallel processes (default: all %(default)s cores; 1 runs in this process)",
    )
    parser.add_argument(
        "--compression",
        choices=list(COMPRESSIONS),
        default=DEFAULT_COMPRESSION,
        help="compression of X: blosc2-lz4 (default) decodes fastest and needs hdf5plugin "
        "imported to read; gzip is read by any HDF5 tool; lzf only by h5py; none is about 3x "
        "larger",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild OUT even if it exists (kept until the new one is done)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging, tracebacks")
    args = parser.parse_args(argv)
    if None not in (args.min_quality, args.max_quality) and args.min_quality > args.max_quality:
        parser.error(f"--min-quality {args.min_quality} is above --max-quality {args.max_quality}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # an existing file: even --overwrite replaces only a dataset of its own, no input;
        # a folder, a pipe or a device is refused before its lock is made beside it
        if args.out.exists():
            check_output(
                args.out,
                own_kind=is_chunk_dataset,
                kind="a chunk dataset written by preprocess/load_data.py",
                inputs=input_files(args),
            )
    except OutputPathError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )

    def run() -> int:
        with exclusive_run(args.out.with_name(args.out.name + ".lock"), str(args.out)):
            return build(args)

    input_errors = (LoadDataError, MetadataError, DatasetError, RunLocked, WorkerLost)
    return run_command(run, args.verbose, input_errors)


if __name__ == "__main__":
    sys.exit(main())
