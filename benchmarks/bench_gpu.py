"""What one GPU machine does with the pipeline, as one table (issue 10), in about 5 minutes.

    bash benchmarks/bench_gpu.sh                                 # on the GPU machine
    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --quick     # a dry run on a CPU

Untimed setup: synthetic demo recordings (preprocess/make_demo_dataset.py's six species),
resampled to 16 kHz wavs in parallel. Then, timed:
1. load_data.py on all of them with 1 worker and with every core: recordings/s (python
   start-up included, as a user sees it).
2. Reading rows as training does (read_rows of random sorted batches of --batch-size rows),
   in 1 and in --readers processes, from the file load_data wrote (the default format) and
   from a gzip copy of it (convert_dataset; the format load_data wrote before): rows/s.
3. Training, for both models at --batch-size: in memory (`model.fit` on numpy arrays, as
   train_model.py does), in memory on the device (ChunkBatches gathering batches from a
   backend tensor: no copy from the host per step), and streamed (ChunkBatches, --readers
   worker processes, as train_model.py --in-memory no --workers N); under --dtype-policy
   (float32, or mixed_bfloat16 for Hopper): one warm-up epoch (compilation), then --epochs
   epochs each; the best epoch's samples/s.
4. Prediction: predict.predict() with an untrained BirdClef (speed does not depend on the
   weights) on --predict-recordings of the wavs, batch --batch-size, extracting in turns with
   the model and in predict.py's worker processes for a GPU (one per core but one): recordings/s;
   and the hand-off of chunks alone from those workers (bench_predict.handoff_rates), through
   the pool's pipe and through files in memory: chunks/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # make the stages importable

from scipy.io import wavfile  # noqa: E402

from predict.predict import Run, extraction_workers, find_audio, predict  # noqa: E402
from preprocess.audio import read_wav, to_sample_rate  # noqa: E402
from preprocess.dataset import DEFAULT_COMPRESSION, convert_dataset, open_dataset  # noqa: E402
from preprocess.make_demo_dataset import make_demo_dataset  # noqa: E402
from preprocess.params import SpectrogramParams  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_hdf5 import read_batches  # noqa: E402
from bench_predict import handoff_rates  # noqa: E402

# Keras (and what imports it) is imported in the functions that use it: prediction's worker
# processes are spawned, and import this script again before they extract anything.


def resample_one(job: tuple[Path, Path]) -> None:
    source, target = job
    samples, rate = read_wav(source)
    samples = to_sample_rate(samples, rate, SpectrogramParams().sample_rate)
    wavfile.write(target, SpectrogramParams().sample_rate, samples.astype(np.int16))


def make_wavs(work: Path, n_recordings: int, cores: int) -> tuple[Path, Path]:
    """Demo training recordings as 16 kHz wavs; returns (wav dir, xml dir)."""
    per_species = -(-n_recordings // 6)
    make_demo_dataset(work / "demo", per_species, test_per_species=1, workers=cores)
    wav44, wav16 = work / "demo" / "TrainingSet" / "wav", work / "wav16k"
    wav16.mkdir()
    jobs = [(path, wav16 / path.name) for path in sorted(wav44.glob("*.wav"))]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(resample_one, jobs, chunksize=8)
    return wav16, work / "demo" / "TrainingSet" / "xml"


def time_load_data(wav_dir: Path, xml_dir: Path, out: Path, workers: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "preprocess" / "load_data.py"), "--wav-dir", str(wav_dir),
         "--xml-dir", str(xml_dir), "--out", str(out), "--workers", str(workers)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def read_rate(path: Path, n_rows: int, batch_size: int, processes: int, seconds: float) -> float:
    """Rows/s of `processes` processes reading random sorted batches for about `seconds`."""
    rng = np.random.default_rng(0)
    per_process = max(2, round(seconds * 2000 * processes / batch_size))  # sized for ~GPU rates
    batches = [
        [np.sort(rng.choice(n_rows, min(batch_size, n_rows), replace=False))
         for _ in range(per_process // processes)]
        for _ in range(processes)
    ]  # fmt: skip
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        done = pool.starmap(read_batches, [(path, each) for each in batches])
    return sum(rows for rows, _ in done) / (time.perf_counter() - started)


def train_rates(path: Path, args, readers: int) -> dict[str, float]:
    """{way: best samples/s} for each model: in memory and streamed."""
    import keras
    from bench_training import EpochRates, build

    from train.data import ChunkBatches

    with open_dataset(path) as dataset:
        rows = np.flatnonzero(dataset.label[...] >= 0)
        labels = dataset.label[...][rows]
        n_classes, input_shape = len(dataset.classes), dataset.X.shape[1:]
        x = dataset.X[...][rows]
    y = np.eye(n_classes, dtype=np.float32)[labels]
    rates = {}
    for model_name in args.models:
        ways = {
            "in memory": {"x": x, "y": y, "batch_size": args.batch_size, "shuffle": True},
            "in memory on the device": {
                "x": ChunkBatches(
                    keras.ops.convert_to_tensor(x),
                    rows,
                    labels,
                    n_classes,
                    args.batch_size,
                    shuffle=True,
                )
            },
            f"streamed, {readers} reader processes": {
                "x": ChunkBatches(
                    path,
                    rows,
                    labels,
                    n_classes,
                    args.batch_size,
                    shuffle=True,
                    workers=readers,
                    use_multiprocessing=True,
                    max_queue_size=4 * readers,
                )  # fmt: skip
            },
        }
        for way, data in ways.items():
            keras.utils.set_random_seed(0)
            model = build(model_name, input_shape, n_classes)
            epochs = EpochRates(len(rows))
            model.fit(**data, epochs=1, verbose=0)  # compilation
            model.fit(**data, epochs=args.epochs, verbose=0, callbacks=[epochs])
            rates[f"{model_name} {way}"] = max(epochs.rates)
            print(f"  {model_name} {way}: {max(epochs.rates):.0f} samples/s", flush=True)
    return rates


def predict_rate(
    wav_dir: Path, n_recordings: int, n_classes: int, batch_size: int, workers: int
) -> float:
    from bench_training import build

    model = build("BirdClef", (200, 310, 1), n_classes)
    run = Run(model, SpectrogramParams(), [f"c{i}" for i in range(n_classes)], {})
    items = find_audio(sorted(wav_dir.glob("*.wav"))[:n_recordings])
    predict(run, items[:batch_size], wav_dir.parent / "warm-up.csv", batch_size=batch_size)
    started = time.perf_counter()
    predict(run, items, wav_dir.parent / "run.csv", batch_size=batch_size, workers=workers)
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=1500, help="about 4 chunks each")
    parser.add_argument("--predict-recordings", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per way")
    parser.add_argument("--readers", type=int, default=os.cpu_count())
    parser.add_argument("--models", nargs="+", default=["BirdClef", "AlexNet"])
    parser.add_argument("--dtype-policy", default="float32", help="or mixed_bfloat16, ...")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a dry run")
    args = parser.parse_args()
    import keras

    from train.model_file import list_devices

    if args.quick:
        args.recordings, args.predict_recordings, args.batch_size, args.epochs = 36, 12, 16, 1
    keras.mixed_precision.set_global_policy(args.dtype_policy)
    cores = os.cpu_count() or 1
    print(
        f"{cores} cores; keras {keras.__version__} on {keras.backend.backend()}; "
        f"devices: {list_devices() or 'not listed by this backend'}",
        flush=True,
    )
    table: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        work = Path(work)
        started = time.perf_counter()
        wav_dir, xml_dir = make_wavs(work, args.recordings, cores)
        n_wavs = len(list(wav_dir.glob("*.wav")))
        print(f"setup: {n_wavs} wavs in {time.perf_counter() - started:.0f} s", flush=True)

        data = work / "train.h5"
        for workers in (1, cores):
            data.unlink(missing_ok=True)
            seconds = time_load_data(wav_dir, xml_dir, data, workers)
            table[f"load_data, {workers} workers"] = f"{n_wavs / seconds:.1f} recordings/s"
            print(f"  load_data {workers} workers: {seconds:.1f} s", flush=True)
        with open_dataset(data) as dataset:
            n_rows, size = len(dataset), data.stat().st_size
        table["chunks"] = f"{n_rows} ({size / n_rows / 1e3:.0f} KB/row, {DEFAULT_COMPRESSION})"

        gzip = work / "train-gzip.h5"
        convert_dataset(data, gzip, "gzip")
        for name, path in ((DEFAULT_COMPRESSION, data), ("gzip", gzip)):
            for processes in (1, args.readers):
                rate = read_rate(path, n_rows, args.batch_size, processes, seconds=3)
                table[f"reading {name}, {processes} processes"] = f"{rate:.0f} rows/s"
                print(f"  reading {name} {processes} processes: {rate:.0f} rows/s", flush=True)

        for way, rate in train_rates(data, args, args.readers).items():
            table[f"training {way}"] = (
                f"{rate:.0f} samples/s (batch {args.batch_size}, {args.dtype_policy})"
            )

        on_gpu = extraction_workers(None, model_on_gpu=True)  # predict.py's default there
        for way, rate in handoff_rates(on_gpu).items():
            table[f"hand-off of chunks from {on_gpu} workers, {way}"] = f"{rate:.0f} chunks/s"
            print(f"  hand-off from {on_gpu} workers, {way}: {rate:.0f} chunks/s", flush=True)
        for workers in sorted({1, on_gpu}):
            rate = predict_rate(wav_dir, args.predict_recordings, 6, args.batch_size, workers)
            where = f"{workers} extraction workers" if workers > 1 else "extraction in turns"
            table[f"prediction, BirdClef, {where}"] = f"{rate:.1f} recordings/s"
            print(f"  prediction, {where}: {rate:.1f} recordings/s", flush=True)

    print(f"\n| measured ({time.strftime('%Y-%m-%d')}) | |\n|---|---|")
    for name, value in table.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
