"""What one GPU machine does with the pipeline, as one table (issue 10), in about 5 minutes.

    bash benchmarks/bench_gpu.sh [--also-train mixed_bfloat16:1024]   # on the GPU machine
    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --quick           # a dry run on a CPU

Untimed setup: synthetic demo recordings (preprocess/make_demo_dataset.py's six species),
resampled to 16 kHz wavs in parallel. Then, timed (--stages picks some):
1. load_data: load_data.py on all of them with 1 worker and with every core: recordings/s,
   of the whole command (Python's start included, as a user sees it) and by its own report;
   then the same on the same audio joined into one-minute files (less work per file); and
   extraction alone (read, spectrogram, chunks) in 1 and in every process at once, each on
   its own files, timed inside them: the speed-up the cores themselves allow (hardware
   threads, clock, memory), to set load_data's and prediction's against.
2. reading: rows as training reads them (read_rows of random sorted batches of --batch-size
   rows), in 1 and in --readers processes, from the file load_data wrote (the default
   format) and from a gzip copy of it (convert_dataset; the format load_data wrote before);
   then handed to this process: a batch per process through the pool's pipe (as Keras's
   PyDataset use_multiprocessing does), and each batch split among them (RowReaders, as
   ChunkBatches streams), one batch at a time and two at once: rows/s.
3. training, for both models at --batch-size under --dtype-policy: in memory (`model.fit` on
   numpy arrays), in memory on the device (ChunkBatches gathering batches from a backend
   tensor, as train_model.py does with one GPU that has room; for the first model once more
   with the modern recipe's rate schedule and train_model.py's backup callback), and
   streamed (ChunkBatches, --readers reader processes, as train_model.py --in-memory no
   --workers N; and with two of PyDataset's threads asking for batches at once, which
   train_model.py does not do):
   one warm-up epoch (compilation), then --epochs epochs each; the best epoch's samples/s.
   Each --also-train POLICY:BATCH trains the first model so once more, last.
4. prediction: the model alone (predict_on_batch on a batch in host memory: chunks/s, and
   the recordings/s that makes at these wavs' chunks per recording); predict.predict() with
   an untrained BirdClef (speed does not depend on the weights) on --predict-recordings of
   the wavs, batch --batch-size, extracting in turns with the model and in predict.py's
   worker processes for a GPU (one per core but one, the model in a thread of its own):
   recordings/s of the whole call and once the workers have started; and the hand-off of
   chunks alone from those workers (bench_predict.handoff_rates), through the pool's pipe and
   through slots in memory: chunks/s.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # make the stages importable

from scipy.io import wavfile  # noqa: E402

from predict.predict import Run, extraction_workers, find_audio, predict  # noqa: E402
from preprocess.audio import read_wav, to_sample_rate  # noqa: E402
from preprocess.dataset import DEFAULT_COMPRESSION, convert_dataset, open_dataset, read_rows  # noqa: E402
from preprocess.extract import recording_chunks  # noqa: E402
from preprocess.make_demo_dataset import make_demo_dataset  # noqa: E402
from preprocess.params import SpectrogramParams  # noqa: E402
from preprocess.workers import RowReaders  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_hdf5 import concatenated_wavs, read_batches, write_labels  # noqa: E402
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


def cpu_topology() -> str:
    """The CPU's model and its physical cores as /proc/cpuinfo tells (a VM's may be virtual):
    with two hardware threads a core, 16 "cores" are 8 for work that fills them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no /proc/cpuinfo"
    blocks = [dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
              for block in text.strip().split("\n\n")]  # fmt: skip
    blocks = [{key.strip(): value.strip() for key, value in block.items()} for block in blocks]
    if not all("core id" in block for block in blocks):  # aarch64 says nothing of cores
        return f"{len(blocks)} processors, physical cores not listed in /proc/cpuinfo"
    cores = {(block.get("physical id"), block["core id"]) for block in blocks}
    return f"{blocks[0].get('model name', '?')}: {len(blocks)} threads, {len(cores)} physical cores"


