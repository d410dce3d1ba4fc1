"""The metadata table: which recordings there are, their labels, and the original's selections.

Three sources give the same table of `Recording`s:
- BirdCLEF XML folders (2014-2017): one `<Audio>` XML per recording. Training XMLs carry the
  label (`ClassId`), test XMLs do not (class_id None); 2017 adds `Country` and drops
  `BackgroundSpecies` and `Order`.
- a CSV with columns `file,label`, optional `media_id`, optional `background` (secondary
  labels separated by ';' or ',', or a Python list of them), named in any case (`File,Label`
  too) or as other data sets name them (COLUMN_ALIASES: ESC-50's `filename,category`,
  BirdCLEF's `primary_label,secondary_labels`); other columns are kept in `fields`.
- a folder per class: ROOT/<label>/**/<audio file>; hidden entries (names starting with '.',
  like .ipynb_checkpoints) and `__MACOSX` (a Mac zip's copies `._<name>`) are ignored.
`file` is always relative to the folder of resampled wavs, with the extension `.wav` (the
resampling script writes `<name>.wav` for any input format), and after `match_audio` as the
file is spelt on disk (`x.WAV`); a CSV's name found there only
without its leading folders, or in a subfolder, is matched with a warning (`match_audio`).
The MediaId comes from the XML, else the `media_id` column (where several files share one,
each file's name), else the file name without extension; duplicates are an error. A file on
several CSV rows is one recording, the other rows' labels its background species, unless the
rows give it media_ids of their own (`once_per_wav`). Recordings that share audio (files
given one media_id, a file several XML files or rows of their own media_ids list) are given
one `group`, which a split keeps on one side (`with_groups`).
MediaIds, file names and labels must be valid UTF-8 (the dataset stores them so) without NUL
bytes or line breaks: a CSV or XML holding one is refused, such a file in a class folder is
named in a warning and left out. Folders are listed following links to folders (each folder
once, so a link loop ends), as resample.py does. load_data.py reads, selects and reports
them, and stores the table with the chunks.
"""

from __future__ import annotations

import ast
import csv
import io
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import NamedTuple
from xml.parsers.expat import ExpatError

import xmltodict

from preprocess.audio import AUDIO_SUFFIXES
from preprocess.paths import (
    NOT_REGULAR,
    NotText,
    files_under,
    first_names,
    is_ignored,
    shown_name,
    text_file,
)

logger = logging.getLogger(__name__)

CSV_LINE_END = re.compile(r"\r\n|\r|\n")  # what ends a line for csv's line_num
WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # C:\clips\a.wav
CSV_COLUMNS = ("file", "label", "media_id", "background")  # what read_csv reads, any case
COLUMN_ALIASES = {  # other data sets' names of CSV_COLUMNS, read where the column is absent
    "file": ("filename", "file_name", "fname", "path", "filepath", "audio", "slice_file_name"),
    "label": ("class", "classname", "class_name", "category", "species", "primary_label"),
    "background": ("secondary_labels", "background_species"),
}


class MetadataError(ValueError):
    """Metadata that cannot be used; the message names the file and what is wrong."""


@dataclass
class Recording:
    media_id: str
    file: str  # relative to the resampled wav folder, extension .wav (as on disk: match_audio)
    class_id: str | None = None  # the label; None when unlabelled (test data)
    species: str | None = None  # scientific name "Genus species" (CSV/folders: the label)
    background: list[str] = field(default_factory=list)  # background species' names
    quality: int | None = None  # 0-5 in BirdCLEF XML
    fields: dict[str, str | None] = field(default_factory=dict)  # every raw XML/CSV field
    group: str = ""  # recordings of one audio (see `with_groups`); '' when not grouped


# ---- parsing (pure) ----------------------------------------------------------------------


def _text(value) -> str | None:
    """xmltodict's value of a simple element as stripped text; None when empty (or when it
    holds elements: `holds_elements`)."""
    if isinstance(value, dict):  # an element with attributes: its text is under '#text'
        value = value.get("#text")
    elif isinstance(value, list):  # a repeated element: its values in order
        value = ", ".join(filter(None, map(_text, value)))
    if value is None:
        return None
    return str(value).strip() or None


def split_names(text: str | None, separators: str = ",") -> list[str]:
    """'Parus major, ,Sitta europaea ' -> ['Parus major', 'Sitta europaea']."""
    if not text:
        return []
    return [name.strip() for name in re.split(f"[{re.escape(separators)}]", text) if name.strip()]


