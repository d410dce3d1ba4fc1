"""Records of training runs: one row per run in a runs table, and plots of a run's curves.

The runs table is a CSV (and an XLSX copy when openpyxl is installed) with, like the 2016
scripts' log, the settings, the results and one column per layer of the model, so runs with
different models and settings can be compared side by side. A new column added by a later
run extends the table; earlier rows leave it empty. Trainings into different run folders may
share one table: a lock beside it (.NAME.lock) lets one of them at a time add its row.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import logging
from pathlib import Path
from typing import IO

import filelock
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from preprocess.paths import remove_partials, replace_atomically  # noqa: E402

logger = logging.getLogger(__name__)

# layer config entries worth a column: what the paper's table of layers gives
LAYER_KEYS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "pool_size",
    "units",
    "activation",
    "rate",
    "axis",
    "kernel_initializer",
)
PLOTS = {
    "loss.png": ("loss", ["loss", "val_loss"]),
    "accuracy.png": ("accuracy", ["accuracy", "val_accuracy"]),
    "map.png": ("average precision", ["val_map", "val_map_bg", "val_chunk_ap"]),
}


def describe_layer(layer) -> str:
    """'Conv2D(filters=128, kernel_size=(16, 16), ...) -> (None, 24, 37, 128)'."""
    config = layer.get_config()
    settings = []
    for key in LAYER_KEYS:
        if key in config:
            value = config[key]
            if isinstance(value, dict):  # a serialised initializer
                value = value.get("class_name", value)
            settings.append(f"{key}={value}")
    shape = tuple(layer.output.shape) if hasattr(layer, "output") else "?"
    return f"{type(layer).__name__}({', '.join(settings)}) -> {shape}"


def model_columns(model) -> dict[str, str]:
    """Columns describing a compiled model: parameters, optimizer, loss, one per layer."""
    columns = {
        "parameters": model.count_params(),
        "optimizer": f"{type(model.optimizer).__name__} {model.optimizer.get_config()}",
        "loss": str(model.loss),
    }
    for number, layer in enumerate(model.layers):
        columns[f"layer_{number:02d}"] = describe_layer(layer)
    return columns


def best_epoch(values: np.ndarray, mode: str) -> int | None:
    """Index of the best epoch of a history curve: its least ("min") or greatest ("max")
    finite value, the first of ties, as Keras's checkpoints keep it; None when none is finite."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    candidates = np.where(finite, values, np.inf if mode == "min" else -np.inf)
    return int(np.argmin(candidates) if mode == "min" else np.argmax(candidates))


def history_columns(history: dict[str, np.ndarray]) -> dict[str, float]:
    """Epochs run, and final, best and best epoch (1-based) of each logged curve."""
    columns = {"epochs": len(history.get("epoch", []))}
    for name, values in history.items():
        if name in ("epoch", "epoch_seconds"):
            continue
        best = best_epoch(values, "min" if name.endswith("loss") else "max")
        if best is None:
            continue
        columns[f"final_{name}"] = float(values[-1])
        columns[f"best_{name}"] = float(values[best])
        columns[f"best_{name}_epoch"] = best + 1
    if "epoch_seconds" in history:
        columns["train_seconds"] = float(np.nansum(history["epoch_seconds"]))
    return columns


class RunsTableError(ValueError):
    """A --runs-table path that holds something other than a runs table."""


def table_lock(table: Path) -> Path:
    """The lock file beside a runs table: trainings sharing the table take turns on it."""
    return table.with_name(f".{table.name}.lock")