def time_load_data(
    wav_dir: Path, labels: list[str], out: Path, workers: int
) -> tuple[float, float]:
    """Seconds of load_data.py on the wavs (labels: its --xml-dir or --csv argument): the
    whole command as a user sees it (Python's and the workers' start included), and the
    files/s its own report gives."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "preprocess" / "load_data.py"), "--wav-dir", str(wav_dir),
         *labels, "--out", str(out), "--workers", str(workers)],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, float(re.search(r"([\d.]+) files/s", done.stdout).group(1))


def extract_share(wavs: list[Path], params, start: multiprocessing.Barrier) -> tuple[int, float]:
    """(recordings, seconds) of one process extracting wavs' chunks as both commands do, timed
    from when every process is ready."""
    start.wait()
    began = time.perf_counter()
    for wav in wavs:
        list(recording_chunks(wav, params, 256).pieces)
    return len(wavs), time.perf_counter() - began


def extraction_ceiling(wavs: list[Path], params, processes: int, per_process: int = 200):
    """Recordings/s of extraction alone (read, spectrogram, chunks; no hand-off, no output) in
    1 process and in `processes` processes at once, each on per_process wavs of its own where
    there are enough: the speed-up the machine's cores allow load_data and prediction."""
    rates = []
    for n in (1, processes):
        shares = [[wavs[(i * per_process + k) % len(wavs)] for k in range(per_process)]
                  for i in range(n)]  # fmt: skip
        context = multiprocessing.get_context("fork")
        start = context.Manager().Barrier(n)
        with context.Pool(n) as pool:
            done = pool.starmap(extract_share, [(share, params, start) for share in shares])
        rates.append(sum(count for count, _ in done) / max(seconds for _, seconds in done))
    return rates


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


_opened: dict[Path, h5py.Dataset] = {}


def read_batch(path: Path, rows: np.ndarray) -> np.ndarray:
    """X[rows] of path, through a handle each reader process keeps."""
    if path not in _opened:
        _opened[path] = h5py.File(path, "r")["X"]
    return read_rows(_opened[path], rows)


