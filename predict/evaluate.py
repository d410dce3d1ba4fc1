"""Score a BirdCLEF run file against the ground truth with the official MAP.

    python predict/evaluate.py --run-file RUN.csv --truth TRUTH

TRUTH is either the official ground-truth file, one line per test recording

    MediaId;ClassId;background1,background2

(an optional header line starting with MediaId; background entries are class ids, or
scientific names that a training-style XML folder given with --names-xml-dir maps to class ids),
or a BirdCLEF XML folder with labels (training-style XMLs: ClassId, and BackgroundSpecies as
scientific names, mapped to class ids through the folder's own Genus + Species -> ClassId).
Where there are XMLs (a truth folder, or --names-xml-dir), a background entry that is neither
one of their scientific names nor one of their class ids is left out of the scores and named in
a warning: runs name species by class id, and so does the official truth's background column,
so a species without one was never in it. So is a background entry that is none of the run's
classes (those its run file returns, or --classes names) nor a foreground class of the truth:
a bird heard behind the species a data set is made of, which no run can return. The
background column may also be a Python list, as BirdCLEF's secondary_labels ("['a', 'b']").
Cells may be quoted, as spreadsheets save them. A first line that names its columns as data
sets do (MediaId;ClassId, file;label, audio_id;primary_label) is a header. Where a run file
lists each recording's top k classes only, --classes tells the run's classes.

The run file is first validated as the official evaluator did (see predict/runfile.py). Each
recording's ranked list is then scored by average precision (train/metrics.py, the same code
as the training callback): relevant are the foreground species (`MAP (foreground)`), or the
foreground and background species (`MAP (with background)`); a relevant species the run did
not return scores 0, and so does every recording of the truth missing from the run file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# `python predict/evaluate.py` (how scorers run it) puts this folder first on sys.path, where
# predict.py would pass for the package `predict`: the project root takes its place, so the file
# also runs where env.sh's .pth names another checkout or none. `python -m predict.evaluate` needs
# none of this. Run by a Python without the requirements, it runs again with the project's .venv.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])
if __name__ == "__main__":
    from preprocess.cli import run_in_project_venv_when_a_requirement_is_missing

    run_in_project_venv_when_a_requirement_is_missing()

import numpy as np  # noqa: E402

from predict.report import check_report_paths, write_report  # noqa: E402
from predict.runfile import (  # noqa: E402
    AtomicWriter,
    RunEntry,
    RunFileError,
    read_classes,
    read_run_file,
    text_lines,
)
from preprocess.audio import AUDIO_SUFFIXES  # noqa: E402
from preprocess.cli import describe, run_command  # noqa: E402
from preprocess.metadata import (  # noqa: E402
    COLUMN_ALIASES,
    MetadataError,
    Recording,
    background_names,
    nfc,
    posix_path,
    read_birdclef_xml_dir,
)
from preprocess.paths import (  # noqa: E402
    NOT_REGULAR,
    NotText,
    OutputPathError,
    check_output,
    first_names,
    is_json_with,
    text_file,
)
from train.metrics import mean_average_precision, top1_accuracy  # noqa: E402

logger = logging.getLogger(__name__)


class TruthError(ValueError):
    """A ground-truth file or folder that cannot be read; the message names it."""


@dataclass
class Truth:
    """Labels per recording: foreground class id and background class ids."""

    foreground: dict[str, str] = field(default_factory=dict)  # MediaId -> ClassId
    background: dict[str, list[str]] = field(default_factory=dict)  # MediaId -> [ClassId]
    unmapped_background: set[str] = field(default_factory=set)  # names without a class id


def background_to_class(recordings: list[Recording]) -> dict[str, str]:
    """Background entry -> ClassId, from labelled recordings: their scientific names
    'Genus species', and their class ids themselves."""
    labelled = [r for r in recordings if r.class_id]
    return {
        **{r.class_id: r.class_id for r in labelled},
        **{r.species: r.class_id for r in labelled if r.species},
    }


def background_class_ids(
    entries: list[str], to_class: dict[str, str] | None
) -> tuple[list[str], list[str]]:
    """(class ids, entries without one) of a recording's background species.

    to_class: `background_to_class` of the dataset's XMLs; an entry it lacks is a species with
    no class id, which no run can return and the official truth could not list. None: no XMLs
    to check against, every entry is taken as a class id.
    """
    if to_class is None:
        return list(entries), []
    unmapped = [entry for entry in entries if entry not in to_class]
    return [to_class[entry] for entry in entries if entry in to_class], unmapped


def read_truth_csv(
    path: Path, to_class: dict[str, str] | None = None, run_ids: set[str] | None = None
) -> Truth:
    """The official format `MediaId;ClassId;background1,background2`, one line per recording,
    or the same fields as CSV with commas or tabs (`truth_separator`), the background species
    in the third field (later columns are ignored).

    A header line (the first line that is not blank, starting with "MediaId", or naming its
    columns as file;label, id;class and the like, unless it names a recording of run_ids:
    `looks_like_header`) is skipped, and so is a byte-order mark. Background entries go
    through `background_class_ids`.
    """
    try:
        return _read_truth_lines(path, to_class, run_ids)
    except NotText as error:
        raise TruthError(str(error)) from None


def column_word(name: str) -> str:
    """name in lower case without spaces and signs; digits stay (recording_1 is no header)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


