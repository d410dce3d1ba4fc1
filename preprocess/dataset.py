"""The chunk dataset on disk: HDF5 written whole or not at all, copied raw, and read back.

One row per chunk (5 s in the 2016 recipe); a recording's chunks are consecutive and in time order.

    X            float32 (N, n_bins, chunk_frames, 1)  one HDF5 chunk per row, compressed
    y            uint8   (N, C)   one-hot foreground class (all zero when unlabelled)
    label        int32   (N,)     class index, -1 when unlabelled
    background   uint8   (N, C)   multi-hot background species among the classes
    MediaId, ClassId, file  utf-8 (N,)  ('' ClassId when unlabelled; file relative to wav dir)
    chunk_index  int32   (N,)     position of the chunk inside its recording
    recordings/  one row per recording, same order: MediaId, ClassId, file, first_row int64,
                 n_chunks int32, n_frames int32 (after the noise filter), duration_s float32,
                 label int32, background uint8 (n_rec, C), input_key utf-8 (what the
                 recording was made from, see RecordingChunks), group utf-8 (recordings of
                 one audio, which a split keeps on one side; '' for one not grouped);
                 input_key and group read as '' from older files

Root attributes: format, format_version, params (SpectrogramParams JSON), classes (JSON list,
the column order of y), class_names (JSON {class_id: name}), source (JSON), and from the
writer here compression, inputs_digest (what the file was made from, to tell a rerun) and
settings_digest (the settings alone, to tell which stored recordings a rerun can keep).

HDF5 files are not crash-safe, so a file is never written in place: `atomic_dataset` fills
a temporary file and renames it once complete, so a file that exists is whole. load_data's
workers each write the recordings of one task to a shard `part-RUN-NNNNN.h5` in a parts folder
(every shard a dataset in the format above), so that a kill -9 loses only the tasks in
flight; `StoredRecordings` copies recordings from shards or an earlier output into the final
file with X's compressed chunks copied raw (`read_direct_chunk` / `write_direct_chunk`): a
disk copy, not a decompression and recompression.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

import h5py
import hdf5plugin  # registers the Blosc2 filter with HDF5, for h5py and every reader here
import numpy as np

from preprocess.params import FORMAT_VERSION, SpectrogramParams
from preprocess.paths import HDF5_SIGNATURE, is_hdf5, partial_name

FORMAT = "birdclef-chunks"
# h5py filter settings of X per --compression choice; all lossless. "blosc2-lz4" (the
# default): byte shuffle then LZ4 inside Blosc2, through hdf5plugin's filter; its rows
# decode about three times faster per core than gzip's (benchmarks/bench_hdf5.py), for 10 %
# more bytes: decoding is what limits streamed training. "gzip" is HDF5's standard deflate
# filter (with byte shuffling), which every HDF5 tool reads without a plugin; its chunks are
# compressed here with zlib's run-length strategy: on these spectrograms, mostly zeros
# where the noise filter dropped cells, that is faster than deflate level 1 and compresses
# better. lzf is faster to write but only h5py reads it.
COMPRESSIONS = {
    "blosc2-lz4": dict(hdf5plugin.Blosc2("lz4", 5, hdf5plugin.Blosc2.SHUFFLE)),
    "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
    "lzf": {"compression": "lzf", "shuffle": True},
    "none": {},
}
DEFAULT_COMPRESSION = "blosc2-lz4"
# Blosc2 compresses each chunk on one thread (the filter reads this variable at every call; a
# value the user set is kept). Otherwise it starts and stops a pool of 4 threads for every
# chunk, which costs more than compressing the chunk: 0.3-1 ms against 0.2 ms per row on the
# 2-core machine (BENCHMARKS.md); load_data runs a compressor per core instead. Decoding
# starts no threads either way, and the values stored are the same.
os.environ.setdefault("BLOSC_NTHREADS", "1")
REQUIRED_ATTRS = ("format", "format_version", "params", "classes", "class_names", "source")
ROW_DATASETS = ("X", "y", "label", "background", "MediaId", "ClassId", "file", "chunk_index")
RECORDING_DATASETS = (
    "MediaId",
    "ClassId",
    "file",
    "first_row",
    "n_chunks",
    "n_frames",
    "duration_s",
    "label",
    "background",
)
# written by this code, but absent from files of older versions: read as ''
OPTIONAL_RECORDING_DATASETS = ("input_key", "group")
STRING = h5py.string_dtype("utf-8")
SHARD_PATTERN = "part-*.h5"
SHARD_TEMPORARY_PATTERN = f"{SHARD_PATTERN}.tmp"  # a shard cut short (`atomic_dataset`)


class DatasetError(Exception):
    """A file that is not a usable chunk dataset; the message names the file and says why."""


class DatasetNotOpened(DatasetError):
    """An HDF5 file that HDF5 would not open: damaged, or held elsewhere (another program's
    lock on it, too many files open); which of them, its message cannot tell."""


@dataclass(frozen=True)
class DatasetInfo:
    """What every row of a dataset shares: the root attributes."""

    params: SpectrogramParams
    classes: list[str]
    class_names: dict[str, str]
    source: dict = field(default_factory=dict)
    compression: str = DEFAULT_COMPRESSION
    inputs_digest: str = ""  # identifies the inputs, to recognise a rerun of the same job
    settings_digest: str = ""  # identifies the settings alone (parameters, classes, ...)


class StoredChunk(NamedTuple):
    """One row of X as HDF5 stores it: the filtered bytes and which filters were skipped."""

    filter_mask: int
    data: bytes


@dataclass
class RecordingChunks:
    """One recording, extracted and ready to append: labels and its compressed chunks."""

    media_id: str
    class_id: str  # '' when unlabelled
    file: str  # relative to the wav dir
    label: int  # class index, -1 when unlabelled
    background: np.ndarray  # (C,) uint8 multi-hot
    n_frames: int  # frames after the noise filter
    duration_s: float
    chunks: Sequence[StoredChunk]  # rows of X in time order, from `compress_chunks` (or
    # `ChunksOnDisk`: a copy holds one chunk at a time, however long the recording)
    input_key: str = ""  # what the recording was made from (load_data: its labels and its
    # file's size, modification and status-change times), so a rerun keeps it only while
    # that is unchanged
    group: str = ""  # metadata.Recording.group: recordings of one audio; '' when not grouped


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class Dataset:
    """An open chunk dataset. Use as a context manager, or call close().

    `recordings` holds the whole `recordings/` group in memory (strings as str), which is
    what splitting by recording needs; rows stay on disk behind the h5py handles. Read
    rows of X with `read_rows`, the fastest way (benchmarks/bench_hdf5.py).
    """

    path: Path
    file: h5py.File
    info: DatasetInfo
    recordings: dict[str, np.ndarray]

    @property
    def params(self) -> SpectrogramParams:
        return self.info.params

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def class_names(self) -> dict[str, str]:
        return self.info.class_names

    @property
    def X(self) -> h5py.Dataset:
        return self.file["X"]

    @property
    def y(self) -> h5py.Dataset:
        return self.file["y"]

    @property
    def label(self) -> h5py.Dataset:
        return self.file["label"]

    def __len__(self) -> int:
        return len(self.file["X"])

    def __getitem__(self, name: str) -> h5py.Dataset:
        return self.file[name]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(x: h5py.Dataset, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x[rows] as float32 for sorted unique rows: (len(rows), *x.shape[1:]), written into
    `out` (C-contiguous float32 of that shape) where given.

    Read one contiguous run of rows at a time through HDF5's filters, since h5py's list
    indexing (x[[3, 9, 40]]) is several times slower. h5py serialises its calls within a
    process, so reading scales with processes (preprocess/workers.py's RowReaders), not
    threads. A row HDF5 cannot decode raises DatasetError naming it.
    """
    if out is None:
        out = np.empty((len(rows), *x.shape[1:]), dtype=np.float32)
    if not len(rows):
        return out
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, end in zip(
        np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]]), strict=True
    ):
        try:
            x.read_direct(out, np.s_[rows[start] : rows[end - 1] + 1], np.s_[start:end])
        except OSError:
            _raise_damaged_row(x, rows[start:end])
    return out