def batch_read_rates(path: Path, n_rows: int, batch_size: int, processes: int) -> dict:
    """{way: rows/s} of `processes` processes reading random sorted batches for this
    process: a batch per process, returned through the pool's pipe (as Keras's PyDataset
    use_multiprocessing does), and each batch split among them (RowReaders, as ChunkBatches
    reads when streaming)."""
    rng = np.random.default_rng(1)
    batches = [np.sort(rng.choice(n_rows, min(batch_size, n_rows), replace=False))
               for _ in range(max(2 * processes, 6000 // batch_size))]  # fmt: skip
    rates = {}
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        read = functools.partial(read_batch, path)
        pool.map(read, batches[:processes], chunksize=1)  # every process started, file open
        started = time.perf_counter()
        n = sum(len(x) for x in pool.imap(read, batches))
        rates["a batch per process, through the pool's pipe"] = n / (time.perf_counter() - started)
    with open_dataset(path) as dataset:
        readers = RowReaders(path, processes, dataset.X.shape[1:])
    for batch in batches[:2]:
        readers.read(batch)  # every process started, file open
    started = time.perf_counter()
    n = sum(len(readers.read(batch)) for batch in batches)
    rates["each batch split among them (RowReaders)"] = n / (time.perf_counter() - started)
    with ThreadPoolExecutor(2) as threads:  # as PyDataset(workers=2) asks: two at once
        started = time.perf_counter()
        n = sum(len(x) for x in threads.map(readers.read, batches))
        rates["the same, two batches at once (2 threads)"] = n / (time.perf_counter() - started)
    return rates


def train_rates(
    path: Path, models: list[str], policy: str, batch_size: int, epochs: int, readers: int
) -> dict[str, float]:
    """{"MODEL WAY": best samples/s} for each model under dtype `policy`: in memory, in memory
    on the device (also with the callbacks of train_model.py's modern runs that act on every
    step: the rate schedule and the backup), and streamed."""
    import keras
    from bench_training import EpochRates, build

    from train.callbacks import RunBackup
    from train.data import ChunkBatches
    from train.recipe import ScheduleAndBudget

    with open_dataset(path) as dataset:
        rows = np.flatnonzero(dataset.label[...] >= 0)
        labels = dataset.label[...][rows]
        n_classes, input_shape = len(dataset.classes), dataset.X.shape[1:]
        x = dataset.X[...][rows]
    y = np.eye(n_classes, dtype=np.float32)[labels]
    keras.mixed_precision.set_global_policy(policy)
    on_device = keras.ops.convert_to_tensor(x)
    rates = {}
    chunks = (rows, labels, n_classes, batch_size)  # ChunkBatches's arguments after the source
    for model_name in models:
        ways = {
            "in memory": {"x": x, "y": y, "batch_size": batch_size, "shuffle": True},
            "in memory on the device": {"x": ChunkBatches(on_device, *chunks, shuffle=True)},
            f"streamed, {readers} reader processes": {
                "x": ChunkBatches(path, *chunks, shuffle=True, readers=readers)
            },
            f"streamed, {readers} reader processes, 2 batches at once": {
                "x": ChunkBatches(path, *chunks, shuffle=True, readers=readers, workers=2)
            },
        }
        if model_name == models[0]:  # the first model only: the GPU's time is short
            ways["in memory on the device, with the modern recipe's schedule and backup"] = {
                "x": ChunkBatches(on_device, *chunks, shuffle=True),
                "callbacks": [
                    ScheduleAndBudget(epochs, -(-len(rows) // batch_size), 1e-3, 1, 0, True),
                    RunBackup(path.parent / "backup"),
                ],
            }
        for way, data in ways.items():
            keras.utils.set_random_seed(0)
            model = build(model_name, input_shape, n_classes)
            epoch_rates = EpochRates(len(rows))
            callbacks = [epoch_rates, *data.pop("callbacks", [])]
            model.fit(**data, epochs=1, verbose=0)  # compilation
            model.fit(**data, epochs=epochs, verbose=0, callbacks=callbacks)
            rates[f"{model_name} {way}"] = max(epoch_rates.rates)
            print(f"  {model_name} {way}: {max(epoch_rates.rates):.0f} samples/s", flush=True)
    del on_device
    return rates


def model_alone_rate(n_classes: int, batch_size: int, seconds: float) -> float:
    """Chunks/s of an untrained BirdClef's predict_on_batch on one batch in host memory, as
    predict() calls it (so with the copy to the device): what prediction would do if the
    model were its only limit."""
    from bench_training import build

    model = build("BirdClef", (200, 310, 1), n_classes)
    batch = np.random.default_rng(0).standard_normal((batch_size, 200, 310, 1), np.float32)
    np.asarray(model.predict_on_batch(batch))  # compilation
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        np.asarray(model.predict_on_batch(batch))
        calls += 1
    return calls * batch_size / (time.perf_counter() - started)


def predict_rates(
    wav_dir: Path, n_recordings: int, n_classes: int, batch_size: int, workers: int
) -> tuple[float, float]:
    """Recordings/s of predict() on n_recordings wavs: the whole call, and once started
    (from a call on the first --batch-size recordings: the worker processes' start, about 3 s
    on the H100 machine, and the first batches count in both calls)."""
    from bench_training import build

    model = build("BirdClef", (200, 310, 1), n_classes)
    run = Run(model, SpectrogramParams(), [f"c{i}" for i in range(n_classes)], {})
    items, _ = find_audio(sorted(wav_dir.glob("*.wav"))[:n_recordings])
    predict(run, items[:batch_size], wav_dir.parent / "warm-up.csv", batch_size=batch_size)
    seconds = []
    for some in (items[:batch_size], items):
        started = time.perf_counter()
        predict(run, some, wav_dir.parent / "run.csv", batch_size=batch_size, workers=workers)
        seconds.append(time.perf_counter() - started)
    return len(items) / seconds[1], (len(items) - batch_size) / (seconds[1] - seconds[0])


STAGES = ("load_data", "reading", "training", "prediction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=1500, help="about 4 chunks each")
    parser.add_argument("--predict-recordings", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per way")
    parser.add_argument("--readers", type=int, default=os.cpu_count())
    parser.add_argument("--models", nargs="+", default=["BirdClef", "AlexNet"])
    parser.add_argument("--dtype-policy", default="float32", help="or mixed_bfloat16, ...")
    parser.add_argument(
        "--also-train", nargs="*", default=[], metavar="POLICY:BATCH",
        help="training of the first model once more per entry, e.g. mixed_bfloat16:1024",
    )  # fmt: skip
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a dry run")
    args = parser.parse_args()
    import keras

    from train.model_file import list_devices

    if args.quick:
        args.recordings, args.predict_recordings, args.batch_size, args.epochs = 36, 36, 16, 1
    cores = os.cpu_count() or 1
    backend = keras.backend.backend()
    print(
        f"{cores} cores; Python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"h5py {h5py.__version__}, hdf5plugin {hdf5plugin.version}; keras {keras.__version__} "
        f"on {backend} {importlib.import_module(backend).__version__}; "
        f"devices: {list_devices() or 'not listed by this backend'}; {cpu_topology()}",
        flush=True,
    )
    began = time.perf_counter()

    def stage_done(name: str) -> None:
        print(f"{name} done at {time.perf_counter() - began:.0f} s", flush=True)

    table: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        work = Path(work)
        wav_dir, xml_dir = make_wavs(work, args.recordings, cores)
        n_wavs = len(list(wav_dir.glob("*.wav")))
        stage_done(f"setup ({n_wavs} wavs)")

        data = work / "train.h5"
        jobs = {"": (wav_dir, ["--xml-dir", str(xml_dir)], n_wavs)}
        if "load_data" in args.stages:  # the same audio in fewer, longer files: less per file
            joined = concatenated_wavs(sorted(wav_dir.glob("*.wav")), work / "joined", 60)
            labels = ["--csv", str(write_labels(joined, work / "joined"))]
            jobs[", the same audio in one-minute files"] = (work / "joined", labels, len(joined))
        for job, (wavs, labels, n_files) in jobs.items():
            for workers in (1, cores) if "load_data" in args.stages else (cores,):
                out = data if not job else work / "joined.h5"
                out.unlink(missing_ok=True)
                seconds, reported = time_load_data(wavs, labels, out, workers)
                who = f"{workers} worker{'s' if workers > 1 else ''}"
                table[f"load_data{job}, {who}"] = (
                    f"{n_files / seconds:.1f} recordings/s ({reported:.1f} by its own report, "
                    "from reading the metadata to the last write)"
                )
                print(f"  load_data{job}, {who}: {seconds:.1f} s", flush=True)
        with open_dataset(data) as dataset:
            n_rows, size, params = len(dataset), data.stat().st_size, dataset.info.params
        table["chunks"] = f"{n_rows} ({size / n_rows / 1e3:.0f} KB/row, {DEFAULT_COMPRESSION})"
        if "load_data" in args.stages or "prediction" in args.stages:
            wavs = sorted(wav_dir.glob("*.wav"))
            one, many = extraction_ceiling(wavs, params, cores, 20 if args.quick else 200)
            table[f"extraction alone, 1 and {cores} processes (the cores' ceiling)"] = (
                f"{one:.1f} and {many:.1f} recordings/s: {many / one:.1f}x"
            )
            print(f"  extraction alone: {one:.1f} / {many:.1f} recordings/s", flush=True)
        stage_done("load_data")

        if "reading" in args.stages:
            gzip = work / "train-gzip.h5"
            convert_dataset(data, gzip, "gzip")
            for name, path in ((DEFAULT_COMPRESSION, data), ("gzip", gzip)):
                for processes in (1, args.readers):
                    rate = read_rate(path, n_rows, args.batch_size, processes, seconds=3)
                    table[f"reading {name}, {processes} processes"] = f"{rate:.0f} rows/s"
                    print(f"  reading {name} {processes} processes: {rate:.0f} rows/s", flush=True)
            for way, rate in batch_read_rates(data, n_rows, args.batch_size, args.readers).items():
                table[f"reading {DEFAULT_COMPRESSION}, {args.readers} processes, {way}"] = (
                    f"{rate:.0f} rows/s"
                )
                print(f"  reading, {way}: {rate:.0f} rows/s", flush=True)
            stage_done("reading")

        def training(policy: str, batch_size: int, models: list[str]) -> None:
            rates = train_rates(data, models, policy, batch_size, args.epochs, args.readers)
            for way, rate in rates.items():
                table[f"training {way}, batch {batch_size}, {policy}"] = f"{rate:.0f} samples/s"
            stage_done(f"training, batch {batch_size}, {policy}")

        if "training" in args.stages:
            training(args.dtype_policy, args.batch_size, args.models)

        if "prediction" in args.stages:
            keras.mixed_precision.set_global_policy(args.dtype_policy)
            # predict.py's default on a GPU; at least 2, the fewest that run in worker processes
            on_gpu = max(2, extraction_workers(None, model_on_gpu=True))
            for way, rate in handoff_rates(on_gpu).items():
                table[f"hand-off of chunks from {on_gpu} workers, {way}"] = f"{rate:.0f} chunks/s"
                print(f"  hand-off from {on_gpu} workers, {way}: {rate:.0f} chunks/s", flush=True)
            rate = model_alone_rate(6, args.batch_size, seconds=3)
            table[f"prediction, BirdClef alone (predict_on_batch, batch {args.batch_size})"] = (
                f"{rate:.0f} chunks/s, {rate * n_wavs / n_rows:.1f} recordings/s of these"
            )
            print(f"  the model alone: {rate:.0f} chunks/s", flush=True)
            for workers in sorted({1, on_gpu}):
                rates = predict_rates(wav_dir, args.predict_recordings, 6, args.batch_size, workers)
                where = f"{workers} extraction workers" if workers > 1 else "extraction in turns"
                table[f"prediction, BirdClef, {where}"] = (
                    "{:.1f} recordings/s ({:.1f} once started)".format(*rates)
                )
                print(f"  prediction, {where}: {table[f'prediction, BirdClef, {where}']}")
            stage_done("prediction")

        for entry in args.also_train:  # last: the table above is whole if time runs out here
            policy, batch_size = entry.split(":")
            training(policy, int(batch_size), args.models[:1])

    print(f"\n| measured ({time.strftime('%Y-%m-%d')}) | |\n|---|---|")
    for name, value in table.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