# the first two column names of a truth file's header, as people write them, in lower case
# without spaces, "_", "#" or other signs (`column_word`): "Media Id", "#MediaId", "media_id";
# the names training's CSVs are read under too (metadata.COLUMN_ALIASES)
HEADER_IDS = {
    *("mediaid", "media", "audioid", "audio", "file", "filename", "fileid", "path", "filepath"),
    *("wav", "name", "id", "recording", "recordingid", "clip", "clipid", "sound", "sample"),
    *("rowid", "itemid", *(column_word(name) for name in COLUMN_ALIASES["file"])),
}
HEADER_CLASSES = {
    *("classid", "class", "classname", "label", "labels", "species", "speciesid", "category"),
    *("primarylabel", "target", "bird", "birds", "hasbird", "ebirdcode"),
    *(column_word(name) for name in COLUMN_ALIASES["label"]),
}


def unquoted(cell: str) -> str:
    """A cell a spreadsheet saved in quotes ("Parus major") as it reads; any other as it is
    (a MediaId may begin with a quote: "live" take)."""
    if len(cell) >= 2 and cell[0] == cell[-1] == '"' and '"' not in cell[1:-1].replace('""', ""):
        return cell[1:-1].replace('""', '"').strip()
    return cell


def looks_like_header(fields: list[str], run_ids: set[str] | None = None) -> bool:
    """Whether a truth file's first line names its columns (MediaId;ClassId, or file;label as
    a spreadsheet export has it) rather than a recording: never where its MediaId, as
    `named_as_in_run_file` would compare it, is a recording of the run file (run_ids), as
    sample;bird may be."""
    first = column_word(fields[0])
    words = first == "mediaid" or (
        first in HEADER_IDS and len(fields) > 1 and column_word(fields[1]) in HEADER_CLASSES
    )
    return words and not (run_ids and spellings(fields[0]) & {nfc(i) for i in run_ids})


def spellings(media_id: str) -> set[str]:
    """A truth's MediaId as `named_as_in_run_file` may compare it with a run file's: as it
    is (`/`-separated), and `as_file_name` with and without its folder; in NFC."""
    media_id = nfc(media_id)
    as_is = str(posix_path(media_id))
    return {as_is, as_file_name(media_id, False), as_file_name(media_id, True)}


def as_file_name(media_id: str, strip_folder: bool) -> str:
    """A truth's MediaId that names a file (`test/101.wav`) as predict.py names recordings:
    without its audio suffix (`test/101`), and, with strip_folder, its folder too (`101`)."""
    name = posix_path(media_id)
    if name.suffix.lower() in AUDIO_SUFFIXES:
        name = name.with_suffix("")
    return name.name if strip_folder else str(name)


