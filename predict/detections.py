"""Prediction outputs that other tools open: Raven and Audacity tables, and chunk embeddings.

    predict.py --soundscape --raven DIR       DIR/<MediaId>.selections.txt, one per recording
    predict.py --soundscape --audacity DIR    DIR/<MediaId>.labels.txt, an Audacity label track
    predict.py --embeddings FILE.npz          the penultimate-layer vector of every chunk

A detection is a (5 s window, class) whose window probability (the window's chunk softmax, pooled as
the run pools a recording's, and renormalised) is at least the class's threshold: one `--min-conf`
for all classes, or the per-class thresholds chosen at training time (`--thresholds run`,
train/thresholds.py).

File names made from MediaIds (`safe_file_names`): each character that is a path separator
('/' or '\\'), a control character (Unicode category C*) or one of `:*?"<>|` (refused by
Windows) becomes '_'; leading dots and spaces and trailing dots and spaces are removed (so
no '..', no hidden file); an empty result becomes '_'; names are cut to 150 bytes of UTF-8
(on a character boundary), which leaves room in the 255 bytes a file name may have for `~N`,
the longest suffix and the temporary name's additions. Two MediaIds that give the same name
(ignoring case, as macOS and Windows do) are told apart by `~2`, `~3`... in the sorted order
of the MediaIds, so the same inputs always give the same names; the first MediaId keeps the
plain name. Every file is written inside the folder asked for, and atomically (complete or
absent).

Every table's path is known before any work (`table_paths`), and `check_tables` refuses the
run up front, as `preprocess.paths.check_output` does for the other outputs, where a table
would replace a folder, a link, a pipe or device, a file that is not a table of its kind
(a Raven table begins with exactly the header this module writes; an Audacity label track
has only lines as this module writes them; an empty file is either), an input, or another
output (--out, --human-csv, --embeddings). Class names become one line in a table's cell.

Embeddings (`EmbeddingModel`): the input of the model's last Dense layer, found in Sequential
and functional models alike; written with np.savez as plain arrays (no pickles):
    embeddings  float32 (chunks, dims)   media_id  str (chunks,)   chunk_index int32 (chunks,)
    start_s, end_s  float64 (chunks,)    layer  str ()  (the Dense layer's name)
start_s/end_s are the 5 s window of the recording a chunk comes from (--soundscape). Without
--soundscape the chunks are the training chunks, cut from the recording with its silent
frames removed; they have no place on the recording's time line, and start_s/end_s are NaN.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predict.runfile import AtomicWriter, window_span
from preprocess.paths import OutputPathError, first_bytes

MAX_NAME_BYTES = 150  # UTF-8; + `~N`, `.selections.txt` and `.<name>.XXXXXXXX.part` <= 255
UNSAFE_CHARACTERS = re.compile(r'[/\\:*?"<>|]')
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Common Name",
    "Confidence",
)
RAVEN_HEADER = "\t".join(RAVEN_COLUMNS) + "\n"
RAVEN_SUFFIX, AUDACITY_SUFFIX = ".selections.txt", ".labels.txt"
AUDACITY_LINE = re.compile(r"\d+\.\d{6}\t\d+\.\d{6}\t[^\t\n]* \(\d\.\d{3}\)\n?")
MAX_TABLE_LINE_CHARS = 100_000  # far beyond any table line this module writes


class OutputError(ValueError):
    """An output that cannot be made (no Dense layer to take embeddings from, a file name
    that would leave its folder); the message says which and why."""


# ---- file names ------------------------------------------------------------------------------


def safe_name(media_id: str) -> str:
    """A MediaId as a single, harmless file name component (the rule: module docstring)."""
    name = "".join("_" if unicodedata.category(c).startswith("C") else c for c in str(media_id))
    name = UNSAFE_CHARACTERS.sub("_", name).lstrip(". ").rstrip(". ")
    # bytes, not characters: 150 'é' are 300 bytes; a character cut in two is dropped whole
    name = name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    return name.rstrip(". ") or "_"


def safe_file_names(media_ids: Sequence[str]) -> dict[str, str]:
    """MediaId -> distinct safe file name; collisions numbered in sorted MediaId order. Names
    that a file system may take for one (case apart, as on Windows and macOS; a composed and
    a decomposed 'é', as on macOS) collide too."""
    taken: set[str] = set()
    names = {}
    for media_id in sorted(set(media_ids)):
        base = name = safe_name(media_id)
        number = 1
        while same_on_disk(name) in taken:
            number += 1
            name = f"{base}~{number}"
        taken.add(same_on_disk(name))
        names[media_id] = name
    return names


def same_on_disk(name: str) -> str:
    """name as the file systems that fold case or Unicode forms see it."""
    return unicodedata.normalize("NFC", name).casefold()


def table_paths(
    media_ids: Sequence[str], raven_dir: Path | None, audacity_dir: Path | None
) -> dict[str, list[tuple[str, Path]]]:
    """MediaId -> [(option, table path)]: the tables a run writes (names: `safe_file_names`)."""
    names = safe_file_names(media_ids)
    folders = [("--raven", raven_dir, RAVEN_SUFFIX), ("--audacity", audacity_dir, AUDACITY_SUFFIX)]
    return {
        media_id: [
            (option, folder / f"{name}{suffix}") for option, folder, suffix in folders if folder
        ]
        for media_id, name in names.items()
    }


def is_raven_table(path: Path) -> bool:
    """True for a file beginning with the exact header `write_raven_table` writes."""
    return first_bytes(path, len(RAVEN_HEADER.encode())) == RAVEN_HEADER.encode()


def is_audacity_labels(path: Path) -> bool:
    """True for a file whose every line is one `write_audacity_labels` writes
    (`start<TAB>end<TAB>label (confidence)`): a label track edited by hand is not."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            for line in iter(lambda: file.readline(MAX_TABLE_LINE_CHARS), ""):
                if not AUDACITY_LINE.fullmatch(line):
                    return False
    except (OSError, UnicodeDecodeError):
        return False
    return True


