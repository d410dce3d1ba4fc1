"""Training data: the split by recording, and batches of chunks streamed from the HDF5 file.

A recording's chunks are never on two sides of a split (chunks of one recording are nearly
copies of each other, so a chunk split scores memory, not generalisation), nor are the
recordings of one group (clips cut from one source recording). `ChunkBatches`
feeds `model.fit` and `model.predict` from the dataset of preprocess/dataset.py, reading only
the rows of each batch, or from an array when the data was loaded into memory; `load_splits`
gives each split its chunks and batches, in memory or streamed.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from preprocess.dataset import (
    Dataset,
    DatasetError,
    check_finite,
    open_dataset,
    read_rows,
    recording_rows,
)
from preprocess.paths import first_names
from preprocess.workers import RowReaders, WorkerLost

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The recordings cannot be split as asked; the message says why."""


class NoClassToValidate(SplitError):
    """No class has two recordings (or groups): no fraction gives a validation split."""


class TrainError(Exception):
    """Input or a run folder that training cannot work with; the message says why."""


def check_labels(dataset: Dataset) -> None:
    """Refuse data that cannot train a classifier: fewer than two classes with labelled
    recordings (a single class gives a MAP of 1.0 that means nothing). Warn of classes
    without a recording (every one skipped by load_data, or given by --classes-from): the
    model keeps an output for each that it never learns."""
    labels = dataset.recordings["label"]
    if not (labels >= 0).any():
        raise TrainError(
            f"{dataset.path}: none of its {len(labels)} recordings is labelled (every label "
            "is -1, as in a test set built with --classes-from): train on labelled data"
        )
    present = np.unique(labels[labels >= 0])
    if len(present) < 2:
        names = [dataset.classes[i] for i in present]
        raise TrainError(
            f"{dataset.path}: its labelled recordings are all of one class ({names[0]}); "
            "training needs at least two classes"
        )
    learnt = set(present.tolist())
    empty = [name for i, name in enumerate(dataset.classes) if i not in learnt]
    if empty:
        logger.warning(
            "%d of %d classes have no recording in %s (load_data skipped every one, or "
            "--classes-from gave the class): the model keeps an output it never learns for %s",
            len(empty),
            len(dataset.classes),
            dataset.path,
            first_names(empty, shown=10),
        )


