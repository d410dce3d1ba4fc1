"""The evaluation report for people: per-class numbers, a confusion matrix, the weakest classes'
precision-recall curves, and one HTML page showing them (`evaluate.py --report DIR`).

    DIR/per_class.csv          class, ap, precision, recall, f1, support (one row per class)
    DIR/confusion_matrix.csv   true class (rows) x top-1 class (columns), recording counts
    DIR/confusion_matrix.png   the same as an image
    DIR/pr_curves.png          precision-recall curves of the classes with the lowest AP
    DIR/report.html            the overall scores, both tables and both plots (no server)

Per class, over the recordings of the ground truth (foreground labels):
- ap: average precision of ranking the recordings by the class's probability in the run file
  (0 for a recording whose list does not hold the class), as scikit-learn computes it;
- precision, recall, f1: of the top-1 decision (a recording is assigned its rank-1 class; one
  missing from the run file is assigned nothing, the "(none)" column of the confusion matrix);
- support: recordings whose foreground class it is.
Undefined values (no support, or never predicted) are empty cells in the CSV.

Each file goes through preprocess/paths.check_output first (`check_report_paths`): an input or
a file of another kind under one of these names is never replaced. Each is written to a
temporary file beside it and moved into place once whole.
"""

from __future__ import annotations

import csv
import functools
import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from predict.runfile import AtomicWriter, RunEntry, as_text_cell  # noqa: E402
from preprocess.paths import (  # noqa: E402
    OutputPathError,
    check_output,
    first_bytes,
    first_line,
    remove_partials,
    replace_atomically,
)

PER_CLASS_COLUMNS = ("class", "ap", "precision", "recall", "f1", "support")
CONFUSION_CORNER = "true \\ top-1"
NO_PREDICTION = "(none)"
HTML_TITLE = "<title>Evaluation report</title>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the "Software" text of every PNG this project writes where a PNG may already be: a user's
# own picture at one of those names is not one, and is never replaced
PNG_METADATA = {"Software": "birdclef-cnn"}
WEAKEST_CLASSES = 6
MAX_LABELLED_CLASSES = 60  # confusion matrices wider than this get no tick labels


@dataclass
class ClassTable:
    """Per-class numbers; arrays (classes,) in the order of classes. NaN where undefined."""

    classes: list[str]
    ap: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray  # (classes, classes + 1): true x top-1, last column NO_PREDICTION
    scores: np.ndarray  # (recordings, classes) run file probabilities, 0 when not returned
    labels: np.ndarray  # (recordings,) true class index


def class_table(
    entries: Sequence[RunEntry], foreground: dict[str, str], classes: Sequence[str]
) -> ClassTable:
    """Per-class numbers of a run file against foreground labels {MediaId: ClassId}.

    classes: every class to report (the model's, or those of the run and the truth); a truth
    class outside it is an error.
    """
    classes = list(classes)
    column = {class_id: index for index, class_id in enumerate(classes)}
    unknown = sorted(set(foreground.values()) - set(column))
    if unknown:
        raise ValueError(f"truth classes missing from the class list: {', '.join(unknown[:5])}")
    media_ids = sorted(foreground)
    row = {media_id: index for index, media_id in enumerate(media_ids)}
    scores = np.zeros((len(media_ids), len(classes)))
    top1 = np.full(len(media_ids), len(classes))  # NO_PREDICTION until a rank 1 is seen
    for entry in entries:
        if entry.media_id in row and entry.class_id in column:
            scores[row[entry.media_id], column[entry.class_id]] = entry.probability
            if entry.rank == 1:
                top1[row[entry.media_id]] = column[entry.class_id]
    labels = np.array([column[foreground[m]] for m in media_ids], dtype=int)
    confusion = np.zeros((len(classes), len(classes) + 1), dtype=int)
    np.add.at(confusion, (labels, top1), 1)

    support = confusion.sum(axis=1)
    true_positives = np.diag(confusion[:, : len(classes)])
    predicted = confusion[:, : len(classes)].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, np.nan)
        recall = np.where(support > 0, true_positives / support, np.nan)
        f1 = np.where(
            support > 0,
            np.where(true_positives > 0, 2 * precision * recall / (precision + recall), 0.0),
            np.nan,
        )
    ap = np.array(
        [
            average_precision_score(labels == c, scores[:, c]) if support[c] else np.nan
            for c in range(len(classes))
        ]
    )
    return ClassTable(classes, ap, precision, recall, f1, support, confusion, scores, labels)


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def per_class_rows(table: ClassTable) -> list[list[str]]:
    """per_class.csv's rows, header first, as the CSV and the page show them."""
    rows = [list(PER_CLASS_COLUMNS)]
    for c, class_id in enumerate(table.classes):
        rows.append(
            [class_id, *(_cell(v[c]) for v in (table.ap, table.precision, table.recall,
             table.f1)), str(table.support[c])]
        )  # fmt: skip
    return rows