def check_runs_table(table: Path) -> None:
    """Raise RunsTableError when `table` exists but is not a runs table (append_run would
    replace the file), or when its lock's name holds something other than a lock file (a link:
    found only when training ends, hours later, the run would miss its row)."""
    lock = table_lock(table)
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise RunsTableError(
            f"{lock}, the runs table's lock, is a link or not a file: remove it, or choose "
            "another --runs-table"
        )
    if not table.exists():
        return
    if not table.is_file():  # a folder; a pipe, whose reading would wait for a writer forever
        raise RunsTableError(
            f"{table} exists and is not a file, so not a runs table: choose another --runs-table"
        )
    try:
        with table.open(newline="", encoding="utf-8") as file:
            header = next(csv.reader(file), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunsTableError(
            f"{table} exists and is not a runs table ({error}): choose another --runs-table"
        ) from error
    if "run_dir" not in header:
        raise RunsTableError(
            f"{table} exists and is not a runs table (no run_dir column): choose another "
            "--runs-table"
        )


# a row is replaced by one of the same run: its folder and start (train/run_folder.py)
RUN_KEY = ("run_dir", "started")


def append_run(table: Path, row: dict) -> None:
    """Add row to the CSV runs table (created if new), extending its columns as needed,
    and rewrite the XLSX copy beside it when openpyxl is installed. A row of the same run
    (RUN_KEY: the run scored again, e.g. resumed once finished) is replaced, not repeated;
    a row of another run, or of a version before RUN_KEY had all its columns, is kept.
    The table's lock is held from reading it to replacing it, so a row that another training
    adds meanwhile is never lost."""
    table.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(table_lock(table)):
        check_runs_table(table)
        for copy in (table, table.with_suffix(".xlsx")):  # what a kill left of their writes
            remove_partials(copy)
        rows, columns = [], []
        if table.is_file():
            with table.open(encoding="utf-8", newline="") as file:
                reader = csv.DictReader(file)
                columns, rows = list(reader.fieldnames or []), list(reader)
        columns += [name for name in row if name not in columns]
        key = [str(row.get(name) or "") for name in RUN_KEY]
        rows = [old for old in rows if [old.get(name) or "" for name in RUN_KEY] != key]
        rows.append({name: _cell(value) for name, value in row.items()})

        def write_csv(file: IO) -> None:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

        replace_atomically(table, write_csv, "w")
        logger.info("run added to %s", table)
        if importlib.util.find_spec("openpyxl"):
            _write_xlsx(table.with_suffix(".xlsx"), columns, rows)


def _cell(value) -> str | int | float:
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str | int | float) else str(value)


def is_runs_workbook(path: Path) -> bool:
    """Whether path is a spreadsheet copy of a runs table as `_write_xlsx` writes it (one
    sheet, "runs", whose first row names run_dir): the only .xlsx append_run replaces."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True)
    except Exception:  # openpyxl raises many kinds on a file that is not a workbook
        return False
    try:
        if book.sheetnames != ["runs"]:
            return False
        header = next(book["runs"].iter_rows(max_row=1, values_only=True), ())
        return "run_dir" in header
    finally:
        book.close()


def _write_xlsx(path: Path, columns: list[str], rows: list[dict]) -> None:
    import openpyxl

    if path.exists() and not is_runs_workbook(path):
        logger.warning(
            "%s exists and is not a copy of a runs table: left as it is, without the runs", path
        )
        return
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "runs"
    sheet.append(columns)
    for row in rows:
        sheet.append([_number(row.get(name, "")) for name in columns])
    for cells in sheet.iter_rows():
        for cell in cells:  # openpyxl takes text starting with '=' for a formula to run
            if cell.data_type == "f":
                cell.data_type = "s"
    replace_atomically(path, book.save, "wb")
    logger.info("runs table also in %s", path)


def _number(text):
    """CSV cells are text: give the spreadsheet numbers where they are numbers."""
    try:
        return float(text) if text not in ("", None) else ""
    except (TypeError, ValueError):
        return text


def plot_history(history: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    """PNG plots of loss, accuracy and MAP per epoch in out_dir; returns their paths."""
    paths = []
    epochs = history.get("epoch", np.array([])) + 1
    for filename, (ylabel, names) in PLOTS.items():
        present = [name for name in names if name in history]
        if not present or not len(epochs):
            continue
        figure, axes = plt.subplots(figsize=(7, 4))
        for name in present:
            axes.plot(epochs, history[name], label=name, marker="." if len(epochs) < 50 else "")
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        # whole or not at all, and never through a link put there meanwhile
        save = functools.partial(figure.savefig, format="png", dpi=100)
        replace_atomically(out_dir / filename, save, "wb")
        plt.close(figure)
        paths.append(out_dir / filename)
    return paths