def check_finite(x: np.ndarray, rows: np.ndarray, path: Path) -> None:
    """Raise DatasetError naming the first of `rows` (of X in path) whose chunk x holds NaN
    or infinity, which preprocess/load_data.py never writes (training would go on silently
    with a useless model)."""
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))  # (n,); n may be 0
    if not finite.all():
        raise DatasetError(
            f"row {rows[np.argmin(finite)]} of X in {path} holds NaN or infinite values, "
            "which preprocess/load_data.py never writes: rebuild the file with it"
        )


def _raise_damaged_row(x: h5py.Dataset, rows: np.ndarray) -> None:
    """Raise DatasetError naming the first of `rows` that HDF5 cannot decode."""
    row = np.empty(x.shape[1:], dtype=np.float32)
    for index in rows:
        try:
            x.read_direct(row, np.s_[int(index)])
        except OSError as reason:
            raise DatasetError(
                f"row {index} of X in {x.file.filename} is damaged: {reason}"
            ) from None
    raise DatasetError(f"rows {rows[0]}-{rows[-1]} of X in {x.file.filename} are unreadable")


def is_chunk_dataset(path: Path) -> bool:
    """Whether path is an HDF5 file that load_data.py wrote (its root's "format"), of any
    version: one it may replace. Any other HDF5 file (Keras weights, another project's data)
    is someone's."""
    if not is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("format") == FORMAT
    except (OSError, ValueError, RuntimeError):  # damaged beyond its signature
        return False