def background_names(text: str | None) -> list[str]:
    """A CSV's background species: 'lark; crow' or 'lark,crow', or a Python list of strings as
    BirdCLEF's secondary_labels has it ("['lark', 'crow']", "[]") -> ['lark', 'crow']."""
    if text and text.strip().startswith("[") and text.strip().endswith("]"):
        try:
            names = ast.literal_eval(text.strip())  # literals only: nothing is run
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            names = None
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            return [name.strip() for name in names if name.strip()]
    return split_names(text, separators=";,")


def posix_path(file: str) -> PurePosixPath:
    """A file name as a CSV or XML gives it, '/'-separated whatever the system that wrote it
    ('sub\\a.wav' is 'sub/a.wav'; './a.wav' is 'a.wav')."""
    return PurePosixPath(file.replace("\\", "/"))


def nfc(text: str) -> str:
    """text in Unicode NFC: a name typed on one system as a file name of another spells it
    (a Mac writes é as e and an accent, NFD)."""
    return unicodedata.normalize("NFC", text)


def wav_name(file: str, source: str) -> str:
    """The resampled file's relative path: 'a/b.MP3' -> 'a/b.wav'. Raises MetadataError naming
    source for a path without a file name ('.', '..', '/')."""
    path = posix_path(file)
    if path.name in ("", ".", ".."):
        raise MetadataError(f"{source}: file name {file!r} names no file")
    return path.with_suffix(".wav").as_posix()


def name_problem(text: str) -> str | None:
    """What makes text unusable as a MediaId, file name or label, or None when nothing does.

    The dataset stores them as HDF5 UTF-8 strings, which refuse NUL bytes and the surrogates
    Python gives for bytes that are not UTF-8 (a name from a Windows zip: b'caf\\xe9.wav'); a
    line break is no plausible name but what an unclosed quote makes of CSV rows.
    """
    if "\0" in text:
        return "holds a NUL byte"
    if CSV_LINE_END.search(text):
        return "holds a line break"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def field_problem(text: str) -> str | None:
    """Why text cannot be a MediaId or ClassId field of a run file line; None when it can.

    The evaluator splits lines at ';' and line breaks and strips each field, so such a name
    would make the whole run file invalid (or name another recording).
    """
    if not text:
        return "is empty"
    if any("\udc80" <= char <= "\udcff" for char in text):  # undecodable bytes of a file name
        return "is not valid UTF-8"
    if ";" in text:
        return "holds ';', the run file's field separator"
    if not text.isprintable():
        return "holds a line break, tab or other non-printing character"
    if text != text.strip():
        return "starts or ends with white space"
    return None


def check_names(names: dict[str, str | None], source: str) -> None:
    """Raise MetadataError naming source and the first field whose value has a name_problem."""
    for field_name, value in names.items():
        problem = name_problem(value or "")
        if problem:
            raise MetadataError(f"{source}: {field_name} {value!r} {problem}")


def check_class_name(field_name: str, class_id: str | None, source: str) -> None:
    """Raise MetadataError for a class name that a run file cannot hold (`field_problem`): a
    run trained on it could never write its predictions."""
    problem = field_problem(class_id) if class_id else None
    if problem:
        raise MetadataError(
            f"{source}: {field_name} {class_id!r} {problem}; a class name must fit a run file "
            "line (MediaId;ClassId;Probability;Rank)"
        )


def holds_elements(value) -> bool:
    """Whether xmltodict's value is of an element that holds elements (not a simple value)."""
    if isinstance(value, list):
        return any(map(holds_elements, value))
    return isinstance(value, dict) and any(not key.startswith(("@", "#")) for key in value)