def _identities(path: Path) -> set:
    """Keys that name path's file: where it lies (its folder resolved), where it leads
    (links resolved) and, when it exists, its (device, inode)."""
    keys: set = {path.parent.resolve() / path.name, path.resolve()}
    try:
        status = path.stat()
        keys.add((status.st_dev, status.st_ino))
    except OSError:
        pass
    return keys


def check_tables(
    media_ids: Sequence[str],
    raven_dir: Path | None,
    audacity_dir: Path | None,
    *,
    inputs: Iterable[Path] = (),
    outputs: Iterable[tuple[str, Path | None]] = (),
) -> None:
    """OutputPathError, before anything is written, naming the first table path that is an
    input, another output (option, path), a link, a folder, a pipe or device, or a file that
    is not a table of its kind (the rules: module docstring). Fast for many recordings: each
    path is compared by its identities, not with every other path."""
    folders = {"--raven": raven_dir, "--audacity": audacity_dir}
    resolved = {}
    for option, folder in folders.items():
        if folder is None:
            continue
        blocking = [p for p in (folder, *folder.parents) if os.path.lexists(p) and not p.is_dir()]
        if blocking:  # a file, a broken link: nothing could be written into it
            raise OutputPathError(
                f"cannot make the table folder {folder} ({option}): {blocking[-1]} is not a folder"
            )
        resolved[option] = folder.resolve()
    claimed: dict = {}
    named = [*((f"an input ({path})", path) for path in inputs), *outputs]
    for label, path in named:
        if path is not None:
            for key in _identities(Path(path)):
                claimed.setdefault(key, f"{label} {path}" if label.startswith("-") else label)
    kinds = {
        "--raven": (is_raven_table, "a Raven table written by --raven"),
        "--audacity": (is_audacity_labels, "an Audacity label track written by --audacity"),
    }
    for media_id, tables in table_paths(media_ids, raven_dir, audacity_dir).items():
        for option, path in tables:
            where = f"{option} {path} (the table of MediaId {media_id!r})"
            keys = {resolved[option] / path.name}
            try:
                status = os.lstat(path)
            except FileNotFoundError:
                status = None
            except OSError as error:  # unreadable folder, a name too long, ...
                raise OutputPathError(f"{where}: {error.strerror}") from None
            if status is not None:
                keys.add((status.st_dev, status.st_ino))
            clash = next((claimed[key] for key in keys if key in claimed), None)
            if clash:
                raise OutputPathError(f"{where} is also {clash}: choose another folder")
            if status is None:
                continue
            if stat.S_ISLNK(status.st_mode):
                problem = "is a link"
            elif stat.S_ISDIR(status.st_mode):
                problem = "is a folder"
            elif not stat.S_ISREG(status.st_mode):
                problem = "is not a regular file"
            elif status.st_size and not kinds[option][0](path):
                problem = f"is not {kinds[option][1]}"
            else:
                continue
            advice = "remove it yourself or choose another folder"
            raise OutputPathError(f"{where} {problem}: it is left alone ({advice})")