def split_recordings(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    classes: list[str] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Split recordings into train, val and test, stratified by class where counts allow.

    labels: (recordings,) int class index per recording, -1 for unlabelled (left out).
    groups: (recordings,) a key per recording, or None; recordings of one key (clips cut
    from one source recording) are drawn together, as one recording of the label most of them
    have (`_grouped`), and the fractions are then of the groups. The fractions are of the
    labelled recordings; a split asked for gets at least one. Every class keeps at least one
    recording in train: a class with a single recording goes there (with a warning), where a
    draw would take every recording of a class, one of them stays (see `_draw`), and a group
    drawn that holds a class training lacks goes back to train (`_train_every_class`) unless
    it is the last of its split. Groups that no fraction could split so (every class of one
    source, say) are split by recording instead, with a warning. The same labels and seed
    always give the same split. Returns {"train", "val", "test"}: sorted int arrays of
    recording indices.
    """
    labels = np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) < len(labels):
        logger.warning("%d unlabelled recordings left out", len(labels) - len(labelled))
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SplitError(
            f"validation fraction {val_fraction} and test fraction {test_fraction} must be "
            "in (0, 1) and [0, 1) and add up to less than 1"
        )
    fractions = (val_fraction, test_fraction, seed, classes)
    if groups is not None and len(set(np.asarray(groups, dtype=object)[labelled])) < len(labelled):
        try:
            return _split(labels, *fractions, np.asarray(groups, dtype=object))
        except NoClassToValidate as error:
            logger.warning(
                "the recordings cannot be split with each group on one side (%s): they are "
                "split by recording, so clips of one source recording may be both trained "
                "and validated on",
                error,
            )
    return _split(labels, *fractions, None)


def _split(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    classes: list[str] | None,
    groups: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """`split_recordings` of valid fractions, by group where groups are given."""
    given_labels = labels
    labelled = np.flatnonzero(labels >= 0)
    members, unit, one = None, "recordings", "recording"
    if groups is not None:
        labelled, labels, members = _grouped(labelled, labels, groups)
        unit, one = "groups of recordings", "group of recordings"
    counts = np.bincount(labels[labelled], minlength=len(classes or []))
    if len(labelled) and counts.max() < 2:  # no fraction helps
        raise NoClassToValidate(
            f"each of the {len(labelled)} labelled recordings is of a class of its own: a "
            "validation recording must be of a class that has another, as every class keeps "
            "one for training; add recordings (a long one cut in two will do)"
            if members is None
            else f"no class has two of the {len(labelled)} groups of recordings (each counted "
            "as the class most of its recordings are of), and every class keeps one for "
            "training; add recordings of other sources"
        )
    single = np.flatnonzero(counts == 1)
    if len(single):
        names = [classes[c] if classes else str(c) for c in single]
        logger.warning(
            "%d classes have a single %s, which goes to training: %s",
            len(single),
            one,
            first_names(names, 20),
        )

    def size(fraction: float) -> int:
        return max(1, round(fraction * len(labelled))) if fraction > 0 else 0

    rest, test = _draw(labelled, labels, size(test_fraction), seed, "test", unit)
    after_test = len(test) > 0  # the test split drew first
    train, val = _draw(rest, labels, size(val_fraction), seed, "validation", unit, after_test)
    split = {"train": train, "val": val, "test": test}
    if members is None:
        return split
    split = _train_every_class(split, members, given_labels, classes)
    split = {name: np.sort(np.concatenate([members[i] for i in drawn] + [drawn[:0]]))
             for name, drawn in split.items()}  # fmt: skip
    n_labelled = np.count_nonzero(given_labels >= 0)
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        share = len(split[name]) / n_labelled
        if fraction and not fraction / 2 <= share <= fraction * 2:
            logger.warning(
                "the %s split holds %d of the %d labelled recordings (%.0f %%, asked %.0f %%): "
                "groups of recordings are drawn whole, and these are of unequal sizes",
                name,
                len(split[name]),
                n_labelled,
                100 * share,
                100 * fraction,
            )
    return split


def _grouped(
    labelled: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """The labelled recordings as groups to draw: (firsts, labels, members), where firsts
    holds the first recording of each group, which stands for it, labels is a copy of labels
    that gives each of them the group's most common label (the lowest class index of a tie),
    and members maps each first recording to its group's recordings."""
    of_group: dict[object, list[int]] = {}
    for index in labelled:
        of_group.setdefault(groups[index], []).append(index)
    labels = labels.copy()
    members = {}
    for indices in of_group.values():
        labels[indices[0]] = np.bincount(labels[indices]).argmax()
        members[indices[0]] = np.array(indices, dtype=labelled.dtype)
    logger.info(
        "%d labelled recordings in %d groups: the recordings of a group are drawn together "
        "(clips of one source recording, one audio listed twice)",
        len(labelled),
        len(of_group),
    )
    return np.array(sorted(members), dtype=labelled.dtype), labels, members


def _train_every_class(
    split: dict[str, np.ndarray],
    members: dict[int, np.ndarray],
    labels: np.ndarray,
    classes: list[str] | None,
) -> dict[str, np.ndarray]:
    """The split of groups (each named by its first recording, members: its recordings), with
    the groups drawn for validation or test that hold a class no training recording has moved
    to train, in order, where their split keeps another group; a warning names the classes
    still without a training recording. A group drawn under its most common label can hold
    the only recordings of another class, which the draw does not see."""
    trained = set(labels[np.concatenate([members[i] for i in split["train"]])].tolist())
    split = dict(split)
    moved = 0
    for name in ("val", "test"):
        for first in split[name]:
            if set(labels[members[first]].tolist()) - trained and len(split[name]) > 1:
                split[name] = split[name][split[name] != first]
                split["train"] = np.sort(np.append(split["train"], first))
                trained |= set(labels[members[first]].tolist())
                moved += 1
    if moved:
        logger.warning(
            "%d groups of recordings go back to training from validation or test: each holds "
            "recordings of a class that training had none of",
            moved,
        )
    untrained = sorted(set(labels[labels >= 0].tolist()) - trained)
    if untrained:
        logger.warning(
            "%d classes have no recording in training: their recordings are all in a group of "
            "mostly other classes, the last of its split: %s",
            len(untrained),
            first_names([classes[c] if classes else str(c) for c in untrained], 20),
        )
    return split


def _draw(
    indices: np.ndarray,
    labels: np.ndarray,
    size: int,
    seed: int,
    name: str,
    unit: str,
    after_test: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `size` of `indices` (recordings, or groups: as `unit` says in messages) for the
    split `name`, stratified by label when sklearn can; after_test: the test split drew from
    them first.

    Every class keeps at least one recording undrawn: the last of its class among `indices`
    is never drawn, and where a draw took every recording of a class, one goes back in
    exchange for another (`_keep_every_class`). Returns (kept, drawn), both sorted.
    """
    if size == 0:
        return np.sort(indices), np.array([], dtype=indices.dtype)
    counts = np.bincount(labels[indices])
    spare = indices[counts[labels[indices]] >= 2]
    pinned = indices[counts[labels[indices]] < 2]
    spare_classes = np.count_nonzero(counts >= 2)
    if size > len(spare) - spare_classes:
        raise SplitError(
            f"{len(indices)} {unit} ({len(spare)} of {spare_classes} classes with two or "
            f"more) are too few to draw a {name} split of {size} {unit} and keep one of every "
            "class for training: ask for a smaller fraction"
            + (" (the test split drew first: --test-fraction 0 leaves all)" if after_test else "")
        )
    try:
        kept, drawn = train_test_split(
            spare, test_size=size, stratify=labels[spare], random_state=seed
        )
    except ValueError as reason:  # e.g. fewer recordings drawn than there are classes
        logger.warning(
            "the %s split of %d %s is NOT stratified (scikit-learn: %s, counting the "
            "classes with two or more): some classes may be missing from it (each keeps a "
            "recording for training)",
            name,
            size,
            unit,
            reason,
        )
        kept, drawn = train_test_split(spare, test_size=size, random_state=seed)
    kept, drawn = _keep_every_class(kept, drawn, labels, seed)
    return np.sort(np.concatenate([pinned, kept])), np.sort(drawn)


def _keep_every_class(
    kept: np.ndarray, drawn: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Give back to `kept` one recording of each class that `drawn` took whole, in exchange
    for one of the class with the most recordings kept, so the draw keeps its size.

    A draw (unstratified, or stratified with rounding against a small class) can take every
    recording of a class, which then has nothing to train on. The exchange only touches such
    classes: a draw that kept every class is returned as it is, so splits that were fine
    before stay the same. `kept` must hold at least as many recordings as there are classes
    in `kept` and `drawn` together (`_draw` checks). Which recordings move is chosen by
    `seed`: the same input gives the same split.
    """
    lost = np.setdiff1d(labels[drawn], labels[kept])
    if not len(lost):
        return kept, drawn
    logger.warning(
        "%d classes had every recording drawn (for validation or test): one recording of each "
        "stays in training, exchanged for one of the classes with the most training recordings",
        len(lost),
    )
    rng = np.random.default_rng(seed)
    for label in lost:
        # the largest class spares a recording best (it has two or more while any class has none)
        donor = np.argmax(np.bincount(labels[kept]))
        back = rng.choice(drawn[labels[drawn] == label])
        out = rng.choice(kept[labels[kept] == donor])
        kept = np.append(kept[kept != out], back)
        drawn = np.append(drawn[drawn != back], out)
    return kept, drawn


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory available now: Linux's MemAvailable (free memory plus the page cache
    it can reclaim: after resampling gigabytes of audio, much of the memory is cache), else
    the free pages, or None where the system says neither."""
    try:
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(n_rows: int, row_shape: tuple, share: float = 0.5) -> bool:
    """Whether n_rows float32 rows take less than `share` of the free memory."""
    free = available_memory()
    return free is not None and n_rows * int(np.prod(row_shape)) * 4 < share * free


_STARTING_READERS = threading.Lock()


class ChunkBatches(keras.utils.PyDataset):
    """Batches (x (b, n_bins, chunk_frames, 1) float32, y (b, classes) float32 targets that sum
    to 1: one-hot, but for background species).

    source: the HDF5 dataset path (rows are read per batch), or an array already holding
        x[rows] in order: numpy, or a backend tensor on the accelerator
        (`keras.ops.convert_to_tensor`), whose batches are gathered there without a copy from
        the host per step.
    rows: (n,) sorted row indices of the chunks; labels: (n,) their class indices.
    background: (n, classes) bool, the background species of each chunk's recording, which
        y gives background_weight each beside the label's 1, the row then scaled to sum 1
        (None: y is one-hot).
    shuffle: new random batches every epoch (each batch's rows are read in sorted order).
    readers: processes that read each batch of a streamed source together
        (preprocess/workers.py's `RowReaders`; 1: read in the asking process). They split
        every batch, so they need not guess which one Keras asks for next (fit asks in a
        random order), and live as long as this object.
    multiple_of: the devices each batch is split over (JAX's DataParallel needs every batch
        divisible by them): a last batch short of a multiple is padded with copies of its
        last chunk, which `predict_rows` drops again.
    kwargs: PyDataset's workers (threads) and max_queue_size.
    """

    def __init__(
        self,
        source,
        rows: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        readers: int = 1,
        multiple_of: int = 1,
        background: np.ndarray | None = None,
        background_weight: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
        self.background, self.background_weight = background, background_weight
        self.source = Path(source) if isinstance(source, (str, os.PathLike)) else source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)
        self.n_classes, self.batch_size, self.shuffle = n_classes, batch_size, shuffle
        self.seed = seed
        self.readers = readers if isinstance(self.source, Path) else 1
        self.multiple_of = multiple_of
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
        self._dataset: Dataset | None = None
        self._pid: int | None = None
        self._row_readers: RowReaders | None = None
        self.read_error: Exception | None = None  # a damaged row, or a reader's end, met

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        return self.padded(self.batch(index))

    def batch(self, index: int) -> tuple:
        """Batch `index` as it is, before `padded`: (x, y)."""
        positions = self.positions(index)
        x = self.chunks(positions)
        y = np.zeros((len(positions), self.n_classes), dtype=np.float32)
        weighted = self.background is not None and self.background_weight > 0
        if weighted:
            y[self.background[positions]] = self.background_weight
        y[np.arange(len(positions)), self.labels[positions]] = 1
        if weighted:  # one-hot rows (the 2016 recipe's) sum to 1 already
            y /= y.sum(axis=1, keepdims=True)
        return x, y

    def padded(self, batch: tuple) -> tuple:
        """Each array of batch with copies of its last row up to a multiple of multiple_of."""
        missing = -len(batch[0]) % self.multiple_of
        if not missing:
            return batch
        return tuple(
            np.concatenate([part, np.repeat(part[-1:], missing, axis=0)])
            if isinstance(part, np.ndarray)
            else keras.ops.concatenate([part, keras.ops.repeat(part[-1:], missing, axis=0)])
            for part in batch
        )

    def positions(self, index: int) -> np.ndarray:
        """The sorted positions (indices into `rows`) of batch `index` this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        return np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])

    def chunks(self, positions: np.ndarray):
        """x of the chunks at sorted positions, from where the source holds them (a backend
        tensor gives a tensor, gathered on its device)."""
        if isinstance(self.source, np.ndarray):
            return self.source[positions]
        if not isinstance(self.source, Path):
            return keras.ops.take(self.source, positions, axis=0)
        return self.read(self.rows[positions])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """X[rows] of the file source, for sorted unique rows, by the readers."""
        try:
            if self.readers < 2:
                x = read_rows(self._hdf5().X, rows)
                check_finite(x, rows, self.source)
            else:  # the readers check their rows
                with _STARTING_READERS:  # threads (PyDataset's workers) may ask at once
                    if self._row_readers is None:
                        shape = self._hdf5().X.shape[1:]
                        self._row_readers = RowReaders(self.source, self.readers, shape)
                x = self._row_readers.read(rows)
        except (DatasetError, WorkerLost) as error:
            self.read_error = error  # for read_errors_reported
            raise
        return x

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.rows))

    def _hdf5(self) -> Dataset:
        # h5py handles do not survive fork: a process that has a copy opens its own
        if self._dataset is None or self._pid != os.getpid():
            self._dataset, self._pid = open_dataset(self.source), os.getpid()
        return self._dataset

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None, "_pid": None, "_row_readers": None}