def parse_birdclef_xml(xml: str | bytes, source: str = "<xml>") -> Recording:
    """One BirdCLEF `<Audio>` document -> Recording. Raises MetadataError naming `source`."""
    try:
        document = xmltodict.parse(xml)
    # ValueError: a DTD entity (they are disabled); LookupError: an unknown declared encoding
    except (ExpatError, ValueError, LookupError) as error:
        raise MetadataError(f"{source}: malformed XML ({error})") from error
    root = next(iter(document))
    if root != "Audio" or not isinstance(document[root], dict):
        raise MetadataError(f"{source}: expected an <Audio> element with fields, got <{root}>")
    repeated = [name for name in ("MediaId", "FileName", "ClassId")
                if isinstance(document[root].get(name), list)]  # fmt: skip
    if repeated:
        raise MetadataError(f"{source}: <{repeated[0]}> appears more than once")
    nested = [name for name in ("MediaId", "FileName", "ClassId", "BackgroundSpecies", "Quality")
              if holds_elements(document[root].get(name))]  # fmt: skip
    if nested:  # its value would be read as empty: a label lost without a word
        raise MetadataError(f"{source}: <{nested[0]}> holds elements, not a value")
    fields = {name: _text(value) for name, value in document[root].items()}
    missing = [name for name in ("MediaId", "FileName") if not fields.get(name)]
    if missing:
        raise MetadataError(f"{source}: required field {', '.join(missing)} missing or empty")
    quality = fields.get("Quality")
    if quality is not None:
        try:
            quality = int(quality)
        except ValueError:
            raise MetadataError(f"{source}: Quality {quality!r} is not a whole number") from None
    check_names({name: fields.get(name) for name in ("MediaId", "FileName", "ClassId")}, source)
    check_class_name("ClassId", fields.get("ClassId"), source)
    genus, species = fields.get("Genus"), fields.get("Species")
    return Recording(
        media_id=fields["MediaId"],
        file=wav_name(fields["FileName"], source),
        class_id=fields.get("ClassId"),
        species=f"{genus} {species}" if genus and species else None,
        background=split_names(fields.get("BackgroundSpecies")),
        quality=quality,
        fields=fields,
    )


def parse_csv_row(row: dict[str, str | None], source: str = "<csv>") -> Recording:
    """One CSV row (as csv.DictReader gives it) -> Recording; the label is also the species.

    An empty label gives an unlabelled recording (class_id None), as a test XML does.
    """
    if None in row:  # DictReader puts values beyond the header under the key None
        raise MetadataError(f"{source}: more values than the header has columns")
    file = (row.get("file") or "").strip()
    if not file:
        raise MetadataError(f"{source}: empty 'file'")
    if posix_path(file).is_absolute() or WINDOWS_DRIVE.match(file):
        raise MetadataError(
            f"{source}: 'file' {file!r} is an absolute path: give the files relative to the "
            "audio folder (doall.sh --audio-dir, load_data.py --wav-dir)"
        )
    # in NFC: one label typed on two systems (é, or e and an accent) is one class, as the
    # scorer (evaluate.py) reads it
    label = nfc((row.get("label") or "").strip()) or None
    media_id = (row.get("media_id") or "").strip()
    check_names({"'file'": file, "'label'": label, "'media_id'": media_id}, source)
    check_class_name("'label'", label, source)
    wav = wav_name(file, source)
    return Recording(
        media_id=media_id or PurePosixPath(wav).stem,
        file=wav,
        class_id=label,
        species=label,
        background=[nfc(name) for name in background_names(row.get("background"))],
        fields=dict(row),
    )


def stem_or_path_ids(paths: list[PurePosixPath]) -> list[str]:
    """MediaIds of audio files by their paths in a folder: each file's stem (x for dog/x.wav),
    or, for a stem that several of the paths share (yes/0a7c_0.wav, no/0a7c_0.wav, as Speech
    Commands has them), the path without its extension (yes/0a7c_0). Training and prediction
    (`predict.find_audio`) both name recordings by it, so their MediaIds agree."""
    stems = Counter(path.stem for path in paths)
    return [path.stem if stems[path.stem] == 1 else str(path.with_suffix("")) for path in paths]


def told_apart_by_path(recordings: list[Recording], named_by_stem: list[bool]) -> list[Recording]:
    """The recordings, those whose MediaId is their file name (named_by_stem) named by
    `stem_or_path_ids` instead, where another such recording has the same file name."""
    by_stem = [i for i, named in enumerate(named_by_stem) if named]
    ids = stem_or_path_ids([PurePosixPath(recordings[i].file) for i in by_stem])
    recordings = list(recordings)
    for i, media_id in zip(by_stem, ids, strict=True):
        recordings[i] = replace(recordings[i], media_id=media_id)
    return recordings


def check_unique_media_ids(recordings: list[Recording], origins: list[str]) -> None:
    """Raise MetadataError naming both origins (files, CSV lines) of a MediaId seen twice."""
    origin_of: dict[str, str] = {}
    for recording, origin in zip(recordings, origins, strict=True):
        if recording.media_id in origin_of:
            raise MetadataError(
                f"MediaId {recording.media_id!r} appears twice: in {origin_of[recording.media_id]}"
                f" and in {origin}"
            )
        origin_of[recording.media_id] = origin


