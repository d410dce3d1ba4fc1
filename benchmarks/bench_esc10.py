"""Accuracy on real recordings: ESC-10 by fold, the 2016 and the modern recipe side by side.

    python benchmarks/bench_esc10.py [--recipes modern,2016] [--folds 1,2,3,4,5]

ESC-10 (../shared/data/esc10: 400 clips of 5 s, 10 classes of environmental sounds, 44.1 kHz
Ogg Vorbis, 5 folds of the dataset's own) is evaluated as published: for each fold, train on
the other four (./doall.sh --csv, our split by recording takes validation and test recordings
out of them) and predict the fold's 80 clips (predict/predict.py), scored by
predict/evaluate.py; the published figure is the mean accuracy over the 5 folds. The clips
are resampled to 16 kHz once (work/bench-esc10/audio_16k), then every fold and recipe reads
them. Prints each fold's wall time and scores, then the mean per recipe. Work goes to
work/bench-esc10/RECIPE[TAG]-foldN and runs/bench-esc10/RECIPE[TAG]-foldN (delete them to
start over; a finished fold is not trained again). CPU time is the cost: run some folds or one
recipe at a time with --folds and --recipes. Variants: --tag=-B --train-args="--patience 99".
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from accuracy import (
    PYTHON,
    ROOT,
    add_recipe_options,
    comma_list,
    doall_recipe_options,
    esc10_at_16k,
    run,
    write_truth,
)


def fold(args, recipe: str, number: str, rows: list[dict], audio: Path) -> dict:
    """Train on the other folds, predict fold `number`; returns times and scores."""
    name = f"{recipe}{args.tag}-fold{number}"
    work = ROOT / "work" / "bench-esc10" / name
    runs = ROOT / "runs" / "bench-esc10"
    run_dir = runs / name
    work.mkdir(parents=True, exist_ok=True)
    train = [row for row in rows if row["fold"] != number]
    test = [row for row in rows if row["fold"] == number]
    train_csv = work / "train.csv"
    with train_csv.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows([Path(row["file"]).with_suffix(".wav"), row["label"]] for row in train)
    truth = work / "test_truth.csv"
    write_truth(truth, test)

    doall = ["bash", str(ROOT / "doall.sh"), "--csv", str(train_csv), "--audio-dir", str(audio),
             "--name", name, "--work-dir", str(work.parent), "--runs-dir", str(runs),
             *doall_recipe_options(args, recipe)]  # fmt: skip
    result = {"doall": run(doall)}
    run_file = run_dir / "predictions" / f"fold{number}.csv"
    result["predict"] = run(
        [PYTHON, str(ROOT / "predict" / "predict.py"), "--run", str(run_dir), "--out",
         str(run_file), "--top-k", "10",
         "--audio", *[str(audio / Path(row["file"]).with_suffix(".wav")) for row in test]]
    )  # fmt: skip
    scores_path = run_file.with_suffix(".scores.json")
    run(
        [PYTHON, str(ROOT / "predict" / "evaluate.py"), "--run-file", str(run_file), "--truth",
         str(truth), "--classes", str(run_dir / "classes.json"), "--json", str(scores_path)]
    )  # fmt: skip
    scores = json.loads(scores_path.read_text(encoding="utf-8"))
    result["top1"], result["map"] = scores["top1_accuracy"], scores["map_foreground"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_options(parser)
    parser.add_argument("--folds", type=comma_list, default=["1", "2", "3", "4", "5"])
    args = parser.parse_args()
    if not set(args.recipes) <= {"2016", "modern"} or not set(args.folds) <= set("12345"):
        sys.exit("--recipes are 2016 and/or modern, --folds among 1-5")
    rows, audio, resample_s = esc10_at_16k()
    results = {}
    for recipe in args.recipes:
        for number in args.folds:
            results[recipe, number] = fold(args, recipe, number, rows, audio)

    print(f"\nESC-10, train on 4 folds (320 clips), test on the 5th (80 clips); resampling "
          f"the 400 clips {resample_s:.0f} s")  # fmt: skip
    print(
        f"  {'recipe':8s} {'fold':>4s} {'doall s':>8s} {'predict s':>9s} {'top-1':>6s} {'MAP':>6s}"
    )
    for (recipe, number), result in results.items():
        print(
            f"  {recipe:8s} {number:>4s} {result['doall']:8.0f} {result['predict']:9.1f} "
            f"{result['top1']:6.3f} {result['map']:6.3f}"
        )
    for recipe in args.recipes:
        folds = [results[recipe, number] for number in args.folds]
        mean_top1 = sum(r["top1"] for r in folds) / len(folds)
        mean_map = sum(r["map"] for r in folds) / len(folds)
        print(
            f"  {recipe:8s} mean over folds {','.join(args.folds)}: top-1 {mean_top1:.3f}, "
            f"MAP {mean_map:.3f}"
        )


if __name__ == "__main__":
    main()
