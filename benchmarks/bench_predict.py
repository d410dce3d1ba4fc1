"""Prediction speed of the BirdClef CNN on the CPU: recordings/s and audio seconds/s.

Setup (untimed): synthetic demo test recordings (preprocess/make_demo_dataset.py), resampled
to 16 kHz by preprocess/resample_wavs_to_16k.sh, and a run folder with an untrained BirdClef
model (speed does not depend on the weights). Timed, after one warm-up recording:
  (a) the model alone: chunks/s of `predict_on_batch` on fixed batches,
  (b) `predict.predict()`: read, spectrogram, filter, chunks, shared batches, run file,
and the share of (b)'s time the model takes. Run it alone:

    flock /tmp/bench.lock python benchmarks/bench_predict.py
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make the stages importable
from predict.predict import Run, find_audio, predict  # noqa: E402
from predict.runfile import read_run_file  # noqa: E402
from preprocess.audio import read_wav  # noqa: E402
from preprocess.make_demo_dataset import SPECIES, make_demo_dataset  # noqa: E402
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.spectrogram import extract_chunks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build_model(model_file: Path, n_classes: int, params: SpectrogramParams):
    spec = importlib.util.spec_from_file_location("model_file", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model((params.n_bins, params.chunk_frames, 1), n_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recordings", type=int, default=300, help="test recordings (3-40 s)")
    parser.add_argument("--classes", type=int, default=50, help="output classes (paper: 50)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", type=Path, default=ROOT / "train" / "model-BirdClef.py")
    args = parser.parse_args()
    params = SpectrogramParams()

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        per_species = max(1, args.recordings // len(SPECIES))
        make_demo_dataset(temp / "demo", recordings_per_species=1, test_per_species=per_species)
        subprocess.run(
            [
                "bash",
                str(ROOT / "preprocess" / "resample_wavs_to_16k.sh"),
                str(temp / "demo" / "TestSet" / "wav"),
                str(temp / "16k"),
            ],
            check=True,
            capture_output=True,
        )
        items = find_audio([temp / "16k"])
        seconds = sum(len(read_wav(item.path)[0]) / params.sample_rate for item in items)
        n_chunks = sum(len(extract_chunks(read_wav(item.path)[0], params).chunks) for item in items)

        classes = [f"c{index:03d}" for index in range(args.classes)]
        model = build_model(args.model, len(classes), params)
        run = Run(model, params, classes, {})
        predict(run, items[:1], temp / "warmup.csv", batch_size=args.batch_size)

        batch = (
            np.random.default_rng(0)
            .normal(size=(args.batch_size, params.n_bins, params.chunk_frames, 1))
            .astype(np.float32)
        )
        start, n_batches = time.perf_counter(), 10
        for _ in range(n_batches):
            model.predict_on_batch(batch)
        model_rate = n_batches * args.batch_size / (time.perf_counter() - start)

        start = time.perf_counter()
        predict(run, items, temp / "run.csv", batch_size=args.batch_size)
        elapsed = time.perf_counter() - start
        n_recordings = len({e.media_id for e in read_run_file(temp / "run.csv")})

    print(f"model {args.model.name}, {args.classes} classes, batch {args.batch_size}, CPU")
    print(f"(a) model alone: {model_rate:.0f} chunks/s")
    print(
        f"(b) predict(): {n_recordings} recordings, {seconds:.0f} s of audio in {elapsed:.2f} s: "
        f"{n_recordings / elapsed:.1f} recordings/s, {seconds / elapsed:.0f} audio s/s"
    )
    print(
        f"    {n_chunks / elapsed:.0f} chunks/s; the model's share of the time: "
        f"{n_chunks / model_rate / elapsed:.0%}"
    )
    print(
        json.dumps(
            {
                "recordings_per_s": n_recordings / elapsed,
                "audio_seconds_per_s": seconds / elapsed,
                "chunks_per_s": n_chunks / elapsed,
                "model_chunks_per_s": model_rate,
            }
        )
    )


if __name__ == "__main__":
    main()