def most_common_classes(recordings: list[Recording], n: int) -> list[str]:
    """The n most common class ids, most common first (ties: alphabetical); unlabelled ignored."""
    counts = Counter(r.class_id for r in recordings if r.class_id is not None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [class_id for class_id, _ in ranked[:n]]


def select(
    recordings: list[Recording],
    top_n: int | None = None,
    min_quality: int | None = None,
    max_quality: int | None = None,
    no_background: bool = False,
) -> list[Recording]:
    """The 2016 selections, keeping the order: first the quality range (inclusive; recordings
    without a quality go when a bound is given), then dropping recordings with background
    species, then keeping the top_n most common classes among what is left (unlabelled
    recordings go too)."""
    kept = recordings
    if min_quality is not None or max_quality is not None:
        low = -sys.maxsize if min_quality is None else min_quality
        high = sys.maxsize if max_quality is None else max_quality
        kept = [r for r in kept if r.quality is not None and low <= r.quality <= high]
    if no_background:
        kept = [r for r in kept if not r.background]
    if top_n is not None:
        classes = set(most_common_classes(kept, top_n))
        kept = [r for r in kept if r.class_id in classes]
    return kept


# ---- reading and writing (I/O) ---------------------------------------------------------


def parse_xml_files(paths: list[Path]) -> list[Recording | str]:
    """Each BirdCLEF XML file -> its Recording, or the message naming it and saying why it is
    skipped (malformed, no MediaId or FileName, unreadable)."""
    parsed: list[Recording | str] = []
    for path in paths:
        try:
            parsed.append(parse_birdclef_xml(path.read_bytes(), source=str(path)))
        except MetadataError as error:
            parsed.append(str(error))
        except OSError as error:
            parsed.append(f"{path}: cannot read ({error.strerror})")
    return parsed


def read_birdclef_xml_dir(
    xml_dir: str | Path,
    parse_files: Callable[[list[Path]], list[Recording | str]] = parse_xml_files,
) -> tuple[list[Recording], list[str]]:
    """Every *.xml under xml_dir (sorted) -> (recordings, messages for the files skipped).

    A malformed XML or one without MediaId/FileName is skipped and named; a MediaId in two
    files raises MetadataError naming both. parse_files: `parse_xml_files`, or the same in
    parallel (load_data.py).
    """
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise MetadataError(f"{xml_dir}: XML folder not found")
    named_xml = [p for p in files_under(xml_dir) if p.suffix.lower() == ".xml"]
    paths = [p for p in named_xml if p.is_file()]
    if not paths:
        raise MetadataError(f"{xml_dir}: no .xml files")
    recordings, origins = [], []
    skipped = [f"{shown_name(str(p))}: {NOT_REGULAR}" for p in named_xml if not p.is_file()]
    for path, each in zip(paths, parse_files(paths), strict=True):
        if isinstance(each, str):
            skipped.append(each)
        else:
            recordings.append(each)
            origins.append(str(path))
    check_unique_media_ids(recordings, origins)
    warn_of_files_listed_again(recordings, origins, str(xml_dir))
    recordings = with_groups(recordings, [r.media_id for r in recordings])
    if skipped:
        logger.warning("%s: skipped %d of %d XML files", xml_dir, len(skipped), len(named_xml))
    return recordings, skipped


def row_lines(row: dict, last_line: int) -> str:
    """'line 7', or 'lines 5-7' for a row whose quoted values span lines (last_line its last)."""
    values = [v for value in row.values() for v in (value if isinstance(value, list) else [value])]
    first_line = last_line - sum(len(CSV_LINE_END.findall(v)) for v in values if v)
    return f"line {last_line}" if first_line == last_line else f"lines {first_line}-{last_line}"


def is_alias(name: str, column: str) -> bool:
    """Whether a CSV header's name is another data set's name of column (COLUMN_ALIASES)."""
    return name.strip().lower() in COLUMN_ALIASES.get(column, ())


def known_columns(names: list[str]) -> list[str]:
    """A CSV header's column names, stripped: one of CSV_COLUMNS in lower case however it was
    typed ('File', 'LABEL'), or named as another data set names it (ESC-50's filename and
    category, BirdCLEF's primary_label: COLUMN_ALIASES) where the header has no such column
    and one alias of it; any other as it is."""
    columns = [name.strip() for name in names]
    columns = [name.lower() if name.lower() in CSV_COLUMNS else name for name in columns]
    for column in COLUMN_ALIASES:
        named = [i for i, name in enumerate(columns) if is_alias(name, column)]
        if column not in columns and len(named) == 1:
            columns[named[0]] = column
    return columns


def csv_delimiter(text: str) -> str:
    """The CSV text's field separator: a comma, or the semicolon or tab that a spreadsheet
    saves with in some locales, whichever makes a header with both 'file' and 'label'
    (a comma where none does: the error then names the columns it found)."""
    header = text.split("\n", 1)[0]
    for delimiter in (",", ";", "\t"):
        if {"file", "label"} <= set(known_columns(next(csv.reader([header], delimiter=delimiter)))):
            return delimiter
    return ","


def csv_rows(text: str, source: str) -> tuple[list[str], list[tuple[str, dict]]]:
    """(columns, [(where, row)]) of a CSV text (`csv_delimiter`), where: 'SOURCE line N' (or
    lines N-M).

    A value over csv's limit (128 KiB, a quote left open, say) raises MetadataError naming
    the line after the last complete row (blank lines between rows shift it).
    """
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=csv_delimiter(text))
    rows, last_complete = [], 0
    try:
        columns = known_columns(reader.fieldnames or [])
        for given, column in zip(reader.fieldnames or [], columns, strict=True):
            if is_alias(given, column):
                logger.info("%s: column %r read as %r", source, given, column)
        counts = Counter(columns)
        twice = sorted(name for name in CSV_COLUMNS if counts[name] > 1)
        if twice:  # DictReader would keep the last column's values only, without a word
            raise MetadataError(f"{source} line 1: column {', '.join(map(repr, twice))} twice")
        reader.fieldnames, last_complete = columns, reader.line_num
        for row in reader:
            rows.append((f"{source} {row_lines(row, reader.line_num)}", row))
            last_complete = reader.line_num
    except csv.Error as error:
        raise MetadataError(
            f"{source} line {last_complete + 1}: {error} (a quote left open?)"
        ) from None
    return columns, rows