@contextmanager
def read_errors_reported(*batches: ChunkBatches) -> Iterator[None]:
    """Raise the DatasetError of a damaged row that one of `batches` met while fit or predict
    ran, in place of what the backend made of it (TensorFlow: an UnknownError whose message
    holds the reader thread's traceback)."""
    try:
        yield
    except Exception:
        for each in batches:
            if each.read_error is not None:
                raise each.read_error from None
        raise


def predict_rows(model: keras.Model, batches: ChunkBatches) -> np.ndarray:
    """model.predict of every chunk of batches, in order: (len(batches.rows), outputs), the
    copies that padded the last batch (`ChunkBatches.padded`) dropped."""
    return model.predict(batches, verbose=0)[: len(batches.rows)]


def check_batch_size(dataset: Dataset, split: dict, batch_size: int, multiple_of: int) -> None:
    """Refuse a batch size the GPUs cannot split; warn of one larger than the training data
    (a few recordings, trying the tool out), which then trains in one batch an epoch."""
    if batch_size % multiple_of:
        raise TrainError(
            f"batch size {batch_size} does not split over {multiple_of} GPUs: give a "
            f"--batch-size that is a multiple of {multiple_of}"
        )
    training_chunks = int(dataset.recordings["n_chunks"][split["train"]].sum())
    if batch_size > training_chunks:  # each split's batches hold at most its chunks
        logger.warning(
            "batch size %d is larger than the %d training chunks: each epoch is one batch of "
            "all of them",
            batch_size,
            training_chunks,
        )