def not_opened(path: Path) -> type[DatasetError]:
    """The error of an HDF5 open of path that failed: DatasetError where its first bytes are
    not HDF5's signature (not a dataset at all), else DatasetNotOpened, as where they cannot
    even be read (too many files open, no permission)."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(HDF5_SIGNATURE))
    except OSError:
        return DatasetNotOpened
    return DatasetNotOpened if head == HDF5_SIGNATURE else DatasetError


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a chunk dataset read-only after checking it is one this code can read.

    Raises `DatasetError` when the file is missing, not HDF5, lacks attributes or datasets,
    comes from another format version, or its shapes disagree with its parameters.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise not_opened(path)(f"{path}: not a readable HDF5 file ({error})") from error
    try:
        _check_self_contained(h5, path)
        info = _read_info(h5, path)
        missing = [name for name in ROW_DATASETS if name not in h5]
        missing += [
            f"recordings/{name}" for name in RECORDING_DATASETS if f"recordings/{name}" not in h5
        ]
        if missing:
            raise DatasetError(f"{path}: incomplete dataset, missing {missing}")
        recordings = read_recordings(h5)
        _check_shapes(h5, info, recordings, path)
    except DatasetError:
        h5.close()
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:  # what h5py raises on damage
        h5.close()
        raise DatasetError(
            f"{path}: damaged, cannot read its tables ({type(error).__name__}: {error}); "
            "rebuild it with preprocess/load_data.py"
        ) from error
    except BaseException:
        h5.close()
        raise
    return Dataset(path, h5, info, recordings)


def _check_self_contained(h5: h5py.File, path: Path) -> None:
    """DatasetError for data kept outside the file: an external link, a dataset stored in
    other files (external storage) or made of them (virtual). HDF5 reads any file such a
    received dataset names as if it were its own, into chunks that training, images and
    conversion then write out elsewhere."""

    def problem(name: str, link) -> str | None:  # not None: the visit stops, returning it
        if isinstance(link, h5py.ExternalLink):
            return f"{name} links to another file, {link.filename}"
        node = h5.get(name) if isinstance(link, h5py.HardLink) else None
        if isinstance(node, h5py.Dataset) and (node.external or node.is_virtual):
            return f"{name} is stored in other files, not in this one"
        return None

    found = h5.visititems_links(problem)  # an exception raised inside would not pass HDF5
    if found:
        raise DatasetError(f"{path}: {found}")


def _read_info(h5: h5py.File, path: Path) -> DatasetInfo:
    missing = [name for name in REQUIRED_ATTRS if name not in h5.attrs]
    if missing:
        raise DatasetError(
            f"{path}: missing attributes {missing}; not a dataset written by "
            "preprocess/load_data.py"
        )
    attrs = {name: h5.attrs[name] for name in h5.attrs}
    if attrs["format"] != FORMAT:
        raise DatasetError(f"{path}: format {attrs['format']!r}, expected {FORMAT!r}")
    if attrs["format_version"] != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: written by preprocessing format version {attrs['format_version']}, this "
            f"code reads version {FORMAT_VERSION}; rebuild it with preprocess/load_data.py"
        )
    try:
        params = SpectrogramParams.from_json(attrs["params"])
        classes = json.loads(attrs["classes"])
        class_names = json.loads(attrs["class_names"])
        source = json.loads(attrs["source"])
    except (ValueError, TypeError) as error:
        raise DatasetError(f"{path}: unreadable attributes: {error}") from error
    return DatasetInfo(
        params,
        classes,
        class_names,
        source,
        compression=attrs.get("compression", ""),
        inputs_digest=attrs.get("inputs_digest", ""),
        settings_digest=attrs.get("settings_digest", ""),
    )


def read_recordings(h5: h5py.File) -> dict[str, np.ndarray]:
    """The `recordings/` group as {name: array}; strings as object arrays of str. An optional
    dataset absent from an older file reads as '' for every recording."""
    group = h5["recordings"]
    table = {
        name: group[name].asstr()[...] if group[name].dtype.kind == "O" else group[name][...]
        for name in RECORDING_DATASETS
    }
    for name in OPTIONAL_RECORDING_DATASETS:
        present = name in group
        table[name] = (
            group[name].asstr()[...] if present else np.full(len(group["MediaId"]), "", object)
        )
    return table


def _check_shapes(h5: h5py.File, info: DatasetInfo, recordings: dict, path: Path) -> None:
    params, n_classes = info.params, len(info.classes)
    n_rows = len(h5["X"])
    expected = {
        "X": (n_rows, params.n_bins, params.chunk_frames, 1),
        "y": (n_rows, n_classes),
        "background": (n_rows, n_classes),
        "recordings/background": (len(recordings["MediaId"]), n_classes),
    }
    for name, shape in expected.items():
        if h5[name].shape != shape:
            raise DatasetError(f"{path}: {name} has shape {h5[name].shape}, expected {shape}")
    n_recordings = len(recordings["MediaId"])
    for name, values in recordings.items():
        if len(values) != n_recordings:
            raise DatasetError(
                f"{path}: recordings/{name} has {len(values)} rows, recordings/MediaId "
                f"{n_recordings}"
            )
    for name in ("MediaId", "ClassId", "file", "input_key", "group"):
        if recordings[name].dtype != object:
            raise DatasetError(
                f"{path}: recordings/{name} holds {recordings[name].dtype}, not text"
            )
    n_chunks = recordings["n_chunks"].astype(np.int64)
    if (n_chunks < 0).any() or n_chunks.sum() != n_rows:
        raise DatasetError(f"{path}: recordings/n_chunks does not add up to {n_rows} rows")
    if not np.array_equal(recordings["first_row"], np.cumsum(n_chunks) - n_chunks):
        raise DatasetError(f"{path}: recordings/first_row does not follow recordings/n_chunks")
    labels = recordings["label"]
    if len(labels) and (labels.min() < -1 or labels.max() >= n_classes):
        raise DatasetError(
            f"{path}: recordings/label holds {labels.min()}..{labels.max()}, not class "
            f"indices of its {n_classes} classes (or -1)"
        )


def content_digest(dataset: Dataset, sampled: int = 256) -> str:
    """What a model trained on the dataset learned from, whatever the folders and file times:
    its preprocessing parameters and classes, each recording's MediaId, label, background
    species, length and chunk count, and the first chunk of up to `sampled` recordings spread
    over the file. Another task's recordings, even of the same names, labels and lengths,
    give another digest; the same recordings loaded again from a moved folder do not."""
    digest = hashlib.sha256()
    digest.update(json.dumps([dataset.params.to_json(), dataset.classes, dataset.class_names],
                             sort_keys=True).encode())  # fmt: skip
    recordings = dataset.recordings
    media_ids = "\0".join(map(str, recordings["MediaId"]))
    digest.update(media_ids.encode("utf-8", errors="surrogatepass"))
    for name in ("label", "background", "n_chunks", "duration_s"):
        digest.update(np.ascontiguousarray(recordings[name]).tobytes())
    first_rows = recordings["first_row"]
    picks = np.unique(
        np.linspace(0, len(first_rows) - 1, min(sampled, len(first_rows))).astype(int)
    )
    digest.update(read_rows(dataset.X, np.sort(first_rows[picks])).tobytes())
    return digest.hexdigest()


def recording_rows(recordings: dict[str, np.ndarray], which: np.ndarray) -> np.ndarray:
    """Row indices (sorted by recording order of `which`) of the chunks of recordings `which`.

    which: indices into the recordings table (or a boolean mask over it). Returns int64 (n,).
    """
    which = np.asarray(which)
    which = np.flatnonzero(which) if which.dtype == bool else which.astype(np.intp)
    starts, counts = recordings["first_row"][which], recordings["n_chunks"][which]
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets


# ---------------------------------------------------------------------------------------------
# Writing


def compress_chunks(chunks: np.ndarray, compression: str) -> list[StoredChunk]:
    """Chunks (n, n_bins, chunk_frames) float32 -> the n rows of X as the file stores them.

    Done by the workers, so compression runs in parallel and the writer only copies bytes.
    """
    chunks = np.ascontiguousarray(chunks, dtype="<f4")
    if compression == "gzip":
        return [StoredChunk(0, shuffle_deflate(chunk)) for chunk in chunks]
    if compression == "none":
        return [StoredChunk(0, chunk.tobytes()) for chunk in chunks]
    return _through_hdf5_filters(chunks, compression)


def shuffle_deflate(chunk: np.ndarray) -> bytes:
    """What HDF5's shuffle + deflate filters would store for one chunk (any zlib stream
    inflates the same): bytes regrouped by significance, then zlib with run-length coding."""
    shuffled = chunk.view(np.uint8).reshape(-1, chunk.itemsize).T.tobytes()
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return packer.compress(shuffled) + packer.flush()


def _through_hdf5_filters(chunks: np.ndarray, compression: str) -> list[StoredChunk]:
    """Each chunk run through HDF5's own filter pipeline: written at once into the first rows
    of an in-memory dataset, each row then read back as stored."""
    rows = _scratch_rows(compression, chunks.shape[1:], os.getpid())
    if len(rows) < len(chunks):
        rows.resize(len(chunks), axis=0)
    rows.write_direct(chunks[..., None], dest_sel=np.s_[: len(chunks)])
    return [StoredChunk(*rows.id.read_direct_chunk((row, 0, 0, 0))) for row in range(len(chunks))]


@functools.lru_cache(maxsize=8)
def _scratch_rows(compression: str, chunk_shape: tuple[int, int], pid: int) -> h5py.Dataset:
    """A dataset with X's filters in an in-memory file, kept for the process (pid: a forked
    worker makes its own): opening a file per recording cost 10 ms, far more than
    compressing a short recording's chunk. One row, grown to the most chunks compressed at
    once."""
    name = f"compress-{pid}-{compression}-{chunk_shape[0]}x{chunk_shape[1]}"  # one per shape
    scratch = h5py.File(name, "w", driver="core", backing_store=False)
    return scratch.create_dataset(
        "X",
        shape=(1, *chunk_shape, 1),
        dtype="<f4",
        chunks=(1, *chunk_shape, 1),
        maxshape=(None, *chunk_shape, 1),
        **COMPRESSIONS[compression],
    )


class DatasetWriter:
    """Writes one dataset file as recordings are appended: X rows go to disk at once, the
    small per-row and per-recording datasets (kept in memory meanwhile) at close()."""

    def __init__(self, path: str | os.PathLike, info: DatasetInfo, mode: str = "w"):
        """mode: h5py's "w" (replace a file at path) or "x" (create it: fail if the name, or
        a link, is there)."""
        self.info = info
        self.recordings: list[RecordingChunks] = []  # without their chunks
        self.n_chunks: list[int] = []
        self.n_rows = 0  # sum(n_chunks), kept as they are appended
        self.h5 = h5py.File(path, mode)
        _create_root(self.h5, info, n_rows=0)
        self.x = self.h5["X"]  # looked up once, not per recording (h5py: 30 us a lookup)
        self.capacity = 0  # rows of X: doubled when full, cut to n_rows at close()

    def append(self, item: RecordingChunks) -> None:
        start = self.n_rows
        if start + len(item.chunks) > self.capacity:  # a resize costs more than a short clip
            self.capacity = max(start + len(item.chunks), 2 * self.capacity)
            self.x.resize(self.capacity, axis=0)
        for offset, stored in enumerate(item.chunks):
            self.x.id.write_direct_chunk((start + offset, 0, 0, 0), stored.data, stored.filter_mask)
        self.recordings.append(replace(item, chunks=[]))
        self.n_chunks.append(len(item.chunks))
        self.n_rows += len(item.chunks)

    def close(self) -> None:
        self.x.resize(self.n_rows, axis=0)  # also drops rows of an append cut short
        table = _recordings_table(self.recordings, self.n_chunks, len(self.info.classes))
        _create_tables(self.h5, len(self.info.classes), self.n_rows, len(self.recordings))
        _write_recordings(self.h5, table)
        self.h5.close()


def _recordings_table(
    items: list[RecordingChunks], n_chunks: list[int], n_classes: int
) -> dict[str, np.ndarray]:
    n_chunks = np.array(n_chunks, dtype=np.int32)
    return {
        "MediaId": np.array([item.media_id for item in items], dtype=object),
        "ClassId": np.array([item.class_id for item in items], dtype=object),
        "file": np.array([item.file for item in items], dtype=object),
        "first_row": (np.cumsum(n_chunks, dtype=np.int64) - n_chunks),
        "n_chunks": n_chunks,
        "n_frames": np.array([item.n_frames for item in items], dtype=np.int32),
        "duration_s": np.array([item.duration_s for item in items], dtype=np.float32),
        "label": np.array([item.label for item in items], dtype=np.int32),
        "background": np.array([item.background for item in items], dtype=np.uint8).reshape(
            len(items), n_classes
        ),
        "input_key": np.array([item.input_key for item in items], dtype=object),
        "group": np.array([item.group for item in items], dtype=object),
    }


def _create_root(h5: h5py.File, info: DatasetInfo, n_rows: int) -> None:
    """Root attributes and X (n_rows, empty, resizable)."""
    params = info.params
    h5.attrs.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": params.to_json(),
            "classes": json.dumps(info.classes),
            "class_names": json.dumps(info.class_names),
            "source": json.dumps(info.source),
            "compression": info.compression,
            "inputs_digest": info.inputs_digest,
            "settings_digest": info.settings_digest,
        }
    )
    row_shape = (params.n_bins, params.chunk_frames, 1)
    h5.create_dataset(
        "X",
        shape=(n_rows, *row_shape),
        dtype="<f4",  # little-endian whatever the machine, as compress_chunks writes it
        chunks=(1, *row_shape),
        maxshape=(None, *row_shape),
        **COMPRESSIONS[info.compression],
    )


def _create_tables(h5: h5py.File, n_classes: int, n_rows: int, n_recordings: int) -> None:
    """Every dataset but X, at its final size, empty."""
    for group, n, names in (
        (h5, n_rows, ROW_DATASETS[1:]),
        (
            h5.create_group("recordings"),
            n_recordings,
            RECORDING_DATASETS + OPTIONAL_RECORDING_DATASETS,
        ),
    ):
        for name in names:
            shape = (n, n_classes) if name in ("y", "background") else (n,)
            # label matrices are mostly zeros: compressed they cost next to nothing
            packed = {"chunks": True, "compression": "gzip"} if 0 not in shape else {}
            group.create_dataset(name, shape=shape, dtype=_DTYPES[name], **packed)


_DTYPES = {
    "y": np.uint8,
    "label": np.int32,
    "background": np.uint8,
    "MediaId": STRING,
    "ClassId": STRING,
    "file": STRING,
    "input_key": STRING,
    "group": STRING,
    "chunk_index": np.int32,
    "first_row": np.int64,
    "n_chunks": np.int32,
    "n_frames": np.int32,
    "duration_s": np.float32,
}


def _write_recordings(h5: h5py.File, table: dict):
    """Write the recordings table (first_row counted from 0) and the per-row datasets it
    implies into h5, whose datasets have room for them; X is written separately."""
    n_chunks = table["n_chunks"]
    n_rows, n_recordings = int(n_chunks.sum()), len(n_chunks)
    for name in RECORDING_DATASETS + OPTIONAL_RECORDING_DATASETS:
        h5["recordings"][name][:n_recordings] = table[name]

    recording_of_row = np.repeat(np.arange(n_recordings), n_chunks)
    label = table["label"][recording_of_row]
    y = np.zeros((n_rows, h5["y"].shape[1]), dtype=np.uint8)
    labelled = np.flatnonzero(label >= 0)
    y[labelled, label[labelled]] = 1
    per_row = {
        "y": y,
        "label": label,
        "background": table["background"][recording_of_row],
        "MediaId": table["MediaId"][recording_of_row],
        "ClassId": table["ClassId"][recording_of_row],
        "file": table["file"][recording_of_row],
        "chunk_index": np.arange(n_rows) - np.repeat(table["first_row"], n_chunks),
    }
    for name, values in per_row.items():
        if n_rows:
            h5[name][:n_rows] = values


@contextmanager
def atomic_dataset(
    path: Path, info: DatasetInfo, temporary: Path | None = None
) -> Iterator[DatasetWriter]:
    """A DatasetWriter filling temporary (default path + '.tmp'), renamed to path when the
    block ends, so a file at path is always complete; the temporary file goes if the block
    raises. A leftover at temporary (a write killed midway) is unlinked, a link itself and not
    what it points to, and the temporary file is created anew exclusively: a link put there
    is never written through."""
    temporary = temporary or Path(f"{path}.tmp")
    temporary.unlink(missing_ok=True)
    writer = DatasetWriter(temporary, info, mode="x")
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.h5.close()
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)  # atomic: now the file counts as done


class ChunksOnDisk(Sequence):
    """Rows of a dataset's X as stored, each read when asked for: copying a recording of
    hours this way holds one chunk at a time."""

    def __init__(self, x: h5py.h5d.DatasetID, rows: range):
        self.x, self.rows = x, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ChunksOnDisk(self.x, self.rows[index])
        return StoredChunk(*self.x.read_direct_chunk((self.rows[index], 0, 0, 0)))


class StoredRecordings:
    """The recordings of a dataset file, each as `RecordingChunks` with its chunks as stored
    (`read_direct_chunk`), to append to a `DatasetWriter`: copying costs a disk copy, not a
    decompression and recompression."""

    def __init__(self, path: str | os.PathLike):
        self.h5 = h5py.File(path, "r")
        self.x = self.h5["X"].id

    @functools.cached_property
    def table(self) -> dict[str, np.ndarray]:
        """`read_recordings`, on first use: a caller that knows the recordings skips it."""
        return read_recordings(self.h5)

    def __len__(self) -> int:
        return len(self.table["MediaId"])

    def chunks(self, rows: range) -> ChunksOnDisk:
        return ChunksOnDisk(self.x, rows)

    def recording(self, index: int) -> RecordingChunks:
        table, first = self.table, int(self.table["first_row"][index])
        return RecordingChunks(
            table["MediaId"][index],
            table["ClassId"][index],
            table["file"][index],
            int(table["label"][index]),
            table["background"][index],
            int(table["n_frames"][index]),
            float(table["duration_s"][index]),
            self.chunks(range(first, first + int(table["n_chunks"][index]))),
            table["input_key"][index],
            table["group"][index],
        )

    def close(self) -> None:
        self.h5.close()


def is_shard_file(entry: os.DirEntry) -> bool:
    """Whether an entry of a parts folder is one load_data writes there: a shard or a shard
    cut short (`SHARD_PATTERN`, `SHARD_TEMPORARY_PATTERN`), a regular file and not a link."""
    name = entry.name
    own_name = fnmatchcase(name, SHARD_PATTERN) or fnmatchcase(name, SHARD_TEMPORARY_PATTERN)
    return own_name and entry.is_file(follow_symlinks=False)


def check_parts_folder(parts_dir: Path, remedy: str = "") -> None:
    """Raise DatasetError unless parts_dir is absent or a real folder (not a link) holding
    shard files only (`is_shard_file`): anything else is not load_data's to write into,
    empty or delete. remedy ends the message (another --out, say)."""
    parts_dir = Path(parts_dir)
    move = f": move or remove it{remedy}"
    if parts_dir.is_symlink():
        raise DatasetError(
            f"{parts_dir} is a link: the folder of shards is never used through a link{move}"
        )
    if not parts_dir.exists():
        return
    if not parts_dir.is_dir():
        raise DatasetError(f"{parts_dir} exists and is not a folder of shards{move}")
    with os.scandir(parts_dir) as entries:
        for entry in entries:
            if not is_shard_file(entry):
                raise DatasetError(
                    f"{parts_dir} is not only a folder of shards: it holds {entry.name!r}, "
                    f"which is not a shard file ({SHARD_PATTERN}){move}"
                )


def complete_shards(parts_dir: Path) -> list[Path]:
    """The shard files in parts_dir, sorted by name (temporary files excluded)."""
    return sorted(Path(parts_dir).glob(SHARD_PATTERN))


def parts_folder(out: Path) -> Path:
    """The folder beside OUT where a load_data run writes its shards: OUT.parts."""
    return out.with_name(out.name + ".parts")


def shard_path(parts_dir: Path, run: str, task: int) -> Path:
    """Where task number `task` of the run named `run` writes its shard. Naming the run keeps
    apart the shards of a run killed a moment ago, whose workers may still finish one."""
    return Path(parts_dir) / f"part-{run}-{task:05d}.h5"


def convert_dataset(
    source: str | os.PathLike, target: str | os.PathLike, compression: str, rows_at_once=64
) -> None:
    """Copy the dataset at source to target with X stored under `compression`, atomically.

    Every other dataset and attribute is copied as it is (inputs_digest too: the rows are
    the same), and the values of X are unchanged: every compression is lossless.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}, not one of {list(COMPRESSIONS)}")
    target = Path(target)
    # a unique name created exclusively (as paths.replace_atomically's): never a file or a
    # link already there, so nothing but target is ever written or replaced
    temporary = partial_name(target)
    with open_dataset(source) as dataset:
        out = h5py.File(temporary, "x")  # before the try: were the name taken, it is not ours
        try:
            with out:
                _copy_converted(dataset, out, compression, rows_at_once)
            os.replace(temporary, target)
        except BaseException:  # a damaged source row, Ctrl-C: no half-written copy stays
            temporary.unlink(missing_ok=True)
            raise