def read_csv(csv_path: str | Path) -> list[Recording]:
    """A CSV with columns file,label[,media_id][,background] -> recordings, in file order
    (each wav once: `once_per_wav`)."""
    csv_path = Path(csv_path)
    if csv_path.exists() and not csv_path.is_file():  # a folder, a pipe or a device
        raise MetadataError(f"{csv_path}: {NOT_REGULAR}")
    try:  # UTF-8 (a spreadsheet's byte-order mark dropped), or UTF-16 or -32 with their mark
        with text_file(csv_path) as file:
            text = file.read()
    except NotText as error:
        raise MetadataError(str(error)) from None
    except OSError as error:
        raise MetadataError(f"{csv_path}: cannot read the CSV file ({error})") from error
    columns, rows = csv_rows(text, str(csv_path))
    for required in ("file", "label"):
        if required not in columns:
            aliases = [name for name in columns if is_alias(name, required)]
            why = (
                f"{' and '.join(aliases)} could each be it: rename the one that is"
                if aliases
                else f"one of {', '.join(COLUMN_ALIASES[required])} is read as it too"
            )
            raise MetadataError(
                f"{csv_path}: missing column '{required}' (it has: {', '.join(columns)}; {why})"
            )
    recordings = [parse_csv_row(row, source=origin) for origin, row in rows]
    origins = [origin for origin, _ in rows]
    if not recordings:
        raise MetadataError(f"{csv_path}: no recordings")
    named_by_stem = [not (row.get("media_id") or "").strip() for _, row in rows]
    recordings, origins, named_by_stem = once_per_wav(recordings, origins, named_by_stem)
    if not recordings:
        raise MetadataError(f"{csv_path}: no recordings left (see the warnings above)")
    given_ids = [
        "" if by_stem else r.media_id for r, by_stem in zip(recordings, named_by_stem, strict=True)
    ]
    recordings = with_groups(recordings, given_ids)
    named_by_stem = named_by_file_where_shared(recordings, named_by_stem, str(csv_path))
    recordings = told_apart_by_path(recordings, named_by_stem)
    check_unique_media_ids(recordings, origins)
    warn_of_files_listed_again(recordings, origins, str(csv_path))
    return recordings