SEPARATORS = {";": "semicolons", "\t": "tabs", ",": "commas"}  # in the order tried


def truth_separator(lines: list[str]) -> str:
    """';' (the official format), or the tab or comma a spreadsheet saves CSV with: the first
    of them that more than half of the lines hold (a title or header line apart); else ';'."""
    filled = [line.strip() for line in lines if line.strip()]
    for separator in SEPARATORS:
        if 2 * sum(separator in line for line in filled) > len(filled):
            return separator
    return ";"


def truth_fields(line: str, separator: str) -> list[str]:
    """A truth line's fields: split at ';' (the official format; cells may be quoted), or
    read as CSV with the tab or comma (quotes around a field of several background species)."""
    if separator == ";":
        return [unquoted(part.strip()) for part in line.strip().split(";")]
    return [part.strip() for part in next(csv.reader([line.strip()], delimiter=separator), [])]


def _read_truth_lines(
    path: Path, to_class: dict[str, str] | None, run_ids: set[str] | None
) -> Truth:
    truth = Truth()
    # a byte-order mark is dropped (as preprocess/metadata.read_csv does), not read into the
    # first MediaId or header; UTF-16 and UTF-32 are read where such a mark says so
    with text_file(path) as file:
        lines = list(text_lines(file, path))
    separator = truth_separator(lines)
    seen_line = False
    for number, line in enumerate(lines, 1):
        fields = truth_fields(line, separator)
        if not any(fields):  # blank, or separators only (a spreadsheet's empty row)
            continue
        while len(fields) > 3 and not fields[-1]:  # a line ending in ";" (a spreadsheet's)
            fields.pop()
        header = not seen_line and looks_like_header(fields, run_ids)
        seen_line = True
        if header:
            logger.info("%s line %d: a header, not a recording: %s", path, number, line.strip())
            continue
        official = separator == ";"
        if len(fields) < 2 or (official and len(fields) > 3) or not all(fields[:2]):
            raise TruthError(
                f"{path} line {number}: expected MediaId;ClassId;background1,background2 (read "
                f"as separated by {SEPARATORS[separator]}, as most of its lines are), got "
                f"{line.strip()!r}"
            )
        media_id, class_id = fields[0], fields[1]
        if media_id in truth.foreground:
            raise TruthError(f"{path} line {number}: MediaId {media_id} listed twice")
        # the third field: columns after it (a spreadsheet's type, rating...) are no species
        entries = background_names(fields[2]) if len(fields) > 2 else []
        truth.foreground[media_id] = class_id
        truth.background[media_id], unmapped = background_class_ids(entries, to_class)
        truth.unmapped_background.update(unmapped)
    return truth


def read_truth_xml_dir(xml_dir: Path) -> Truth:
    """Labels of a training-style BirdCLEF XML folder; background names mapped via the XMLs."""
    recordings, skipped = read_birdclef_xml_dir(xml_dir)
    for message in skipped:
        logger.warning("skipped: %s", message)
    to_class = background_to_class(recordings)
    truth = Truth()
    for recording in recordings:
        if not recording.class_id:
            continue
        truth.foreground[recording.media_id] = recording.class_id
        truth.background[recording.media_id], unmapped = background_class_ids(
            recording.background, to_class
        )
        truth.unmapped_background.update(unmapped)
    if not truth.foreground:
        raise TruthError(f"{xml_dir}: no labelled recording (test-style XMLs have no ClassId)")
    return truth


def read_truth(
    path: Path, names_xml_dir: Path | None = None, run_ids: set[str] | None = None
) -> Truth:
    if path.is_dir():
        return read_truth_xml_dir(path)
    if path.exists() and not path.is_file():  # a pipe or a device: read without end
        raise TruthError(f"{path}: {NOT_REGULAR}; give a CSV file or an XML folder")
    if not path.is_file():
        raise TruthError(f"{path}: ground truth not found (a CSV file or an XML folder)")
    to_class = None
    if names_xml_dir:
        to_class = background_to_class(read_birdclef_xml_dir(names_xml_dir)[0])
        if not to_class:  # else every background species would be left out
            raise TruthError(f"{names_xml_dir}: no labelled recording to map names with")
    truth = read_truth_csv(path, to_class, run_ids)
    if not truth.foreground:
        raise TruthError(f"{path}: no recording in the ground truth")
    return truth


