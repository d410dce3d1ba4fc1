"""What the accuracy benchmarks (bench_fsdd.py, bench_esc10.py, bench_long_recordings.py)
share: running a stage with its wall time, the recipe options they pass to ./doall.sh, the
held-out truth file, and ESC-10's clips at 16 kHz."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESC10 = ROOT.parent / "shared" / "data" / "esc10"
PYTHON = str(ROOT / ".venv" / "bin" / "python")  # the project's environment


def run(command: list[str]) -> float:
    """Run a command (its output shown); returns its wall seconds."""
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def comma_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """--recipes, --epochs, --model, --train-args and --tag (run names of a variant)."""
    parser.add_argument("--recipes", type=comma_list, default=["modern", "2016"])
    parser.add_argument("--epochs", type=int, help="default: 20 for 2016, the recipe's for modern")
    parser.add_argument("--model", help="model file (default: the recipe's)")
    parser.add_argument("--train-args", help="more train_model.py options, one string")
    parser.add_argument("--tag", default="", help="suffix of the run names (variants side by side)")


def doall_recipe_options(args: argparse.Namespace, recipe: str) -> list[str]:
    """The ./doall.sh options of `recipe` under the add_recipe_options arguments."""
    options = ["--recipe", recipe]
    if args.epochs:
        options += ["--epochs", str(args.epochs)]
    elif recipe == "2016":
        options += ["--epochs", "20"]  # the 2016 default (20,000 with patience 100) never ends
    if args.model:
        options += ["--model", args.model]
    if args.train_args:
        options += ["--train-args", args.train_args]
    return options


def write_truth(path: Path, rows: list[dict]) -> None:
    """The official ground-truth format (MediaId;ClassId;background), no background: the
    MediaId is the file's stem, rows have "file" and "label"."""
    path.write_text(
        "".join(f"{Path(row['file']).stem};{row['label']};\n" for row in rows), encoding="utf-8"
    )


def esc10_at_16k() -> tuple[list[dict], Path, float]:
    """ESC-10's metadata rows (file, label, fold) and its clips resampled once to 16 kHz
    (work/bench-esc10/audio_16k, kept for the next run). Exits where the shared copy is
    absent. Returns (rows, folder of the 16 kHz wavs, resampling wall seconds)."""
    if not (ESC10 / "metadata.csv").is_file():
        sys.exit(f"{ESC10}/metadata.csv not found: this benchmark needs the shared ESC-10 copy")
    with (ESC10 / "metadata.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    audio = ROOT / "work" / "bench-esc10" / "audio_16k"
    seconds = run(["bash", str(ROOT / "preprocess" / "resample_wavs_to_16k.sh"),
                   str(ESC10 / "audio"), str(audio)])  # fmt: skip
    return rows, audio, seconds
