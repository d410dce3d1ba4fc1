"""Predict the species of recordings with a trained run folder; write a BirdCLEF run file.

    python predict/predict.py --run RUN_DIR --audio DIR --out RUN.csv
    python predict/predict.py --run RUN_DIR --xml-dir TestSet/xml --audio TestSet/wav --out RUN.csv

The run folder gives the model and everything that must match training: the preprocessing parameters
(params.json), the class list (classes.json) and how the run is applied (inference.json, written by
training: the model file and the pooling; absent in a run made before it existed, which means
best_val_map.keras and the mean, as in the 2016 recipe). Audio that is not already a 16 kHz 16-bit
mono wav is resampled as for training, by preprocess/resample.py (SoX, else soxr), into a cache
folder. Each recording becomes the training chunks by the same entry point as in training
(preprocess/extract.py: the run's front end, noise filter and chunk length); chunks of many
recordings share fixed-size batches through the model; the softmax of a recording's chunks is pooled
(mean, max or power mean, train/metrics.py) and renormalised, and its top-k species are written as
`MediaId;ClassId;Probability;Rank`. A recording's chunks go to the model in slices of one batch,
never all at once. A recording of up to 10 minutes (STREAM_SECONDS) is read whole: memory holds its
spectrogram, about 0.3 GB per audio hour. A longer one is streamed from its wav by `stream_chunks`,
in blocks of a few MB whatever its length.

With --soundscape, every 5 s window of a recording gets its own ranking instead
(`MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability`): with the 2016 noise filter, its mask is
computed over the whole recording as in training, and each window's empty frames are removed
within the window; every recording is read whole.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# `python predict/predict.py` (how scorers run it) puts this folder first on sys.path, where
# predict.py would pass for the package `predict`: the project root takes its place, so the file
# also runs where env.sh's .pth names another checkout or none. `python -m predict.predict` needs
# none of this. Run by a Python without the requirements, it runs again with the project's .venv.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])
if __name__ == "__main__":
    from preprocess.cli import run_in_project_venv_when_a_requirement_is_missing

    run_in_project_venv_when_a_requirement_is_missing()

import filelock  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from predict.detections import (  # noqa: E402
    ChunkOutputs,
    OutputError,
    check_tables,
    top_frequency_hz,
)
from predict.runfile import (  # noqa: E402
    MAX_RANK,
    AtomicWriter,
    RunFileWriter,
    SoundscapeWriter,
    as_text_cell,
    looks_like_run_file,
    read_classes,
    top_classes,
)
from preprocess import resample  # noqa: E402
from preprocess.audio import (  # noqa: E402
    AUDIO_SUFFIXES,
    UNREADABLE_AUDIO,
    UNREADABLE_AUDIO_SUFFIXES,
    AudioError,
    is_wav_at,
    streamable_seconds,
)
from preprocess.cli import at_least, most_workers, run_command  # noqa: E402
from preprocess.extract import (  # noqa: E402
    STREAM_SECONDS,
    no_sound,
    recording_chunks,
    values_vary,
    whole_recordings_chunks,
)
from preprocess.metadata import (  # noqa: E402
    MetadataError,
    field_problem,
    posix_path,
    read_birdclef_xml_dir,
    stem_or_path_ids,
)
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.paths import (  # noqa: E402
    NOT_REGULAR,
    OutputPathError,
    check_output,
    files_under,
    first_line,
    first_names,
    is_ignored,
    is_zip_with,
    shown_name,
)
from preprocess.spectrogram import check_front_end  # noqa: E402
from preprocess.workers import WorkerLost, run_in_workers, tasks_of  # noqa: E402
from train import run_files  # noqa: E402
from train.metrics import POOLINGS, POWER_EXPONENT, recording_scores  # noqa: E402
from train.thresholds import ThresholdsError, read_thresholds  # noqa: E402

logger = logging.getLogger(__name__)

SOUNDSCAPE_WINDOW_SECONDS = 5.0  # the BirdCLEF 2017 soundscape run-file window
MAX_BATCH_SIZE = 16384  # chunks per model call: a 4 GB input buffer
HUMAN_CSV_HEADER = "file,MediaId"  # how the --human-csv file begins
HUMAN_TOP = 5  # the classes a --human-csv row names
MAX_POOLING_EXPONENT = 100.0  # of the power mean: near the max already (training writes 3)
CACHE_NAME_LENGTH = 32  # hex digits of the hash naming a file in the resampling cache
WORKER_MAX_SECONDS = STREAM_SECONDS  # longer recordings are extracted here, streamed
TASK_SECONDS = 60.0  # of audio per worker task at most (one recording at least): 5 MB
RECORDINGS_PER_TASK = 16  # at most
DEFAULT_MIN_CONF = 0.1  # the lowest probability a --raven or --audacity table lists


class PredictError(Exception):
    """Input that prediction cannot work with; the message says which and why."""


class NothingRead(PredictError):
    """No recording could be read: the message names the first ones, each with why."""

    def __init__(self, skipped: list[str]):
        self.skipped = skipped
        super().__init__("no recording could be read: " + "; ".join(skipped[:5]))


@dataclass(frozen=True)
class Inference:
    """How a run is applied: RUN/inference.json, written by train_model at the end of
    training; a run made before it existed is applied as these defaults (the 2016 recipe's) say."""

    model_file: str = run_files.BEST_VAL_MAP  # the model's file name in the run folder
    pooling: str = "mean"  # of a recording's chunk softmax (train.metrics.recording_scores)
    pooling_exponent: float = POWER_EXPONENT  # of the "power" pooling


@dataclass
class Run:
    """A trained run folder, loaded."""

    model: object  # keras.Model
    params: SpectrogramParams
    classes: list[str]
    class_names: dict[str, str]
    inference: Inference = Inference()  # the model file it was loaded from, the pooling


def is_plain_file_name(name: object) -> bool:
    """True for a file name in a folder: text, no folder part ('/' or '\\'), not '.' or '..'."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(character in name for character in ("/", "\\", "\0"))
    )


def check_model_file_name(model_file: str | None) -> None:
    """PredictError for a --model-file that is not the name of a file in the run folder: a
    model of another run would be labelled with this run's classes."""
    if model_file is not None and not is_plain_file_name(model_file):
        raise PredictError(
            f"--model-file {model_file!r}: give the name of a model in the run folder "
            "(final.keras, best_val_map.keras, ...); a model of another run predicts with its "
            "own run's classes: give that run as --run"
        )


def read_inference(run_dir: Path) -> Inference:
    """RUN/inference.json as `Inference`; the defaults (2016) when the file is absent. Other
    keys (training's validation scores of each pooling, ...) are for people and ignored.

    The model file must be a plain file name, in the run folder (training writes one); the
    power mean's exponent a number in (0, MAX_POOLING_EXPONENT] (training writes 3): a larger
    one, or infinity, ranks every class equal. Anything else is a damaged inference.json.
    """
    path = run_dir / run_files.INFERENCE
    if not path.is_file():
        return Inference()
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        defaults = Inference()
        model_file = values.get("model_file", defaults.model_file)
        pooling = values.get("pooling", defaults.pooling)
        exponent = values.get("pooling_exponent", defaults.pooling_exponent)
        if not is_plain_file_name(model_file):
            raise ValueError(f"model_file {model_file!r} is not a file name in the run folder")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if (
            isinstance(exponent, bool)
            or not isinstance(exponent, int | float)
            or not 0 < exponent <= MAX_POOLING_EXPONENT  # NaN fails too
        ):
            raise ValueError(
                f"pooling_exponent {exponent!r} is not a number above 0 and at most "
                f"{MAX_POOLING_EXPONENT:g}"
            )
    # UnicodeDecodeError is a ValueError; RecursionError: arrays nested without end
    except (ValueError, TypeError, RecursionError) as error:
        raise PredictError(f"{path}: damaged inference.json ({error})") from None
    return Inference(model_file, pooling, float(exponent))


@dataclass(frozen=True)
class AudioItem:
    media_id: str
    path: Path  # the file as given
    resampled: Path | None = None  # its 16 kHz wav in the cache, when it needed one

    @property
    def wav(self) -> Path:
        """The 16 kHz wav to read."""
        return self.resampled or self.path


def check_training_ended(run_dir: Path) -> None:
    """PredictError for a run folder of train_model.py whose training has not ended (still
    running, or stopped midway): it has not chosen its model and pooling yet (inference.json),
    and its checkpoints of the epochs so far would pass for the run's answer."""
    if not (run_dir / run_files.CONFIG).is_file():  # not a run train_model.py made (an export)
        return
    try:
        config = json.loads((run_dir / run_files.CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # damaged: prediction's files are checked later
        return
    chooses = isinstance(config, dict) and "inference_model" in config  # since inference.json
    if not (run_dir / run_files.DONE).is_file() or (
        chooses and not (run_dir / run_files.INFERENCE).is_file()
    ):
        raise PredictError(
            f"{run_dir}: its training has not ended (it is running, or was stopped before it "
            "chose its model): use it once it has (train_model.py --resume finishes a "
            "stopped run), or name a checkpoint with --model-file"
        )


def load_run(run_dir: Path, model_file: str | None = None, pooling: str | None = None) -> Run:
    """Model, preprocessing parameters, classes and pooling of a training run folder.

    model_file and pooling: None takes the run's own (`read_inference`).
    """
    if not run_dir.is_dir():
        raise PredictError(
            f"run folder {run_dir} not found (train one first: "
            f"python train/train_model.py --out {run_dir} ...)"
        )
    inference = read_inference(run_dir)
    model_file = model_file or inference.model_file
    needed = (run_files.PARAMS, run_files.CLASSES, model_file)
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if len(missing) == len(needed) and not (run_dir / run_files.CONFIG).exists():
        runs = sorted(config.parent.name for config in run_dir.glob("*/config.json"))
        raise PredictError(
            f"run folder {run_dir} holds no training run: "
            + (
                f"it holds runs ({', '.join(runs[:5])}): give one of them"
                if runs
                else "another folder, or a training that never started or failed before it "
                "wrote anything (see what train_model.py printed)"
            )
        )
    if missing:
        raise PredictError(
            f"run folder {run_dir} has no {', '.join(missing)}: not a finished "
            "training run (or choose another model with --model-file)"
        )
    try:
        params = SpectrogramParams.from_json(
            (run_dir / run_files.PARAMS).read_text(encoding="utf-8")
        )
        check_front_end(params)  # values each in range, but that no recording can go through
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise PredictError(f"{run_dir / 'params.json'}: damaged params.json ({error})") from None
    try:
        classes, class_names = read_classes(run_dir / run_files.CLASSES)
    except ValueError as error:
        raise PredictError(str(error)) from None

    # Keras (TensorFlow) takes seconds to load: only once the inputs are known good
    from train.saved_model import ModelFileError, load_saved_model

    try:
        model = load_saved_model(run_dir / model_file)
    except ModelFileError as error:
        raise PredictError(str(error)) from error
    expected_input = (params.n_bins, params.chunk_frames, 1)
    input_shape = tuple(model.input_shape[1:])
    fits = len(input_shape) == 3 and all(  # None: the model takes any size there
        size in (None, expected) for size, expected in zip(input_shape, expected_input, strict=True)
    )
    if not fits or model.output_shape[-1] != len(classes):
        raise PredictError(
            f"{run_dir / model_file} takes {model.input_shape[1:]} and gives "
            f"{model.output_shape[-1]} classes, but the run folder says {expected_input} and "
            f"{len(classes)} classes: model and run folder do not belong together"
        )
    applied = Inference(model_file, pooling or inference.pooling, inference.pooling_exponent)
    return Run(model, params, classes, class_names, applied)


def find_audio(
    paths: Iterable[Path], exclude: Iterable[Path] = ()
) -> tuple[list[AudioItem], list[str]]:
    """Audio files given directly or found (recursively) in folders (`audio_files`), and skip
    messages. MediaId: `stem_or_path_ids` of each file's path in the folder given, as training
    names them. Skipped, named: entries named like audio that are not regular files (a pipe,
    a device, a broken link), and each file whose path without its extension an earlier one
    has (x.wav beside x.flac, or the same path in two folders given): the first one counts."""
    irregular: list[Path] = []
    found: list[tuple[Path, PurePosixPath]] = []  # (file, its path in the folder given)
    for path in paths:
        for file in audio_files(path, exclude, irregular):
            inside = file.relative_to(path) if path.is_dir() else Path(file.name)
            found.append((file, PurePosixPath(inside.as_posix())))
    skipped = [f"{shown_name(str(path))}: {NOT_REGULAR}" for path in irregular]
    # one recording per path without its extension (the first file counts), and only then
    # the names that several folders share, so a skipped file changes no other's MediaId
    first_of: dict[str, Path] = {}
    kept: list[tuple[Path, PurePosixPath]] = []
    for file, inside in found:
        path_id = str(inside.with_suffix(""))
        if path_id in first_of:
            skipped.append(f"{file}: MediaId {path_id!r} is {first_of[path_id]}'s; rename it")
            continue
        first_of[path_id] = file
        kept.append((file, inside))
    ids = stem_or_path_ids([inside for _, inside in kept])
    items = [AudioItem(media_id, file) for media_id, (file, _) in zip(ids, kept, strict=True)]
    return items, skipped


def audio_files(path: Path, exclude: Iterable[Path], irregular: list[Path]) -> list[Path]:
    """The audio file path, or those found (recursively, sorted) in folder path.

    In a folder, files in an excluded folder (predict's own cache, when it lies in the audio
    folder) are not inputs, nor are hidden files and folders (a Mac's `._x.wav` copies,
    `.x.wav.part` being written) and files not named like audio (AUDIO_SUFFIXES): both are
    logged, by name, not read. Entries named like audio that are not regular files (a pipe,
    which reading would wait on forever, a device, a broken link) are added to irregular,
    not read. A path given directly must be a regular file or a folder.
    """
    excluded = [folder.resolve() for folder in exclude]

    def in_cache(file: Path) -> bool:
        where = file.parent.resolve()  # not the file's: a cache may hold links to the inputs
        return any(where == folder or folder in where.parents for folder in excluded)

    if path.is_dir():
        named, hidden, other = [], [], []
        for file in files_under(path):  # linked folders too, as training's metadata finds
            if in_cache(file):
                continue
            is_audio = file.suffix.lower() in AUDIO_SUFFIXES
            if is_ignored(PurePosixPath(file.relative_to(path).as_posix())):
                hidden += [file] if is_audio else []
            else:
                (named if is_audio else other).append(file)
        irregular += [p for p in named if not p.is_file()]
        log_not_read(path, hidden, other)
        return [p for p in named if p.is_file()]
    if path.is_file():
        return [path]
    if os.path.lexists(path):
        raise PredictError(f"{path}: {NOT_REGULAR}")
    raise PredictError(f"{path}: no such file or folder")


def log_not_read(folder: Path, hidden: list[Path], other: list[Path]) -> None:
    """Say which files of folder are not inputs: hidden ones named like audio and audio of a
    format no decoder here reads (warnings), and those of other types (audio SoX reads under
    another extension is given by file name)."""

    def names(files: list[Path]) -> str:
        return first_names([shown_name(str(file.relative_to(folder))) for file in files])

    if hidden:
        logger.warning(
            "%s: %d hidden audio file(s) not read (names starting with '.': a Mac's ._ copies, "
            "files being written; or under __MACOSX): %s",
            folder,
            len(hidden),
            names(hidden),
        )
    unreadable = [file for file in other if file.suffix.lower() in UNREADABLE_AUDIO_SUFFIXES]
    if unreadable:
        logger.warning(
            "%s: %d audio file(s) not read, %s: %s",
            folder,
            len(unreadable),
            UNREADABLE_AUDIO,
            names(unreadable),
        )
    other = [file for file in other if file not in unreadable]
    if other:
        logger.info(
            "%s: %d file(s) not named like audio (%s) not read: %s",
            folder,
            len(other),
            " ".join(sorted(AUDIO_SUFFIXES)),
            names(other),
        )


def valid_media_ids(items: list[AudioItem]) -> tuple[list[AudioItem], list[str]]:
    """Items whose MediaId can be written to a run file, and skip messages for the others."""
    kept, skipped = [], []
    for item in items:
        problem = field_problem(item.media_id)
        if problem:
            skipped.append(f"{item.path}: MediaId {item.media_id!r} {problem}; rename the file")
        else:
            kept.append(item)
    return kept, skipped


def xml_items(
    xml_dir: Path, audio_dir: Path, exclude: Iterable[Path] = ()
) -> tuple[list[AudioItem], list[str]]:
    """BirdCLEF test folder: MediaId and FileName from each XML, audio found under audio_dir.

    The file FileName names (its path under audio_dir), else the one audio file
    with its stem: the audio may have another extension (e.g. resampled mp3 -> wav). Returns
    (items, skip messages).
    """
    try:
        recordings, skipped = read_birdclef_xml_dir(xml_dir)
    except MetadataError as error:
        raise PredictError(str(error)) from None
    irregular: list[Path] = []
    files = audio_files(audio_dir, exclude, irregular)
    by_name = {file.relative_to(audio_dir).as_posix(): file for file in files}
    by_stem: dict[str, list[Path]] = {}
    for file in files:
        by_stem.setdefault(file.stem, []).append(file)
    unusable = {file.relative_to(audio_dir).as_posix(): file for file in irregular}
    unusable_stems = {file.stem: file for file in irregular}
    items, named_files = [], set()
    for recording in recordings:
        file_name = recording.fields.get("FileName") or recording.file
        named = posix_path(file_name)
        candidates = by_stem.get(named.stem, [])
        path = by_name.get(named.as_posix()) or (candidates[0] if len(candidates) == 1 else None)
        if path is not None:
            items.append(AudioItem(recording.media_id, path))
            # and its copies in other formats beside it (x.wav made from x.flac)
            named_files.update(c for c in candidates if c.parent == path.parent)
        elif candidates:
            named_files.update(candidates)  # named, but which one is not known
            listed = ", ".join(str(c) for c in candidates)
            skipped.append(f"{file_name} (MediaId {recording.media_id}): which one? {listed}")
        elif named.as_posix() in unusable or named.stem in unusable_stems:
            path = unusable.get(named.as_posix()) or unusable_stems[named.stem]
            skipped.append(f"{shown_name(str(path))} (MediaId {recording.media_id}): {NOT_REGULAR}")
        else:
            skipped.append(f"{file_name} (MediaId {recording.media_id}): no audio in {audio_dir}")
    without_xml = [str(file.relative_to(audio_dir)) for file in files if file not in named_files]
    if without_xml:  # no MediaId to give them in a run file
        logger.warning(
            "%d audio files in %s have no XML in %s, so no MediaId: not predicted: %s",
            len(without_xml),
            audio_dir,
            xml_dir,
            first_names([shown_name(name) for name in without_xml]),
        )
    return items, skipped


def cache_name(path: Path) -> str:
    """The cache's name for an audio file: a hash of its resolved path, size and modification
    time, never a name from data.

    A MediaId or file name may hold '/', '..' or control characters (a test folder may come
    from anywhere). The same unchanged file always gets the same name, so the cache resumes;
    a file replaced by another recording gets a new one, even where the new file's time is
    older (`tar -x`, `cp -p`, `rsync -a` keep the source's).
    """
    stat = path.stat()
    key = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:CACHE_NAME_LENGTH]


def resample_items(
    items: list[AudioItem], cache_dir: Path, sample_rate: int, workers: int = 1
) -> tuple[list[AudioItem], list[str]]:
    """Bring every item to a 16-bit mono wav at sample_rate, as training did.

    Items already in that form are used as they are; the others are resampled by
    preprocess/resample.py, as for training (to its TARGET_RATE, the only sample_rate a
    run's parameters hold), into cache_dir/resampled/<cache_name>.wav
    (resumable: a changed source gets a new name, so it is done again). Returns (items pointing at
    usable wavs, skip messages).
    """
    target = cache_dir / "resampled"
    names = [cache_name(item.path) for item in items]  # once: a file may change meanwhile
    conversions = {}  # cache name -> its conversion: one per file, however often it is given
    for item, name in zip(items, names, strict=True):
        if name not in conversions and not is_wav_at(item.path, sample_rate):
            wav = target / f"{name}.wav"
            conversions[name] = resample.Conversion(item.path, wav, str(item.path))
    if not conversions:
        return items, []
    logger.info("resampling %d file(s) to %d Hz into %s", len(conversions), sample_rate, target)
    target.mkdir(parents=True, exist_ok=True)
    # predictions whose --out share a folder share this cache: one resamples into it at a
    # time, or each could move the other's half-written file into place
    lock = filelock.FileLock(target / resample.LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("waiting for another prediction resampling into %s", target)
        lock.acquire()
    try:
        failed = dict(
            resample.resample_files([*conversions.values()], workers, target, out=sys.stderr)
        )
    finally:
        lock.release()
    ready, skipped = [], []
    for item, name in zip(items, names, strict=True):
        conversion = conversions.get(name)
        if conversion is None:
            ready.append(item)
        elif conversion.name in failed:
            skipped.append(f"{item.path}: could not be resampled ({failed[conversion.name]})")
        else:
            ready.append(dataclasses.replace(item, resampled=conversion.target))
    return ready, skipped


@dataclass
class PendingPiece:
    """A piece whose chunks are in the model's batches: its softmax rows fill as they come."""

    key: object
    probs: np.ndarray  # (n, classes)
    rows_left: int  # rows not predicted yet


def predict_pieces(
    model, pieces: Iterable[tuple[object, np.ndarray]], batch_size: int, overlap: bool = False
) -> Iterator[tuple[object, np.ndarray]]:
    """Softmax of chunks from many sources, run through the model in shared fixed-size batches.

    pieces: (key, chunks (n, n_bins, frames)) in order. Yields (key, probs (n, classes)) for
    each piece, in the same order, as soon as all its chunks went through the model. The
    buffer has one fixed shape (the last batch zero-padded), so the model compiles once.
    overlap: the model runs in a thread of its own, on one buffer while the next batch fills
    the other, so that a GPU's time and this process's (hand-over, batching, the run file)
    add up to the longer of the two, not their sum. `predict` asks for it where workers
    extract (a GPU's default); in turns, extraction and a model on the CPU would compete for
    the cores.
    """
    n_classes = model.output_shape[-1]
    buffers: list[np.ndarray] = []  # two with overlap: the model's, and the one filling
    routes: list[tuple[PendingPiece, int]] = []  # per buffer row: its piece, row in the piece
    pending: deque[PendingPiece] = deque()  # in order
    running: list[tuple[Future, list]] = []  # with overlap: the model's batch, its routes

    def deliver(outputs: np.ndarray, batch_routes: list[tuple[PendingPiece, int]]) -> None:
        # a last batch padded to the model's batch size has more outputs than routes
        for (piece, row), output in zip(batch_routes, outputs, strict=False):
            piece.probs[row] = output
            piece.rows_left -= 1

    def run_batch(model_thread: ThreadPoolExecutor) -> None:
        batch_routes, buffer = routes.copy(), buffers[0]
        routes.clear()
        if not overlap:
            deliver(np.asarray(model.predict_on_batch(buffer)), batch_routes)
            return
        if running:  # the other buffer is free again once its outputs are in
            future, earlier_routes = running.pop()
            deliver(future.result(), earlier_routes)
        future = model_thread.submit(lambda: np.asarray(model.predict_on_batch(buffer)))
        running.append((future, batch_routes))
        buffers.reverse()

    def finished() -> Iterator[tuple[object, np.ndarray]]:
        while pending and pending[0].rows_left == 0:
            piece = pending.popleft()
            yield piece.key, piece.probs

    with ThreadPoolExecutor(1, thread_name_prefix="model") as model_thread:
        for key, chunks in pieces:
            if not buffers:
                shape = (batch_size, *chunks.shape[1:], 1)
                buffers += [np.zeros(shape, np.float32) for _ in range(1 + overlap)]
            piece = PendingPiece(key, np.empty((len(chunks), n_classes), np.float32), len(chunks))
            pending.append(piece)
            for row, chunk in enumerate(chunks):
                buffers[0][len(routes), ..., 0] = chunk
                routes.append((piece, row))
                if len(routes) == batch_size:
                    run_batch(model_thread)
            yield from finished()
        if routes:
            buffers[0][len(routes) :] = 0
            run_batch(model_thread)
        for future, batch_routes in running:
            deliver(future.result(), batch_routes)
        yield from finished()


def pooled_probs(chunk_probs: np.ndarray, run: Run) -> np.ndarray:
    """(chunks, classes) softmax -> (classes,) pooled as the run says (mean in 2016) and
    renormalised, as for a recording in training's validation."""
    ids = np.zeros(len(chunk_probs))
    return recording_scores(
        chunk_probs, ids, run.inference.pooling, run.inference.pooling_exponent
    )[1][0]


def extracted_recordings(
    items: list[AudioItem],
    params: SpectrogramParams,
    max_chunks: int,
    window_seconds: float | None,
    workers: int,
) -> Iterator[tuple[Iterator[np.ndarray], float] | str]:
    """`recording_chunks` of each item, in order: (pieces, seconds), or why the file gives
    nothing to rank: unreadable (`AudioError`), or `no_sound`.

    With workers > 1, recordings of up to WORKER_MAX_SECONDS are extracted whole in that many
    worker processes, a few at a time (`tasks_of`: up to TASK_SECONDS of audio), ahead of the
    one the model is on, and handed over through `run_in_workers`' slots in memory where
    possible: two per worker, each as large as the most audio it held (about 50 MB for 10
    minutes). Longer ones are extracted here, streamed, as with workers = 1.
    """

    def extract_here(item: AudioItem) -> tuple[Iterator[np.ndarray], float] | str:
        try:
            source = recording_chunks(item.wav, params, max_chunks, window_seconds=window_seconds)
            first = next(source.pieces)  # a streamed file is read through here, bad data found
            reason = no_sound(item.wav, values_vary(first))
        except AudioError as error:  # bad input; anything else is a bug and stops the run
            return error.reason
        return reason or (itertools.chain([first], source.pieces), source.seconds)

    # the headers are read only where workers may take recordings
    seconds = [streamable_seconds(i.wav, params.sample_rate) for i in items] if workers > 1 else []
    in_worker = [each <= WORKER_MAX_SECONDS for each in seconds]
    if sum(in_worker) < 2:
        yield from map(extract_here, items)
        return
    workers = min(workers, sum(in_worker))
    wavs = [item.wav for item, worker in zip(items, in_worker, strict=True) if worker]
    wav_seconds = [each for each, worker in zip(seconds, in_worker, strict=True) if worker]
    groups = tasks_of(wavs, wav_seconds, workers, TASK_SECONDS, RECORDINGS_PER_TASK)
    given = {item.wav: item.path for item in items}  # error messages name the file as given
    # spawn, not fork: this process runs the model's threads, which a fork does not copy
    in_order = run_in_workers(
        whole_recordings_chunks,
        ((group, params, max_chunks, window_seconds) for group in groups),
        workers,
        lambda task: f"extracting {given[task[0][0]]}",
        multiprocessing.get_context("spawn"),
        handoff=True,
    )
    done: deque[tuple[Iterator[np.ndarray], float] | str] = deque()  # of the last task
    with contextlib.closing(in_order):
        for item, worker in zip(items, in_worker, strict=True):
            if not worker:
                yield extract_here(item)
                continue
            if not done:
                # pieces: views of a slot, valid until the next result is asked for
                pieces, outcomes = next(in_order)
                start = 0
                for outcome in outcomes:
                    if isinstance(outcome, str):
                        done.append(outcome)
                        continue
                    n_pieces, recording_seconds = outcome
                    done.append((iter(pieces[start : start + n_pieces]), recording_seconds))
                    start += n_pieces
            yield done.popleft()


def extraction_workers(processes: int | None, model_on_gpu: bool) -> int:
    """Extraction worker processes for `predict` (1: in turns with the model, in its process).

    processes: what --workers allows, N-1 of them extracting where N > 2 while the model takes
    the N-th core; None (the default): every core but one where the model runs on a GPU, and
    in turns on a CPU, where the model wants every core: on 2 cores workers competing with its
    threads were 30 % slower (BENCHMARKS.md).
    """
    if processes is None:
        processes = (os.cpu_count() or 1) if model_on_gpu else 1
    return processes - 1 if processes > 2 else 1


def recording_pieces(
    items: list[AudioItem],
    params: SpectrogramParams,
    batch_size: int,
    soundscape: bool,
    skipped: list[str],
    progress: tqdm,
    workers: int = 1,
):
    """(key, chunks) pieces of every readable recording, for `predict_pieces`.

    key = (item index, piece is the recording's last, recording seconds). A piece is one
    window in soundscape mode, else at most batch_size chunks. Unreadable files are noted in
    skipped and counted in progress. workers: processes extracting (`extracted_recordings`).
    """
    window = SOUNDSCAPE_WINDOW_SECONDS if soundscape else None
    recordings = extracted_recordings(items, params, batch_size, window, workers)
    for index, (item, recording) in enumerate(zip(items, recordings, strict=True)):
        if isinstance(recording, str):  # a ranking of nothing would only look like an answer
            skipped.append(f"{item.path}: {recording}")  # the file as given, not the cache
            progress.update()
            continue
        pieces, seconds = recording
        piece = next(pieces)
        for following in pieces:
            yield (index, False, seconds), piece
            piece = following
        yield (index, True, seconds), piece


def write_human_csv(writer, item: AudioItem, probs: np.ndarray, run: Run, top: int) -> None:
    row = [as_text_cell(str(item.path)), as_text_cell(item.media_id)]
    for column in top_classes(probs, top):
        class_id = run.classes[column]
        name = run.class_names.get(class_id, "")
        row += [as_text_cell(class_id), as_text_cell(name), f"{probs[column]:.4f}"]
    writer.writerow(row)


def predict(
    run: Run,
    items: list[AudioItem],
    out: Path,
    *,
    top_k: int = 100,
    batch_size: int = 32,
    soundscape: bool = False,
    human_csv: Path | None = None,
    outputs: ChunkOutputs | None = None,
    workers: int = 1,
) -> tuple[int, list[str]]:
    """Write the run file (and the optional CSV for people, tables and embeddings) for items.

    workers: processes extracting the recordings' chunks while the model runs here (1: in this
    process, between model calls).

    Returns (recordings written, skip messages). Both files appear only when complete.
    """
    skipped: list[str] = []
    human_top = min(HUMAN_TOP, len(run.classes))
    written = 0
    with contextlib.ExitStack() as stack:
        if soundscape:
            run_file = SoundscapeWriter(out, run.classes, top_k, SOUNDSCAPE_WINDOW_SECONDS)
        else:
            run_file = RunFileWriter(out, run.classes, top_k)
        stack.enter_context(run_file)
        if human_csv:
            human = csv.writer(stack.enter_context(AtomicWriter(human_csv)).file)
            header = HUMAN_CSV_HEADER.split(",")
            for rank in range(1, human_top + 1):
                header += [f"class_id_{rank}", f"name_{rank}", f"probability_{rank}"]
            human.writerow(header)
        model = stack.enter_context(outputs).wrap(run.model) if outputs else run.model
        progress = stack.enter_context(tqdm(total=len(items), unit="rec", desc="predict"))
        pieces = recording_pieces(
            items, run.params, batch_size, soundscape, skipped, progress, workers
        )
        parts: list[np.ndarray] = []  # chunk softmax of the recording being finished
        batches = predict_pieces(model, pieces, batch_size, overlap=workers > 1)
        for (index, last, seconds), probs in batches:
            if outputs:
                probs = outputs.piece(items[index].media_id, probs, seconds, last)
            parts.append(probs)
            if not last:
                continue
            item, probs = items[index], pooled_probs(np.concatenate(parts), run)
            if soundscape:
                window_probs = np.stack([pooled_probs(part, run) for part in parts])
                run_file.write(item.media_id, window_probs, seconds)
                if outputs:
                    outputs.recording(item.media_id, window_probs, seconds)
            else:
                run_file.write(item.media_id, probs)
            if human_csv:
                write_human_csv(human, item, probs, run, human_top)
            parts = []
            written += 1
            progress.update()
        if not written:
            raise NothingRead(skipped)
    return written, skipped


# ---- tables other tools open, embeddings (predict/detections.py) ------------------------------


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raven",
        type=Path,
        metavar="DIR",
        help="with --soundscape: a Raven Pro selection table per recording, "
        "DIR/<MediaId>.selections.txt",
    )
    parser.add_argument(
        "--audacity",
        type=Path,
        metavar="DIR",
        help="with --soundscape: an Audacity label track per recording, DIR/<MediaId>.labels.txt",
    )
    parser.add_argument(
        "--min-conf",
        type=float,
        help=f"tables keep detections (window, species) at or above this probability "
        f"(default {DEFAULT_MIN_CONF})",
    )
    parser.add_argument(
        "--thresholds",
        metavar="run|FILE",
        help="per-class thresholds instead of --min-conf: 'run' for the run folder's "
        f"{run_files.THRESHOLDS} (chosen on the validation recordings), or a file like it",
    )
    parser.add_argument(
        "--embeddings",
        type=Path,
        metavar="FILE.npz",
        help="also write every chunk's penultimate-layer vector with its MediaId and time",
    )


def check_output_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.raven or args.audacity) and not args.soundscape:
        parser.error("--raven and --audacity need --soundscape (detections are 5 s windows)")
    if args.min_conf is not None and args.thresholds:
        parser.error("give --min-conf or --thresholds, not both")
    if (args.min_conf is not None or args.thresholds) and not (args.raven or args.audacity):
        parser.error("--min-conf and --thresholds select detections for --raven/--audacity")
    if args.min_conf is not None and not 0 <= args.min_conf <= 1:
        parser.error("--min-conf must be between 0 and 1")


def chunk_outputs(args: argparse.Namespace, run: Run, items: list[AudioItem]):
    """The ChunkOutputs the arguments ask for (None: only the run file)."""
    if not (args.raven or args.audacity or args.embeddings):
        return None
    thresholds = np.full(
        len(run.classes), DEFAULT_MIN_CONF if args.min_conf is None else args.min_conf
    )
    for path in thresholds_files(args):
        thresholds, chosen_for = read_thresholds(path, run.classes)
        if chosen_for and chosen_for != run.inference.model_file:
            logger.warning(
                "%s were chosen for %s, applied to %s", path, chosen_for, run.inference.model_file
            )
    return ChunkOutputs(
        [item.media_id for item in items],
        run.classes,
        run.class_names,
        thresholds,
        top_frequency_hz(run.params),
        SOUNDSCAPE_WINDOW_SECONDS,
        soundscape=args.soundscape,
        raven_dir=args.raven,
        audacity_dir=args.audacity,
        embeddings_path=args.embeddings,
    )


def thresholds_files(args: argparse.Namespace) -> list[Path]:
    """The --thresholds file (an input), when one is asked for."""
    if not args.thresholds:
        return []
    return [args.run / run_files.THRESHOLDS if args.thresholds == "run" else Path(args.thresholds)]


def looks_like_human_csv(path: Path) -> bool:
    return (first_line(path) or "").startswith(HUMAN_CSV_HEADER)


# option -> (what says an existing file is one it writes, what the message calls such a file)
FILE_OUTPUT_KINDS = {
    "--out": (looks_like_run_file, "a run file"),
    "--human-csv": (looks_like_human_csv, "a CSV written by --human-csv"),
    "--embeddings": (
        lambda path: is_zip_with(path, "embeddings.npy"),
        "an embeddings file written by --embeddings",
    ),
}


def file_outputs(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    """The files a run writes, by option (None where not asked for); the tables' folders
    are `check_tables`'."""
    return [("--out", args.out), ("--human-csv", args.human_csv), ("--embeddings", args.embeddings)]


def run_predict(args: argparse.Namespace) -> tuple[int, list[str]]:
    """The command's work, once its arguments are valid: (recordings written, skip messages)."""
    check_model_file_name(args.model_file)
    if args.model_file is None and args.run.is_dir():  # before the audio is listed
        check_training_ended(args.run)
    # beside the run file, where it goes: not beside a file an --out link leads to
    work_dir = args.work_dir or args.out.absolute().parent / ".resampled"
    for option, path in file_outputs(args):
        if path and path.suffix.lower() in AUDIO_SUFFIXES:  # the next run would take it as audio
            raise OutputPathError(f"{option} {path}: named like audio, which it is not")
    # the cache's folders are this command's choice, not the user's: never where a link
    # planted there (in a run folder received from someone else, say) leads
    own_folders = [work_dir / "resampled"] if args.work_dir else [work_dir, work_dir / "resampled"]
    for folder in own_folders:
        if folder.is_symlink():
            raise OutputPathError(
                f"{folder} is a link: prediction's resampling cache goes only into a folder "
                "of its own (remove the link, or give --work-dir)"
            )
    audio = args.audio or [args.xml_dir.parent / "wav"]
    for path in audio:
        if work_dir.resolve() in (path.resolve(), *path.resolve().parents):
            raise PredictError(
                f"--work-dir {work_dir} holds the audio {path}: give the cache a folder of its own"
            )
    if args.xml_dir:
        items, skipped = xml_items(args.xml_dir, audio[0], [work_dir])
    else:
        items, skipped = find_audio(audio, [work_dir])
    if not items:
        where = args.xml_dir or ", ".join(map(str, args.audio))
        raise PredictError(
            f"no audio to predict in {where} (looked for {', '.join(sorted(AUDIO_SUFFIXES))})"
        )
    items, refused = valid_media_ids(items)
    skipped += refused
    model_file = args.model_file or read_inference(args.run).model_file
    read_from_run = (run_files.PARAMS, run_files.CLASSES, model_file)
    inputs = [*(args.run / name for name in read_from_run), *(item.path for item in items)]
    claimed = []  # inputs, then the outputs already checked: no two options name one file
    for option, path in file_outputs(args):
        if path:
            own_kind, kind = FILE_OUTPUT_KINDS[option]
            check_output(
                path, own_kind=own_kind, kind=kind, inputs=[*inputs, *claimed], option=option
            )
            claimed.append(path)
    if not items:
        raise PredictError("no recording has a usable MediaId: " + "; ".join(skipped[:5]))
    if args.raven or args.audacity:  # every table's path is known: all checked before any work
        check_tables(
            [item.media_id for item in items],
            args.raven,
            args.audacity,
            inputs=[*inputs, *thresholds_files(args)],
            outputs=file_outputs(args),
        )
    run = load_run(args.run, model_file, args.pooling)
    from train.model_file import list_devices  # Keras, loaded by load_run

    outputs = chunk_outputs(args, run, items)
    cores = os.cpu_count() or 1
    items, failed = resample_items(items, work_dir, run.params.sample_rate, args.workers or cores)
    skipped += failed
    if not items:
        raise NothingRead(skipped)
    try:
        written, failed = predict(
            run,
            items,
            args.out,
            top_k=args.top_k,
            batch_size=args.batch_size,
            soundscape=args.soundscape,
            human_csv=args.human_csv,
            outputs=outputs,
            workers=extraction_workers(args.workers, model_on_gpu=bool(list_devices("gpu"))),
        )
    except NothingRead as error:  # name the files that failed earlier too
        raise NothingRead([*skipped, *error.skipped]) from None
    return written, skipped + failed


def main(argv: list[str] | None = None) -> None:
    """The command; bad input ends it with SystemExit(2), a bug with SystemExit(1)."""
    parser = argparse.ArgumentParser(
        description="Predict species with a trained run folder and write a BirdCLEF run file "
        "(MediaId;ClassId;Probability;Rank, top-k per recording). Audio of any format and "
        "rate is resampled to the run's rate as in training.",
        epilog="examples:\n"
        "  python predict/predict.py --run runs/demo --audio my_recordings/ --out run.csv\n"
        "  python predict/predict.py --run runs/demo --xml-dir data/demo/TestSet/xml "
        "--out run.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        type=Path,
        required=True,
        help="training run folder (params.json, classes.json, model)",
    )
    parser.add_argument(
        "--audio",
        type=Path,
        nargs="+",
        help="audio files or folders (searched recursively); MediaId = file "
        "name without extension. With --xml-dir: the folder of the test audio "
        "(default: the xml folder's sibling wav/)",
    )
    parser.add_argument(
        "--xml-dir", type=Path, help="BirdCLEF test XML folder: MediaId and FileName from the XMLs"
    )
    parser.add_argument("--out", type=Path, required=True, help="run file to write")
    parser.add_argument(
        "--model-file",
        help="model in the run folder (default: the run's inference.json says, else "
        f"{run_files.BEST_VAL_MAP})",
    )
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        help="how a recording's chunk predictions are pooled (default: the run's "
        "inference.json says, else mean as in 2016)",
    )
    parser.add_argument(
        "--top-k",
        type=at_least(1, MAX_RANK),
        default=100,
        help="species per recording (or window), 1-100 (default 100)",
    )
    parser.add_argument(
        "--batch-size",
        type=at_least(1, MAX_BATCH_SIZE),
        default=32,
        help=f"chunks per model call, 1-{MAX_BATCH_SIZE} (default 32)",
    )
    parser.add_argument(
        "--soundscape",
        action="store_true",
        help="rank species per 5 s window: MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability",
    )
    parser.add_argument(
        "--human-csv",
        type=Path,
        help=f"also write a CSV for people: file, top-{HUMAN_TOP} species, probabilities",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="cache for resampled audio (default: .resampled beside --out)"
    )
    parser.add_argument(
        "--workers",
        type=at_least(1, most_workers()),
        metavar="N",
        help=f"processes: N files are resampled at once, then, with N > 2, N-1 extract the "
        f"recordings of up to {WORKER_MAX_SECONDS / 60:g} minutes ahead of the model, which "
        "takes the N-th core (else extraction takes turns with the model in this process). "
        f"Default: all {os.cpu_count()} cores resample; they extract too where the model runs "
        "on a GPU, and extraction takes turns with a model on the CPU",
    )
    add_output_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if not args.audio and not args.xml_dir:
        parser.error("give --audio and/or --xml-dir")
    check_output_arguments(parser, args)
    if args.xml_dir and args.audio and len(args.audio) > 1:
        parser.error("with --xml-dir, --audio is one folder")

    def work() -> int:
        written, skipped = run_predict(args)
        if skipped:
            logger.warning("%d file(s) skipped:\n  %s", len(skipped), "\n  ".join(skipped))
        print(f"Run file with {written} recordings written to {args.out}")
        if args.human_csv:
            print(f"Top-{HUMAN_TOP} species per file for people: {args.human_csv}")
        return 0

    input_errors = (PredictError, ThresholdsError, OutputError, OutputPathError, WorkerLost)
    status = run_command(work, args.verbose, input_errors)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