def model_classes_from(path: Path) -> list[str]:
    """The class ids of a run folder's classes.json; a TruthError naming the file."""
    try:
        return read_classes(path)[0]
    except ValueError as error:
        raise TruthError(str(error)) from None


def chance_map(n_classes: int) -> float:
    """Expected AP of a random ranking of n_classes with one relevant class: H(n) / n."""
    return float(np.sum(1.0 / np.arange(1, n_classes + 1)) / n_classes)


def check_told_apart(names: Iterable[str], what: str) -> None:
    """TruthError unless the names stay distinct in NFC: two that differ only in Unicode
    normalisation (café and café) would be one recording or class to the scorer."""
    first_of: dict[str, str] = {}
    for name in names:
        other = first_of.setdefault(nfc(name), name)
        if other != name:
            raise TruthError(
                f"{what}: {other!r} and {name!r} differ only in Unicode normalisation, which "
                "this scorer does not tell apart: rename one"
            )


def same_normalisation(
    entries: list[RunEntry], truth: Truth, model_classes: list[str] | None
) -> tuple[list[RunEntry], Truth, list[str] | None]:
    """The run, truth and classes with every MediaId and class id in Unicode NFC, so that a
    name typed on one system matches a file name of another (a Mac writes é as e and an
    accent, NFD). TruthError where two names of one source would become one."""
    check_told_apart(truth.foreground, "MediaIds of the ground truth")
    check_told_apart(
        {*truth.foreground.values(), *itertools.chain(*truth.background.values())},
        "class ids of the ground truth",
    )
    check_told_apart({entry.media_id for entry in entries}, "MediaIds of the run file")
    check_told_apart({entry.class_id for entry in entries}, "class ids of the run file")
    check_told_apart(model_classes or [], "the run's classes")
    normalised = Truth(
        {nfc(media_id): nfc(class_id) for media_id, class_id in truth.foreground.items()},
        {nfc(m): [nfc(c) for c in classes] for m, classes in truth.background.items()},
        truth.unmapped_background,
    )
    entries = [
        dataclasses.replace(entry, media_id=nfc(entry.media_id), class_id=nfc(entry.class_id))
        for entry in entries
    ]
    classes = [nfc(class_id) for class_id in model_classes] if model_classes else model_classes
    return entries, normalised, classes


def task_classes(
    entries: list[RunEntry], truth: Truth, model_classes: list[str] | None
) -> set[str]:
    """The classes of the task, as far as the inputs tell: the truth's foreground classes and
    the run's (every class the run file returns, all of them for a run file predict.py wrote,
    and --classes, which says more of one that lists each recording's top k only)."""
    run_classes = {entry.class_id for entry in entries} | set(model_classes or [])
    return run_classes | set(truth.foreground.values())


def scored_background(truth: Truth, classes: set[str]) -> Truth:
    """truth with each background entry that is none of classes (`task_classes`) left out, and
    added to unmapped_background: a species outside the task (a bird heard behind the species a
    set is made of, "nan" of a spreadsheet) that no run can return, as the official truth,
    which lists class ids, never held."""
    outside = {entry for entries in truth.background.values() for entry in entries} - classes
    if not outside:
        return truth
    return dataclasses.replace(
        truth,
        background={
            media_id: [entry for entry in entries if entry in classes]
            for media_id, entries in truth.background.items()
        },
        unmapped_background=truth.unmapped_background | outside,
    )