def confusion_rows(table: ClassTable) -> list[list[str]]:
    """confusion_matrix.csv's rows, header first."""
    rows = [[CONFUSION_CORNER, *table.classes, NO_PREDICTION]]
    for class_id, counts in zip(table.classes, table.confusion, strict=True):
        rows.append([class_id, *map(str, counts)])
    return rows


def write_csv(path: Path, rows: Sequence[Sequence[str]]) -> None:
    """rows as a CSV whose cells a spreadsheet shows as text, never runs as a formula (a
    class named '=HYPERLINK(...)': `as_text_cell`; no number here begins with a sign)."""
    with AtomicWriter(path) as out:
        csv.writer(out.file).writerows([[as_text_cell(cell) for cell in row] for row in rows])


def save_png(figure: plt.Figure, path: Path) -> None:
    """figure as a PNG at path, written whole or not at all, and closed."""
    try:
        save = functools.partial(figure.savefig, format="png", dpi=100, metadata=PNG_METADATA)
        replace_atomically(path, save, "wb")
    finally:
        plt.close(figure)


def plot_confusion(path: Path, table: ClassTable) -> None:
    """Image of the confusion matrix, each row normalised by its support (counts in cells when
    the matrix is small)."""
    n = len(table.classes)
    size = min(4 + 0.3 * n, 30)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    support = np.maximum(table.support[:, None], 1)
    image = axes.imshow(table.confusion / support, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class's recordings")
    if n <= MAX_LABELLED_CLASSES:
        axes.set_xticks(range(n + 1), [*table.classes, NO_PREDICTION], rotation=90)
        axes.set_yticks(range(n), table.classes)
    if n <= 20:
        for (true, top), count in np.ndenumerate(table.confusion):
            if count:
                axes.text(top, true, str(count), ha="center", va="center", fontsize=8)
    axes.set_xlabel("top-1 class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix (recordings)")
    figure.tight_layout()
    save_png(figure, path)


def weakest_classes(table: ClassTable, count: int = WEAKEST_CLASSES) -> list[int]:
    """Indices of the count classes with support and the lowest AP (ties in class order)."""
    with_support = [c for c in range(len(table.classes)) if table.support[c]]
    return sorted(with_support, key=lambda c: (table.ap[c], c))[:count]


def plot_pr_curves(path: Path, table: ClassTable, which: Sequence[int]) -> None:
    figure, axes = plt.subplots(figsize=(7, 5))
    for c in which:
        precision, recall, _ = precision_recall_curve(table.labels == c, table.scores[:, c])
        axes.step(
            recall, precision, where="post", label=f"{table.classes[c]} (AP {table.ap[c]:.3f})"
        )
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"precision-recall of the {len(which)} weakest classes")
    if which:
        axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    save_png(figure, path)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>\n"
        for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def write_html(path: Path, table: ClassTable, summary: dict[str, object]) -> None:
    per_class = per_class_rows(table)
    confusion = confusion_rows(table)
    page = [
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>{HTML_TITLE}",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:2em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "</style></head><body>",
        "<h1>Evaluation report</h1>",
        _html_table(["score", "value"], list(summary.items())),
        "<h2>Per class</h2>",
        "<p>precision, recall and F1 of the top-1 decision; AP of ranking the recordings by "
        "the class's probability; empty: undefined (no support, or never predicted). "
        "<a href='per_class.csv'>per_class.csv</a></p>",
        _html_table(per_class[0], per_class[1:]),
        "<h2>Confusion matrix</h2>",
        "<p><a href='confusion_matrix.csv'>confusion_matrix.csv</a></p>",
        "<img src='confusion_matrix.png' alt='confusion matrix'>",
    ]
    if len(table.classes) <= MAX_LABELLED_CLASSES:
        page.append(_html_table(confusion[0], confusion[1:]))
    page += [
        "<h2>Weakest classes</h2>",
        "<img src='pr_curves.png' alt='precision-recall curves of the weakest classes'>",
        "</body></html>\n",
    ]
    with AtomicWriter(path) as out:
        out.file.write("\n".join(page))


