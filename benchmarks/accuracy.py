"""What the accuracy benchmarks (bench_fsdd.py, bench_esc10.py) share: running a stage with
its wall time, the recipe options they pass to ./doall.sh, and the held-out truth file."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path


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
    path.write_text("".join(f"{Path(row['file']).stem};{row['label']};\n" for row in rows))