def named_as_in_run_file(truth: Truth, run_ids: set[str]) -> Truth:
    """truth, its MediaIds written as the run file names recordings where the truth names
    them by file (`101.wav`, `test/101.wav`, where predict.py writes `101`): without the audio
    suffix, then without the folder too, where that names more of the run file's recordings
    and no two recordings alike. Else truth as it is."""
    matched = len(run_ids.intersection(truth.foreground))
    if matched == len(truth.foreground):
        return truth
    for strip_folder in (False, True):
        renamed = {media_id: as_file_name(media_id, strip_folder) for media_id in truth.foreground}
        if len(set(renamed.values())) == len(renamed) and (
            len(run_ids.intersection(renamed.values())) > matched
        ):
            logger.warning(
                "the ground truth names recordings by file (%s): compared with the run file's "
                "MediaIds as %s",
                next(iter(truth.foreground)),
                renamed[next(iter(truth.foreground))],
            )
            return Truth(
                {renamed[key]: value for key, value in truth.foreground.items()},
                {renamed[key]: value for key, value in truth.background.items()},
                truth.unmapped_background,
            )
    return truth


def score(entries: list[RunEntry], truth: Truth, model_classes: list[str] | None = None) -> dict:
    """Official scores of a validated run against the truth, with counts and warnings.

    The run's ranks become scores (-rank; -inf for a class not returned), so ties in written
    probabilities cannot change the result: the official evaluator read the ranks too.
    """
    run_ids = {entry.media_id for entry in entries}
    media_ids = sorted(truth.foreground)
    run_file_classes = {entry.class_id for entry in entries}
    truth_classes = set(truth.foreground.values()).union(*truth.background.values())
    known = set(model_classes) if model_classes is not None else run_file_classes
    if not run_ids & set(media_ids):
        raise TruthError("the run file and the ground truth share no MediaId: wrong test set?")
    if not known & truth_classes:
        raise TruthError(
            "the run's classes and the ground truth's share none: is the model from another "
            "dataset?"
        )

    classes = sorted(run_file_classes | truth_classes | known)
    column = {class_id: index for index, class_id in enumerate(classes)}
    row = {media_id: index for index, media_id in enumerate(media_ids)}
    scores = np.full((len(media_ids), len(classes)), -np.inf)
    for entry in entries:
        if entry.media_id in row:
            scores[row[entry.media_id], column[entry.class_id]] = -entry.rank
    foreground = np.zeros(scores.shape, dtype=bool)
    with_background = np.zeros(scores.shape, dtype=bool)
    labels = np.empty(len(media_ids), dtype=int)
    for media_id, index in row.items():
        labels[index] = column[truth.foreground[media_id]]
        foreground[index, labels[index]] = True
        with_background[index, labels[index]] = True
        for class_id in truth.background[media_id]:
            with_background[index, column[class_id]] = True

    present = np.array([media_id in run_ids for media_id in media_ids])
    # a recording missing from the run file counts as wrong, hence the share of present rows
    accuracy = top1_accuracy(scores[present], labels[present]) * present.mean()
    return {
        "map_foreground": mean_average_precision(scores, foreground),
        "map_with_background": mean_average_precision(scores, with_background),
        "top1_accuracy": float(accuracy),
        "recordings": len(media_ids),
        "missing_from_run": sorted(set(media_ids) - run_ids),
        "not_in_truth": sorted(run_ids - set(media_ids)),
        "with_background": int(sum(bool(b) for b in truth.background.values())),
        "unknown_classes": sorted(truth_classes - known),
        "unmapped_background": sorted(truth.unmapped_background),
        # a recording of a class the run does not know scores 0 under any ranking
        "chance_map_foreground": chance_map(len(known))
        * float(np.mean([truth.foreground[m] in known for m in media_ids])),
        "n_classes": len(known),
    }


def report(results: dict) -> str:
    lines = [
        f"MAP (foreground): {results['map_foreground']:.4f}",
        f"MAP (with background): {results['map_with_background']:.4f}",
        f"top-1 accuracy: {results['top1_accuracy']:.4f}",
        f"recordings: {results['recordings']} in the truth "
        f"({results['with_background']} with background species), "
        f"{len(results['missing_from_run'])} missing from the run file (scored 0), "
        f"{len(results['not_in_truth'])} in the run file but not in the truth (ignored)",
        f"chance level (random ranking of {results['n_classes']} classes): "
        f"MAP (foreground) {results['chance_map_foreground']:.4f}",
    ]
    return "\n".join(lines)