def named_by_file_where_shared(
    recordings: list[Recording], named_by_stem: list[bool], where: str
) -> list[bool]:
    """named_by_stem, with the recordings whose media_id several files share (the source
    recording clips were cut from, say) to be named by their file too (`told_apart_by_path`),
    as rows without a media_id are, and a warning: a MediaId names one recording."""
    files_of: dict[str, set[str]] = {}
    for recording, by_stem in zip(recordings, named_by_stem, strict=True):
        if not by_stem:
            files_of.setdefault(recording.media_id, set()).add(recording.file)
    shared = {media_id for media_id, files in files_of.items() if len(files) > 1}
    if not shared:
        return named_by_stem
    example = sorted(shared)[0]
    logger.warning(
        "%s: %d media_id(s) are each given to several files (%r to %s): each file is a "
        "recording of its own, named by its file name instead (a split keeps the clips of one "
        "source recording on one side)",
        where,
        len(shared),
        example,
        first_names(sorted(shown_name(file) for file in files_of[example]), 3),
    )
    return [by or r.media_id in shared for r, by in zip(recordings, named_by_stem, strict=True)]


def with_groups(recordings: list[Recording], given_ids: list[str]) -> list[Recording]:
    """The recordings, those that share audio with another one given a `group`, which a split
    keeps on one side: files given one media_id (clips cut from one source recording: given_ids
    holds each recording's media_id as its metadata gave it, '' where none was) and rows or
    XML files naming one file (the same audio). A chain of such links is one group, named by
    the first of its files in sorted order: a name no other group has (a file shared is one
    group), whatever the order of the rows or XML files."""
    parent = list(range(len(recordings)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_with: dict[tuple[str, str], int] = {}
    for index, (recording, given) in enumerate(zip(recordings, given_ids, strict=True)):
        for key in [("file", recording.file)] + ([("media_id", given)] if given else []):
            if key in first_with:
                parent[root(index)] = root(first_with[key])
            else:
                first_with[key] = index
    roots = [root(index) for index in range(len(recordings))]
    files_of: dict[int, list[str]] = {}
    for recording, top in zip(recordings, roots, strict=True):
        files_of.setdefault(top, []).append(recording.file)
    return [
        replace(recording, group=min(files_of[top])) if len(files_of[top]) > 1 else recording
        for recording, top in zip(recordings, roots, strict=True)
    ]


def warn_of_files_listed_again(recordings: list[Recording], origins: list[str], where: str):
    """A warning for each audio file that several recordings (rows, XML files: origins) name,
    each with a MediaId of its own: the same audio, as several recordings (`with_groups`
    keeps them on one side of a split)."""
    origins_of_file: dict[str, list[str]] = {}
    for recording, origin in zip(recordings, origins, strict=True):
        origins_of_file.setdefault(recording.file, []).append(origin)
    for file, listed in origins_of_file.items():
        if len(listed) > 1:
            logger.warning(
                "%s: %s is listed %d times (%s): the same audio, as several recordings",
                where,
                shown_name(file),
                len(listed),
                ", ".join(listed),
            )


def once_per_wav(
    recordings: list[Recording], origins: list[str], named_by_stem: list[bool]
) -> tuple[list[Recording], list[str], list[bool]]:
    """The CSV rows, each wav once, with a warning naming each row left out or merged: files
    that resampling makes one wav of (a.wav and a.flac: which audio it holds is not known, so
    all their rows go); a row that repeats an earlier one word for word (a copy pasted twice):
    left out; rows of one file under one media_id, or without one: one recording, that of
    the first row giving a media_id (else the first row), whose background species the other
    rows' labels join (`merged`; as tables that list each species heard in a recording on a
    row of its own have it), in file order. Rows of one file with media_ids of their own stay
    several recordings (one group: `with_groups`); a row without a media_id joins the first
    of them."""
    rows_of_wav: dict[str, list[int]] = {}
    for index, recording in enumerate(recordings):
        rows_of_wav.setdefault(recording.file, []).append(index)
    recordings, dropped = list(recordings), set()
    for wav, indices in rows_of_wav.items():
        if len(indices) < 2:
            continue
        # one file however it is spelt (./a.wav and a.wav, sub\a.wav and sub/a.wav)
        sources = {posix_path(recordings[i].fields["file"].strip()) for i in indices}
        if len(sources) > 1:
            dropped.update(indices)
            logger.warning(
                "%s all become %s after resampling, so which audio it holds is not known: "
                "left out (rename one of them)",
                " and ".join(
                    f"{origins[i]} ({shown_name(recordings[i].fields['file'])})" for i in indices
                ),  # fmt: skip
                shown_name(wav),
            )
            continue
        repeated = [
            i for n, i in enumerate(indices)
            if any(recordings[i].fields == recordings[j].fields for j in indices[:n])
        ]  # fmt: skip
        if repeated:
            dropped.update(repeated)
            logger.warning(
                "%s %s an earlier row of %s word for word: left out",
                ", ".join(origins[i] for i in repeated),
                "repeats" if len(repeated) == 1 else "repeat",
                shown_name(recordings[indices[0]].fields["file"]),
            )
        rows = [i for i in indices if i not in repeated]
        first_of_id: dict[str, int] = {}  # given media_id -> the file's first row with it
        for i in rows:
            if not named_by_stem[i]:
                first_of_id.setdefault(recordings[i].media_id, i)
        # rows without a media_id join the first row that gives one, wherever it is
        unnamed_into = min(first_of_id.values(), default=rows[0])
        for i in rows:
            into = unnamed_into if named_by_stem[i] else first_of_id[recordings[i].media_id]
            if into == i:
                continue
            dropped.add(i)
            recordings[into] = merged(recordings[into], recordings[i])
            logger.warning(
                "%s lists %s again, with %s: one recording (label %s; background species: %s)",
                origins[i],
                shown_name(recordings[i].fields["file"]),
                origins[into],
                recordings[into].class_id,
                "; ".join(recordings[into].background) or "none",
            )
    kept = [i for i in range(len(recordings)) if i not in dropped]
    return (
        [recordings[i] for i in kept],
        [origins[i] for i in kept],
        [named_by_stem[i] for i in kept],
    )


def merged(recording: Recording, again: Recording) -> Recording:
    """recording, with the label and background species of `again` (another row of its file)
    among its background species, each once; the label of `again` is its label where it had
    none."""
    if recording.class_id is None and again.class_id is not None:
        recording = replace(recording, class_id=again.class_id, species=again.species)
    heard = [again.class_id] if again.class_id else []
    background = list(recording.background)
    for name in heard + again.background:
        if name != recording.class_id and name not in background:
            background.append(name)
    return replace(recording, background=background)


def read_class_folders(root: str | Path) -> list[Recording]:
    """ROOT/<label>/**/<name>.<audio extension> -> recordings labelled with the folder name.

    Hidden entries (a name starting with '.') and __MACOSX are ignored; links to folders are
    followed (files_under). Audio files directly in ROOT have no class, and a name that is not
    valid UTF-8 or holds a NUL byte or line break cannot be stored: such files are named in a
    warning and left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise MetadataError(f"{root}: class folder root not found")
    recordings, origins = [], []
    for path in files_under(root):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if relative.suffix.lower() not in AUDIO_SUFFIXES or is_ignored(relative):
            continue
        if not path.is_file():
            logger.warning("%s: %s; left out", shown_name(str(path)), NOT_REGULAR)
            continue
        rel, label = relative.as_posix(), nfc(relative.parts[0])  # a Mac's folder names: NFD
        if len(relative.parts) == 1:
            logger.warning("%s: audio file outside a class folder; left out", shown_name(str(path)))
            continue
        problem = name_problem(rel)
        if problem:
            logger.warning("%s: the path %s; left out", shown_name(str(path)), problem)
            continue
        problem = field_problem(label)
        if problem:
            logger.warning(
                "%s: the class folder name %r %s, which a run file cannot hold; left out",
                shown_name(str(path)),
                label,
                problem,
            )
            continue
        recordings.append(
            Recording(
                media_id=path.stem,
                file=wav_name(rel, str(path)),
                class_id=label,
                species=label,
                fields={"file": rel, "label": label},
            )
        )
        origins.append(str(path))
    if not recordings:
        raise MetadataError(f"{root}: no audio files in class folders")
    recordings = told_apart_by_path(recordings, [True] * len(recordings))
    check_unique_media_ids(recordings, origins)
    return recordings


class Matched(NamedTuple):
    """What `match_audio` found: both kinds of mismatch, for the caller to report."""

    present: list[Recording]  # with its wav, named as it is on disk
    missing: list[Recording]  # without its wav: left out
    unused: list[str]  # wavs without a recording (paths in the wav folder): ignored


def match_audio(recordings: list[Recording], wav_dir: str | Path) -> Matched:
    """The recordings whose wav exists under wav_dir, and both kinds of mismatch.

    An extension in another case (x.WAV) still matches, and so does a name in another Unicode
    normalisation (a Mac writes é as e and an accent). The names that match no file that way
    may then match one as it was moved (`moved_files`), with a warning. The recording kept
    names the file as it is on disk.
    """
    wav_dir = Path(wav_dir)
    if not wav_dir.is_dir():
        raise MetadataError(f"{wav_dir}: wav folder not found")
    on_disk = {  # the name the table uses -> the name on disk
        wav_name(rel, str(wav_dir / rel)): rel
        for rel in (p.relative_to(wav_dir).as_posix() for p in files_under(wav_dir))
        if PurePosixPath(rel).suffix.lower() == ".wav" and (wav_dir / rel).is_file()
    }
    by_nfc = {nfc(name): name for name in on_disk}
    named = {recording.file for recording in recordings}  # a file named as it is matches it
    found: dict[int, str] = {}  # row -> its file's key in on_disk
    referenced: set[str] = set()
    for row, recording in enumerate(recordings):
        name = recording.file
        if name not in on_disk:  # another spelling, of a file no other row has matched
            spelt = by_nfc.get(nfc(name))
            if spelt is not None and spelt not in named and spelt not in referenced:
                name = spelt
        if name in on_disk:
            found[row] = name
            referenced.add(name)
    unmatched = {row: r.file for row, r in enumerate(recordings) if row not in found}
    moved = moved_files(unmatched, {n: key for n, key in by_nfc.items() if key not in referenced})
    if moved:
        found.update(moved)
        logger.warning(
            "%d of the table's files are not at the path it gives under %s, and were found "
            "moved: %s",
            len(moved),
            shown_name(str(wav_dir)),
            ", ".join(
                f"{shown_name(recordings[row].fields.get('file') or recordings[row].file)} as "
                f"{shown_name(on_disk[key])}"
                for row, key in sorted(moved.items())[:3]
            )
            + (", ..." if len(moved) > 3 else ""),
        )
    present = [replace(recordings[row], file=on_disk[found[row]]) for row in sorted(found)]
    missing = [recording for row, recording in enumerate(recordings) if row not in found]
    unused = [on_disk[name] for name in sorted(on_disk.keys() - set(found.values()))]
    return Matched(present, missing, unused)


def moved_files(unmatched: dict[int, str], free: dict[str, str]) -> dict[int, str]:
    """{row: file key} for the table's names (unmatched: row -> name) that name no file of the
    wav folder as they are, but do when moved one way, the same for all of them:
    - without the same leading folders (train/x.wav as x.wav, from a CSV beside the folder
      train/ that names files relative to itself);
    - or, in a table whose unmatched names are all bare file names, each as the one file of
      that name in a subfolder (x.wav as dog/x.wav).
    free: the NFC spelling of each file no row matched -> its key. A file that names of two
    spellings reach is nobody's (the tails of no/a.wav and yes/a.wav are both a.wav; rows of
    one spelling, each with a media_id of its own, share it), and a name with '..' is never
    moved. Names moved several ways (train/a.wav and test/b.wav) are none of them moved."""
    by_file_name: dict[str, list[str]] = {}
    for spelt, key in free.items():
        by_file_name.setdefault(PurePosixPath(spelt).name, []).append(key)
    bare_names = all(len(PurePosixPath(name).parts) == 1 for name in unmatched.values())
    ways: dict[tuple[str, ...], dict[int, str]] = {}  # the folders dropped -> {row: file key}
    for row, name in unmatched.items():
        parts = PurePosixPath(nfc(name)).parts
        if ".." in parts:
            continue
        for start in range(1, len(parts)):
            tail = PurePosixPath(*parts[start:]).as_posix()
            if tail in free:
                ways.setdefault(parts[:start], {})[row] = free[tail]
                break
        else:
            if bare_names and len(by_file_name.get(parts[0], [])) == 1:
                ways.setdefault((), {})[row] = by_file_name[parts[0]][0]
    if len(ways) != 1:
        return {}
    (moved,) = ways.values()
    spellings: dict[str, set[str]] = {}
    for row, key in moved.items():
        spellings.setdefault(key, set()).add(unmatched[row])
    return {row: key for row, key in moved.items() if len(spellings[key]) == 1}