def inside(folder: Path, name: str) -> Path:
    """folder/name, refusing any name that would leave folder (a second guard on safe names)."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise OutputError(f"file name {name!r} would be written outside {folder}")
    return path


# ---- detections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    begin_s: float
    end_s: float
    column: int  # class index
    confidence: float


def window_detections(
    window_probs: np.ndarray, duration_s: float, thresholds: np.ndarray, window_seconds: float
) -> list[Detection]:
    """Detections of one recording: window_probs (windows, classes), thresholds (classes,).

    Window w spans [w * window_seconds, (w + 1) * window_seconds], the last one ending at
    duration_s (`window_span`). Ordered by time, then by falling confidence.
    """
    window_probs = np.asarray(window_probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if window_probs.ndim != 2 or window_probs.shape[1] != thresholds.shape[0]:
        raise ValueError(
            f"window_probs {window_probs.shape} and thresholds {thresholds.shape} do not fit"
        )
    detections = []
    last = len(window_probs) - 1
    for window, probs in enumerate(window_probs):
        begin, end = window_span(window, window == last, window_seconds, duration_s)
        hits = np.flatnonzero(probs >= thresholds)
        for column in hits[np.argsort(-probs[hits], kind="stable")]:
            detections.append(Detection(begin, end, int(column), float(probs[column])))
    return detections


def one_line(text: str) -> str:
    """text as one line of one cell: line breaks, tabs and other control characters become
    spaces, runs of white space one space."""
    return " ".join(
        "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text).split()
    )


def write_raven_table(
    path: Path,
    detections: list[Detection],
    classes: Sequence[str],
    class_names: dict[str, str],
    high_freq_hz: float,
) -> None:
    """A Raven Pro selection table: tab-separated, a header of RAVEN_COLUMNS, one row per
    detection (View "Spectrogram 1", Channel 1, the band the model sees: 0..high_freq_hz);
    every cell one line (`one_line`)."""
    with AtomicWriter(path) as table:
        table.file.write(RAVEN_HEADER)
        for number, found in enumerate(detections, 1):
            class_id = classes[found.column]
            row = [
                str(number),
                "Spectrogram 1",
                "1",
                f"{found.begin_s:.6f}",
                f"{found.end_s:.6f}",
                "0.0",
                f"{high_freq_hz:.1f}",
                class_id,
                class_names.get(class_id, ""),
                f"{found.confidence:.4f}",
            ]
            table.file.write("\t".join(one_line(cell) for cell in row) + "\n")


def top_frequency_hz(params) -> float:
    """Upper edge of the band the model sees: the mel bands' fmax (log-mel front end), or
    n_bins FFT bins of sample_rate / nfft Hz (2016)."""
    if params.frontend == "logmel":
        return params.fmax
    return params.n_bins * params.sample_rate / params.nfft


def audacity_label(class_id: str, name: str, confidence: float) -> str:
    return f"{class_id} {name} ({confidence:.3f})" if name else f"{class_id} ({confidence:.3f})"


def write_audacity_labels(
    path: Path, detections: list[Detection], classes: Sequence[str], class_names: dict[str, str]
) -> None:
    """An Audacity label track: `start<TAB>end<TAB>label` per detection, seconds."""
    with AtomicWriter(path) as labels:
        for found in detections:
            class_id = classes[found.column]
            label = audacity_label(class_id, class_names.get(class_id, ""), found.confidence)
            labels.file.write(f"{found.begin_s:.6f}\t{found.end_s:.6f}\t{one_line(label)}\n")


# ---- embeddings ------------------------------------------------------------------------------
# Keras is imported inside these functions, not above: predict.py imports this module at its
# top, and its extraction workers import predict.py again; Keras (TensorFlow) takes seconds to
# load, which only the process that runs the model needs.


def last_dense_layer(model):
    """The model's last Dense layer (top level, in layer order), or an OutputError."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise OutputError(
            f"model {model.name} has no Dense layer at its top level: no embeddings to take"
        )
    return dense[-1]


