"""Long, weakly labelled recordings: the scorer's three commands on a field-recording proxy
made of ESC-10 clips, with their wall times against the 20-minute limit.

    python benchmarks/bench_long_recordings.py [--recipes modern] [--train-args=...]

Field recordings (xeno-canto birds, say) are minutes long, the labelled sound is in some of
their 5 s chunks only, and other sounds are in the background. This benchmark builds such a
set from ESC-10 (../shared/data/esc10), deterministically: each recording is 18 pieces of 5 s
(90 s); each piece is a clip of another class at -15 dB (the background) and, with
probability 0.5, a clip of the recording's class on top. 34 training recordings per class
from folds 1-4 (8.5 hours of audio, 10 classes), 10 test recordings per class from fold 5,
so no clip is both trained and tested on. It then runs, exactly as issue 9's scorer does:

    ./doall.sh --csv train.csv --audio-dir train/ --recipe R --name N --work-dir W --runs-dir R
    python predict/predict.py --run R/N --audio test/ --out run.csv
    python predict/evaluate.py --run-file run.csv --truth truth.txt

and prints each command's wall time and the scores. It is a proxy: clips repeat across
recordings, so its accuracy says less than its times and the pooling it chooses. Work goes to
work/bench-long/ and runs/bench-long/ (delete them to start over).

`--varied` builds another set (work/bench-long/data-varied) as field data comes: recordings of
5 s to 5 min (log-uniform), 8 to 50 of them per class, the class heard in 20-90 % of a
recording's pieces (at least one), test recordings of the same spread of lengths.

`--background-labels` builds the 90 s set with named background species, as xeno-canto lists
them (work/bench-long/data-background): each recording's background clips come from two other
classes of its own, which train.csv's `background` column and truth.txt's third field name;
the scores are then MAP of the foreground class and MAP with the background species.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from accuracy import PYTHON, ROOT, add_recipe_options, doall_recipe_options, esc10_at_16k, run
from scipy.io import wavfile

RATE = 16000
PIECE = 5 * RATE  # samples per piece: one ESC-10 clip
TRAIN_PER_CLASS, TEST_PER_CLASS, PIECES, TARGET_SHARE, BACKGROUND_DB = 34, 10, 18, 0.5, -15.0


def read_clips(audio: Path, rows: list[dict]) -> dict[tuple[str, bool], list[np.ndarray]]:
    """(label, is test fold) -> the clips, float32 at 16 kHz, padded or cut to 5 s."""
    clips: dict[tuple[str, bool], list[np.ndarray]] = {}
    for row in rows:
        _, samples = wavfile.read(audio / Path(row["file"]).with_suffix(".wav"))
        samples = samples.astype(np.float32) / 32768
        samples = np.pad(samples, (0, max(0, PIECE - len(samples))))[:PIECE]
        clips.setdefault((row["label"], row["fold"] == "5"), []).append(samples)
    return clips


def long_recording(
    own: list[np.ndarray],
    others: list[list[np.ndarray]],
    rng: np.random.Generator,
    pieces_count: int = PIECES,
    target_share: float = TARGET_SHARE,
) -> np.ndarray:
    """pieces_count pieces: each a background clip of another class at BACKGROUND_DB, with a
    clip of its own class on top at target_share probability (the first piece always, where
    no other has one); peak-normalised to 0.5."""
    pieces, heard = [], False
    for number in range(pieces_count):
        background = others[rng.integers(len(others))]
        piece = background[rng.integers(len(background))] * 10 ** (BACKGROUND_DB / 20)
        if rng.random() < target_share or (number == pieces_count - 1 and not heard):
            piece = piece + own[rng.integers(len(own))]
            heard = True
        pieces.append(piece)
    samples = np.concatenate(pieces)
    return samples / max(1e-3, float(np.abs(samples).max())) * 0.5


def varied_shape(rng: np.random.Generator) -> tuple[int, float]:
    """(pieces, target share) of a --varied recording: 5 s to 5 min, log-uniform; 20-90 %."""
    return int(round(np.exp(rng.uniform(0, np.log(60))))), float(rng.uniform(0.2, 0.9))


def build_set(clips: dict, out: Path, varied: bool = False, named_background: bool = False):
    """out/train/*.wav, out/train.csv (file,label,media_id[,background]), out/test/*.wav,
    out/truth.txt; varied: lengths, counts and target shares as `--varied` says (else all as
    PIECES, TRAIN_PER_CLASS, TEST_PER_CLASS and TARGET_SHARE); named_background: each
    recording's background from two other classes, named in both files."""
    if (out / "truth.txt").is_file():
        return
    rng = np.random.default_rng(2 if named_background else 1 if varied else 0)
    labels = sorted({label for label, _ in clips})
    train_rows, truth = [], []
    number = 0
    for test, count in ((False, TRAIN_PER_CLASS), (True, TEST_PER_CLASS)):
        folder = out / ("test" if test else "train")
        folder.mkdir(parents=True, exist_ok=True)
        for label in labels:
            others = [clips[other, test] for other in labels if other != label]
            if varied and not test:
                count = int(rng.integers(8, 51))
            for _ in range(count):
                number += 1
                name = f"rec{number:04d}"
                shape = varied_shape(rng) if varied else (PIECES, TARGET_SHARE)
                heard, background = others, []
                if named_background:
                    picked = rng.choice(len(others), 2, replace=False)
                    heard = [others[i] for i in picked]
                    background = sorted(o for o in labels if o != label)
                    background = [background[i] for i in picked]
                samples = long_recording(clips[label, test], heard, rng, *shape)
                wavfile.write(folder / f"{name}.wav", RATE, (samples * 32767).astype(np.int16))
                if test:
                    truth.append(f"{name};{label};{','.join(background)}\n")
                else:
                    train_rows.append((f"{name}.wav", label, name, ";".join(background)))
    with (out / "train.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label", "media_id", "background"][: 3 + named_background])
        writer.writerows(row[: 3 + named_background] for row in train_rows)
    (out / "truth.txt").write_text("".join(truth), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_options(parser)
    parser.add_argument(
        "--varied", action="store_true", help="recordings of varied lengths and counts"
    )
    parser.add_argument(
        "--background-labels", action="store_true", help="background species named, two each"
    )
    parser.set_defaults(recipes=["modern"])
    args = parser.parse_args()
    if args.varied and args.background_labels:
        parser.error("--varied and --background-labels are two sets: give one")
    rows, audio, _ = esc10_at_16k()  # shared with bench_esc10.py
    kind = "-varied" if args.varied else "-background" if args.background_labels else ""
    data = ROOT / "work" / "bench-long" / f"data{kind}"
    build_set(read_clips(audio, rows), data, args.varied, args.background_labels)

    results = {}
    for recipe in args.recipes:
        name = f"{recipe}{kind}{args.tag}"
        work, runs = ROOT / "work" / "bench-long" / name, ROOT / "runs" / "bench-long"
        run_file, scores = work / "run.csv", work / "scores.json"
        doall = ["bash", str(ROOT / "doall.sh"), "--csv", str(data / "train.csv"),
                 "--audio-dir", str(data / "train"), "--name", name, "--work-dir", str(work.parent),
                 "--runs-dir", str(runs), *doall_recipe_options(args, recipe)]  # fmt: skip
        predict = [PYTHON, str(ROOT / "predict" / "predict.py"), "--run", str(runs / name),
                   "--audio", str(data / "test"), "--out", str(run_file)]  # fmt: skip
        result = {"doall": run(doall), "predict": run(predict)}
        run([PYTHON, str(ROOT / "predict" / "evaluate.py"), "--run-file", str(run_file),
             "--truth", str(data / "truth.txt"), "--json", str(scores)])  # fmt: skip
        inference = json.loads((runs / name / "inference.json").read_text(encoding="utf-8"))
        result.update(json.loads(scores.read_text(encoding="utf-8")), pooling=inference["pooling"])
        results[name] = result

    train_hours = sum(path.stat().st_size for path in (data / "train").iterdir()) / 2 / RATE / 3600
    shape = "5 s to 5 min" if args.varied else "90 s"
    print(f"\nlong recordings of {shape}: {train_hours:.1f} h to train (10 classes)")
    print(f"  {'run':10s} {'doall s':>8s} {'predict s':>9s} {'total s':>8s} {'pooling':>8s} "
          f"{'top-1':>6s} {'MAP':>6s} {'MAP with background':>19s}")  # fmt: skip
    for name, r in results.items():
        total, top1, mean_ap = r["doall"] + r["predict"], r["top1_accuracy"], r["map_foreground"]
        with_background = r["map_with_background"]
        print(f"  {name:10s} {r['doall']:8.0f} {r['predict']:9.1f} {total:8.0f} "
              f"{r['pooling']:>8s} {top1:6.3f} {mean_ap:6.3f} {with_background:19.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