class SplitData:
    """The chunks of one split: their rows in the file, recording and label, and batches.

    which: sorted recording indices; the chunks are read into memory when in_memory.
    batch_size, shuffle, seed: their batches' (`ChunkBatches`); workers: processes that read
    a streamed source, or threads that gather batches of chunks in memory.
    background_weight: each background species' share of a chunk's target beside its label's
    1 (`ChunkBatches`; 0: one-hot targets).
    """

    def __init__(
        self,
        dataset: Dataset,
        which: np.ndarray,
        in_memory: bool,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        workers: int = 1,
        multiple_of: int = 1,
        background_weight: float = 0.0,
    ):
        recordings = dataset.recordings
        self.recordings = which
        self.rows = recording_rows(recordings, which)
        self.chunk_recording = np.repeat(which, recordings["n_chunks"][which])
        source = read_rows(dataset.X, self.rows) if in_memory else dataset.path
        if in_memory:
            check_finite(source, self.rows, dataset.path)
        background = None
        if background_weight and recordings["background"][which].any():
            background = recordings["background"][self.chunk_recording].astype(bool)
        self.batches = ChunkBatches(
            source,
            self.rows,
            recordings["label"][self.chunk_recording],
            len(dataset.classes),
            max(1, min(batch_size, len(self.rows))),
            shuffle=shuffle,
            seed=seed,
            readers=workers,  # processes for a streamed source (h5py: one call at a time)
            workers=1 if not in_memory else workers,  # threads for chunks in memory
            multiple_of=multiple_of,
            background=background,
            background_weight=background_weight,
        )

    def __len__(self) -> int:
        return len(self.rows)