def softmax_and_embedding(model):
    """(inputs, softmax tensor, embedding tensor, Dense layer name) of a model's graph.

    The embedding is the input of the last Dense layer. A model whose last layer is itself a
    model (the modern recipe puts a normalisation layer in front of the model file's model)
    is followed into it: its layers before the inner model, a chain, are called again on a
    new input, then the inner model's softmax and embedding.
    """
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.Model) and not any(
        isinstance(layer, keras.layers.Dense) for layer in model.layers
    ):
        inner_inputs, inner_softmax, inner_embedding, name = softmax_and_embedding(last)
        inner = keras.Model(inner_inputs, [inner_softmax, inner_embedding])
        inputs = keras.Input(model.input_shape[1:])
        x = inputs
        for layer in model.layers[:-1]:
            if not isinstance(layer, keras.layers.InputLayer):
                x = layer(x)
        softmax, embedding = inner(x)
        return [inputs], softmax, embedding, name
    dense = last_dense_layer(model)
    return model.inputs, model.outputs[0], dense.input, dense.name


class EmbeddingModel:
    """A model's softmax and the input of its last Dense layer, in one call per batch.

    Stands in for the model in `predict.predict_pieces`: predict_on_batch(batch) returns
    (batch, classes + dims), the softmax columns first; `split` separates them again.
    """

    def __init__(self, model):
        import keras

        inputs, softmax, embedding, self.layer_name = softmax_and_embedding(model)
        self.n_classes = model.output_shape[-1]
        self.dims = embedding.shape[-1]
        both = keras.layers.Concatenate(dtype="float32")(
            [keras.ops.cast(softmax, "float32"), keras.ops.cast(embedding, "float32")]
        )
        self.model = keras.Model(inputs, both)
        self.output_shape = (None, self.n_classes + self.dims)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(batch))

    def split(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunks, classes + dims) -> softmax (chunks, classes), embeddings (chunks, dims)."""
        return outputs[:, : self.n_classes], outputs[:, self.n_classes :]


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez into a temporary file beside path, moved into place when complete."""
    with AtomicWriter(path, binary=True) as out:
        np.savez(out.file, **arrays)


# ---- all of them, fed by predict.predict -----------------------------------------------------


