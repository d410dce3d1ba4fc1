"""Accuracy on real recordings: the whole pipeline on the Free Spoken Digit Dataset (FSDD).

    python benchmarks/bench_fsdd.py [--recipes modern,2016] [--epochs N] [--model FILE]
        [--train-args "..." --tag=-NAME]

FSDD (../shared/data/fsdd: 3,000 clips of spoken digits 0-9, 8 kHz, 0.1-2.3 s, 6 speakers)
goes through the generic CSV path of ./doall.sh with the dataset's official split: takes 5-49
train (our split by recording carves validation and test out of them), takes 0-4 are the
held-out test set. The clips are resampled from 8 kHz by SoX and cut into chunks by the
recipe (2016: each one zero-padded 5 s chunk; modern: log-mel chunks of the median clip length,
clamped to [1, 5] s); the held-out clips are then predicted (predict/predict.py, resampling on
the fly) and scored by predict/evaluate.py. Each recipe in --recipes runs in turn (2016 with 20
epochs unless --epochs, modern with its own budget); prints the wall time of each part and
the scores side by side. The work goes to work/bench-fsdd-RECIPE and runs/bench-fsdd-RECIPE
(delete them to start over).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from accuracy import PYTHON, ROOT, add_recipe_options, doall_recipe_options, run, write_truth

FSDD = ROOT.parent / "shared" / "data" / "fsdd"


def bench(args, recipe: str, train: list[dict], test: list[dict]) -> dict:
    """doall.sh, predict and evaluate for one recipe: the wall seconds and the scores."""
    name = f"bench-fsdd-{recipe}{args.tag}"
    work = ROOT / "work" / name
    run_dir = ROOT / "runs" / name
    work.mkdir(parents=True, exist_ok=True)
    train_csv = work / "train.csv"
    with train_csv.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows([row["file"], row["label"]] for row in train)
    truth = work / "test_truth.csv"
    write_truth(truth, test)

    doall = ["bash", str(ROOT / "doall.sh"), "--csv", str(train_csv), "--audio-dir", str(FSDD),
             "--name", name, *doall_recipe_options(args, recipe)]  # fmt: skip
    result = {"doall": run(doall)}
    run_file = run_dir / "predictions" / "fsdd-test.csv"
    result["predict"] = run(
        [PYTHON, str(ROOT / "predict" / "predict.py"), "--run", str(run_dir), "--out",
         str(run_file), "--work-dir", str(work / "test_16k"), "--top-k", "10",
         "--audio", *[str(FSDD / row["file"]) for row in test]]
    )  # fmt: skip
    scores_path = run_file.with_suffix(".scores.json")
    run(
        [PYTHON, str(ROOT / "predict" / "evaluate.py"), "--run-file", str(run_file), "--truth",
         str(truth), "--classes", str(run_dir / "classes.json"), "--json", str(scores_path)]
    )  # fmt: skip
    result.update(json.loads(scores_path.read_text(encoding="utf-8")))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_options(parser)
    args = parser.parse_args()
    if not (FSDD / "metadata.csv").is_file():
        sys.exit(f"{FSDD}/metadata.csv not found: this benchmark needs the shared FSDD copy")
    if not set(args.recipes) <= {"2016", "modern"}:
        sys.exit("--recipes are 2016 and/or modern")
    with (FSDD / "metadata.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    train = [row for row in rows if row["split"] == "train"]
    test = [row for row in rows if row["split"] == "test"]
    results = {recipe: bench(args, recipe, train, test) for recipe in args.recipes}

    print(f"\nFSDD, {len(train)} training clips, {len(test)} held-out clips")
    print(f"  {'recipe':8s} {'doall.sh s':>10s} {'predict s':>9s} {'top-1':>6s} {'MAP':>6s}")
    for recipe, result in results.items():
        print(
            f"  {recipe:8s} {result['doall']:10.0f} {result['predict']:9.1f} "
            f"{result['top1_accuracy']:6.3f} {result['map_foreground']:6.3f}"
        )
    print(f"  chance MAP {result['chance_map_foreground']:.3f}")


if __name__ == "__main__":
    main()