def _warn(results: dict) -> None:
    for key, what in (
        ("missing_from_run", "recordings in the truth missing from the run file (scored 0)"),
        ("not_in_truth", "recordings in the run file not in the truth (ignored)"),
        (
            "unknown_classes",
            "classes in the truth that the run never returns or the model does not know "
            "(scored as not returned)",
        ),
        (
            "unmapped_background",
            "background species that no run can return (none of the run's or the truth's "
            "classes, or without a class id in the XMLs): not scored",
        ),
    ):
        if results[key]:
            logger.warning("%s: %s", what, first_names(results[key], 10))


def write_report_for(out_dir, entries, truth: Truth, results: dict, model_classes) -> Path:
    """predict/report.py's files for these results; classes: the model's, else all seen."""
    classes = model_classes or sorted(
        {e.class_id for e in entries} | set(truth.foreground.values())
    )
    classes = [*classes, *sorted(set(truth.foreground.values()) - set(classes))]
    summary = {
        "MAP (foreground)": f"{results['map_foreground']:.4f}",
        "MAP (with background)": f"{results['map_with_background']:.4f}",
        "top-1 accuracy": f"{results['top1_accuracy']:.4f}",
        "recordings in the truth": results["recordings"],
        "missing from the run file": len(results["missing_from_run"]),
        "chance MAP (foreground)": f"{results['chance_map_foreground']:.4f}",
    }
    return write_report(out_dir, entries, truth.foreground, classes, summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Score a BirdCLEF run file (MediaId;ClassId;Probability;Rank) with the "
        "official MAP, foreground only and with background species, and top-1 accuracy. "
        "The run file is validated first; the first bad line is named."
    )
    parser.add_argument("--run-file", type=Path, required=True, help="the run file to score")
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="ground truth: a CSV MediaId;ClassId;background1,background2 or a "
        "BirdCLEF XML folder with labels",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        help="the model's classes.json (from its run folder): names classes of "
        "the truth the model does not know, and sets the chance level",
    )
    parser.add_argument(
        "--names-xml-dir",
        type=Path,
        help="training-style XML folder mapping scientific names in the CSV's "
        "background column to class ids; a background entry that is neither such a name "
        "nor one of the XMLs' class ids is left out of the scores and named",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write a report: per_class.csv, confusion matrix, precision-recall curves of "
        "the weakest classes, report.html",
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    def work() -> int:
        inputs = [
            path for path in (args.run_file, args.truth, args.classes, args.names_xml_dir) if path
        ]
        if args.json:
            check_output(
                args.json,
                own_kind=lambda path: is_json_with(path, "map_foreground"),
                kind="a results file written by evaluate.py --json",
                inputs=inputs,
                option="--json",
            )
        if args.report:
            check_report_paths(args.report, [*inputs, *([args.json] if args.json else [])])
        entries = read_run_file(args.run_file)
        truth = read_truth(args.truth, args.names_xml_dir, {e.media_id for e in entries})
        model_classes = model_classes_from(args.classes) if args.classes else None
        entries, truth, model_classes = same_normalisation(entries, truth, model_classes)
        # before the scores and the report, which count the same recordings
        truth = named_as_in_run_file(truth, {entry.media_id for entry in entries})
        truth = scored_background(truth, task_classes(entries, truth, model_classes))
        results = score(entries, truth, model_classes)
        print(report(results))
        _warn(results)
        if args.json:
            with AtomicWriter(args.json) as json_file:
                json_file.file.write(json.dumps(results, indent=2))
        if args.report:
            try:
                path = write_report_for(args.report, entries, truth, results, model_classes)
            except OSError as error:
                raise OutputPathError(f"cannot write the report: {describe(error)}") from error
            print(f"report: {path}")
        return 0

    input_errors = (RunFileError, TruthError, MetadataError, OutputPathError)
    status = run_command(work, args.verbose, input_errors)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