def is_own_png(path: Path) -> bool:
    """Whether path is a PNG image this project wrote (PNG_METADATA, in a text chunk that
    matplotlib writes before the pixels)."""
    start = first_bytes(path, 4096)
    text = b"tEXtSoftware\0" + PNG_METADATA["Software"].encode()
    return start.startswith(PNG_SIGNATURE) and text in start


# each report file: what a file of its own kind (one an earlier report wrote) is, and how to
# tell from its first bytes
REPORT_FILES: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "per_class.csv": (
        "a per-class table of a report",
        lambda path: first_line(path) == ",".join(PER_CLASS_COLUMNS),
    ),
    "confusion_matrix.csv": (
        "a confusion matrix of a report",
        lambda path: (first_line(path) or "").startswith(CONFUSION_CORNER + ","),
    ),
    # only marked ones: an unmarked PNG, even matplotlib's beside a report page (as reports
    # wrote them before the marks), may be the user's
    "confusion_matrix.png": ("a PNG image a report wrote", is_own_png),
    "pr_curves.png": ("a PNG image a report wrote", is_own_png),
    "report.html": (
        "a report page",
        lambda path: HTML_TITLE.encode() in first_bytes(path, 200),
    ),
}


def check_report_paths(out_dir: Path, inputs: Iterable[Path]) -> None:
    """OutputPathError unless every report file in out_dir may be written: none is one of
    inputs (the files the command reads, or writes under other options) or an existing file of
    another kind (`preprocess/paths.check_output`)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"--report {out_dir} exists and is not a folder")
    inputs = list(inputs)
    for name, (kind, own_kind) in REPORT_FILES.items():
        check_output(out_dir / name, own_kind=own_kind, kind=kind, inputs=inputs, option="--report")


def write_report(
    out_dir: Path,
    entries: Sequence[RunEntry],
    foreground: dict[str, str],
    classes: Sequence[str],
    summary: dict[str, object],
) -> Path:
    """All report files into out_dir; returns the path of report.html.

    summary: overall scores shown at the top of the page ({name: value}).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:  # what a kill left of an earlier report's files (no lock here)
        remove_partials(out_dir / name, locked=False)
    table = class_table(entries, foreground, classes)
    write_csv(out_dir / "per_class.csv", per_class_rows(table))
    write_csv(out_dir / "confusion_matrix.csv", confusion_rows(table))
    plot_confusion(out_dir / "confusion_matrix.png", table)
    plot_pr_curves(out_dir / "pr_curves.png", table, weakest_classes(table))
    write_html(out_dir / "report.html", table, summary)
    return out_dir / "report.html"
