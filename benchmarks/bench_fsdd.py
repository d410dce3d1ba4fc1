"""Accuracy on real recordings: the whole pipeline on the Free Spoken Digit Dataset (FSDD).

    python benchmarks/bench_fsdd.py [--epochs 20] [--model train/model-BirdClef.py]

FSDD (../shared/data/fsdd: 3,000 clips of spoken digits 0-9, 8 kHz, 0.1-2.3 s, 6 speakers)
goes through the generic CSV path of ./doall.sh with the dataset's official split: takes 5-49
train (our split by recording carves validation and test out of them), takes 0-4 are the
held-out test set. The clips are resampled from 8 kHz by SoX, each becomes one zero-padded 5 s
chunk; the held-out clips are then predicted (predict/predict.py, resampling on the fly) and
scored by predict/evaluate.py. Prints the wall time of each part and the scores; the work
goes to work/bench-fsdd and runs/bench-fsdd (delete them to start over).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"


def run(command: list[str]) -> float:
    """Run a command (its output shown); returns its wall seconds."""
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--model", default=str(ROOT / "train" / "model-BirdClef.py"))
    args = parser.parse_args()
    if not (FSDD / "metadata.csv").is_file():
        sys.exit(f"{FSDD}/metadata.csv not found: this benchmark needs the shared FSDD copy")

    work = ROOT / "work" / "bench-fsdd"
    run_dir = ROOT / "runs" / "bench-fsdd"
    work.mkdir(parents=True, exist_ok=True)
    with (FSDD / "metadata.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    train = [row for row in rows if row["split"] == "train"]
    test = [row for row in rows if row["split"] == "test"]
    train_csv = work / "train.csv"
    with train_csv.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows([row["file"], row["label"]] for row in train)
    truth = work / "test_truth.csv"  # the official ground-truth format, no background
    truth.write_text("".join(f"{Path(row['file']).stem};{row['label']};\n" for row in test))

    seconds = {}
    seconds["doall.sh (resample, chunks, train)"] = run(
        ["bash", str(ROOT / "doall.sh"), "--csv", str(train_csv), "--audio-dir", str(FSDD),
         "--name", "bench-fsdd", "--epochs", str(args.epochs), "--model", args.model]
    )  # fmt: skip
    run_file = run_dir / "predictions" / "fsdd-test.csv"
    python = str(ROOT / ".venv" / "bin" / "python")
    seconds["predict 300 held-out clips"] = run(
        [python, str(ROOT / "predict" / "predict.py"), "--run", str(run_dir), "--out",
         str(run_file), "--work-dir", str(work / "test_16k"), "--top-k", "10",
         "--audio", *[str(FSDD / row["file"]) for row in test]]
    )  # fmt: skip
    scores_path = run_file.with_suffix(".scores.json")
    run(
        [python, str(ROOT / "predict" / "evaluate.py"), "--run-file", str(run_file), "--truth",
         str(truth), "--classes", str(run_dir / "classes.json"), "--json", str(scores_path)]
    )  # fmt: skip
    scores = json.loads(scores_path.read_text())
    print(f"\nFSDD, {len(train)} training clips, {len(test)} held-out clips, {args.epochs} epochs")
    for part, value in seconds.items():
        print(f"  {part:38s} {value:7.1f} s")
    print(
        f"  held-out MAP {scores['map_foreground']:.4f}, top-1 accuracy "
        f"{scores['top1_accuracy']:.4f} (chance MAP {scores['chance_map_foreground']:.4f})"
    )


if __name__ == "__main__":
    main()