def _copy_converted(dataset: Dataset, out: h5py.File, compression: str, rows_at_once: int):
    """`convert_dataset`'s copy of an open dataset into the open, empty file out."""
    n_rows = len(dataset)
    _create_root(out, replace(dataset.info, compression=compression), n_rows)
    for name in dataset.file.attrs:  # attributes of later writers too
        if name not in out.attrs:
            out.attrs[name] = dataset.file.attrs[name]
    for name in dataset.file:
        if name != "X":
            dataset.file.copy(dataset.file[name], out, name=name)
    x = out["X"].id
    for start in range(0, n_rows, rows_at_once):
        rows = np.arange(start, min(start + rows_at_once, n_rows))
        chunks = read_rows(dataset.X, rows)[..., 0]
        for row, stored in zip(rows, compress_chunks(chunks, compression), strict=True):
            x.write_direct_chunk((row, 0, 0, 0), stored.data, stored.filter_mask)


def remove_parts(parts_dir: Path) -> None:
    """Delete the shard files in parts_dir (`is_shard_file`), then the folder if that left it
    empty. Nothing else is deleted: not a link (nor anything through it), not a file of
    another name (the folder then stays)."""
    parts_dir = Path(parts_dir)
    if parts_dir.is_symlink() or not parts_dir.is_dir():
        return
    with os.scandir(parts_dir) as entries:
        for entry in entries:
            if is_shard_file(entry):
                Path(entry.path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: what is left is not ours to delete
        parts_dir.rmdir()