def load_splits(
    dataset: Dataset, split: dict, args: argparse.Namespace, multiple_of: int = 1
) -> dict[str, SplitData]:
    """The chunks of each split, in memory (--in-memory yes, or auto and they fit) or
    streamed from the file; batches of --batch-size, read by --workers, shuffled by --seed
    and given --background-weight (train only), padded to a multiple of multiple_of
    (ChunkBatches)."""
    n_chunks = {name: int(dataset.recordings["n_chunks"][split[name]].sum()) for name in SPLITS}
    row_shape = dataset.X.shape[1:]
    n_rows = sum(n_chunks.values())
    in_memory = args.in_memory == "yes" or (
        args.in_memory == "auto" and fits_in_memory(n_rows, row_shape)
    )
    start = time.perf_counter()
    data = {
        name: SplitData(
            dataset,
            split[name],
            in_memory,
            args.batch_size,
            shuffle=name == "train",
            seed=args.seed,
            workers=args.workers,
            multiple_of=multiple_of,
            background_weight=args.background_weight if name == "train" else 0.0,
        )
        for name in SPLITS
    }
    for name in SPLITS:
        logger.info("%-5s %6d recordings %8d chunks", name, len(split[name]), n_chunks[name])
    if in_memory:
        logger.info(
            "%d chunks (%.2f GB) read into memory in %.1f s",
            n_rows,
            n_rows * np.prod(row_shape) * 4 / 1e9,
            time.perf_counter() - start,
        )
    else:
        logger.info("chunks streamed from %s, batch by batch", dataset.path)
    return data


def place_on_accelerator(data: dict[str, SplitData], memory: int | None) -> bool:
    """Move the chunks each split holds in host memory to the GPU when together they take
    at most half of its `memory` (bytes; None: no GPU, or its size is unknown), so that
    batches are gathered there: no copy from the host per step. On an H100, BirdClef trained
    at 62,660 samples/s that way against 9,792 from host memory (BENCHMARKS.md, GPU).
    Returns whether they moved."""
    held = [each.batches for each in data.values() if isinstance(each.batches.source, np.ndarray)]
    n_bytes = sum(batches.source.nbytes for batches in held)
    if memory is None or not held or n_bytes > memory / 2:
        return False
    for batches in held:
        batches.source = keras.ops.convert_to_tensor(batches.source)
    logger.info("%.2f GB of chunks moved to the GPU's memory", n_bytes / 1e9)
    return True


def sample_chunks(batches: ChunkBatches, dataset: Dataset, most: int, seed: int) -> np.ndarray:
    """Up to `most` random chunks (sorted rows) of batches, from memory or the file."""
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.permutation(len(batches.rows))[:most])
    if isinstance(batches.source, np.ndarray):
        return batches.source[positions]
    return read_rows(dataset.X, batches.rows[positions])