class ChunkOutputs:
    """The optional outputs of a prediction run, fed piece by piece.

    with ChunkOutputs(...) as outputs:
        model = outputs.wrap(model)              # adds embedding columns when asked for
        probs = outputs.piece(media_id, chunk_outputs, duration_s, last)   # each piece
        outputs.recording(media_id, window_probs, duration_s)   # each finished recording
    Tables are written per recording; the embeddings file when the run ends without error.
    In soundscape mode a piece is one window; otherwise windows have no time (NaN).
    """

    def __init__(
        self,
        media_ids: Sequence[str],
        classes: Sequence[str],
        class_names: dict[str, str],
        thresholds: np.ndarray,
        high_freq_hz: float,
        window_seconds: float,
        *,
        soundscape: bool,
        raven_dir: Path | None = None,
        audacity_dir: Path | None = None,
        embeddings_path: Path | None = None,
    ):
        if (raven_dir or audacity_dir) and not soundscape:
            raise ValueError("Raven and Audacity tables need soundscape mode (5 s windows)")
        self.classes, self.class_names = list(classes), dict(class_names)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.high_freq_hz, self.window_seconds = high_freq_hz, window_seconds
        self.soundscape = soundscape
        self.raven_dir, self.audacity_dir = raven_dir, audacity_dir
        self.embeddings_path = embeddings_path
        self.tables = table_paths(media_ids, raven_dir, audacity_dir)
        for folder in (raven_dir, audacity_dir):
            if folder:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise OutputError(f"cannot make the table folder {folder}: {error}") from None
        self.embedder: EmbeddingModel | None = None
        self._pieces_seen: dict[str, int] = {}  # per recording: pieces so far (window number)
        self._chunks_seen: dict[str, int] = {}
        self._rows: dict[str, list] = {
            "embeddings": [],
            "media_id": [],
            "chunk_index": [],
            "start_s": [],
            "end_s": [],
        }

    def __enter__(self) -> ChunkOutputs:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None and self.embeddings_path:
            self.write_embeddings()

    def wrap(self, model):
        if not self.embeddings_path:
            return model
        self.embedder = EmbeddingModel(model)
        return self.embedder

    def piece(
        self, media_id: str, outputs: np.ndarray, duration_s: float, last: bool
    ) -> np.ndarray:
        """Chunk outputs of one piece of a recording of duration_s (pieces in order, `last`
        the recording's last) -> its softmax (chunks, classes); keeps the embeddings."""
        if not self.embedder:
            return outputs
        probs, embeddings = self.embedder.split(outputs)
        window = self._pieces_seen.get(media_id, 0)
        first_chunk = self._chunks_seen.get(media_id, 0)
        self._pieces_seen[media_id] = window + 1
        self._chunks_seen[media_id] = first_chunk + len(outputs)
        start, end = window_span(window, last, self.window_seconds, duration_s)
        if not self.soundscape:
            start = end = np.nan
        rows = self._rows
        rows["embeddings"].append(embeddings.astype(np.float32))
        rows["media_id"] += [media_id] * len(outputs)
        rows["chunk_index"].append(np.arange(first_chunk, first_chunk + len(outputs)))
        rows["start_s"] += [start] * len(outputs)
        rows["end_s"] += [end] * len(outputs)
        return probs

    def recording(self, media_id: str, window_probs: np.ndarray, duration_s: float) -> None:
        """A finished recording: its tables, from window_probs (windows, classes)."""
        if not (self.raven_dir or self.audacity_dir):
            return
        found = window_detections(window_probs, duration_s, self.thresholds, self.window_seconds)
        for option, table in self.tables[media_id]:
            path = inside(table.parent, table.name)
            if option == "--raven":
                write_raven_table(path, found, self.classes, self.class_names, self.high_freq_hz)
            else:
                write_audacity_labels(path, found, self.classes, self.class_names)

    def write_embeddings(self) -> None:
        rows = self._rows
        dims = self.embedder.dims if self.embedder else 0
        embeddings = rows["embeddings"]
        write_npz(
            self.embeddings_path,
            {
                "embeddings": np.concatenate(embeddings)
                if embeddings
                else np.zeros((0, dims), np.float32),
                "media_id": np.array(rows["media_id"], dtype=str),
                "chunk_index": np.concatenate(rows["chunk_index"]).astype(np.int32)
                if embeddings
                else np.zeros(0, np.int32),
                "start_s": np.array(rows["start_s"], dtype=np.float64),
                "end_s": np.array(rows["end_s"], dtype=np.float64),
                "layer": np.array(self.embedder.layer_name if self.embedder else ""),
            },
        )
