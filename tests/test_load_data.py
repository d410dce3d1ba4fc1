"""preprocess/load_data.py: metadata layouts, bad inputs, reruns, kill -9 resumption."""

import csv
import dataclasses
import errno
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.io import wavfile

from preprocess import extract as extract_module
from preprocess import load_data as load_data_module
from preprocess import metadata
from preprocess.audio import read_wav, to_sample_rate
from preprocess.dataset import DatasetInfo, complete_shards, open_dataset
from preprocess.load_data import main
from preprocess.metadata import Recording
from preprocess.params import SpectrogramParams
from preprocess.paths import HDF5_SIGNATURE, exclusive_run
from preprocess.spectrogram import extract_chunks, stream_chunks
from tests.helpers import process_state, still_running, tree_state

SCRIPT = Path(__file__).resolve().parents[1] / "preprocess" / "load_data.py"
PARAMS = SpectrogramParams()
RATE = 16000


def tone_in_noise(seconds: float, seed: int) -> np.ndarray:
    """int16 (n,): noise with a 2.5 kHz tone sounding half of every second."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 8000 * np.sin(2 * np.pi * 2500 * t) * ((t % 1.0) < 0.5)
    return (rng.normal(0, 200, t.size) + tone).astype(np.int16)


def make_wavs(folder: Path) -> dict[str, np.ndarray]:
    """tone (3 s), short (0.1 s), silent (2 s of the faintest hiss), long (12 s) in folder."""
    wavs = {
        "tone.wav": tone_in_noise(3, 0),
        "short.wav": tone_in_noise(0.1, 1),
        "silent.wav": np.random.default_rng(3).integers(-2, 3, 2 * RATE).astype(np.int16),
        "long.wav": tone_in_noise(12, 2),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, samples in wavs.items():
        wavfile.write(folder / name, RATE, samples)
    return wavs


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def csv_job(tmp_path):
    """(wav dir, CSV) of the four wavs; tone has a background class."""
    wav_dir = tmp_path / "wav"
    make_wavs(wav_dir)
    rows = [
        {"file": "tone.wav", "label": "aaa", "background": "bbb"},
        {"file": "short.wav", "label": "bbb", "background": ""},
        {"file": "silent.wav", "label": "aaa", "background": ""},
        {"file": "long.wav", "label": "ccc", "background": ""},
    ]
    return wav_dir, write_csv(tmp_path / "labels.csv", rows)


def load(wav_dir, labels: list[str], out, *options) -> int:
    argv = ["--wav-dir", wav_dir, *labels, "--out", out, "--workers", 1, *options]
    return main([str(arg) for arg in argv])


def contents(path: Path) -> dict:
    """Every dataset and root attribute of an HDF5 file, to compare two files."""
    values = {}
    with h5py.File(path) as h5:
        h5.visititems(
            lambda name, obj: (
                values.update({name: obj[...]}) if isinstance(obj, h5py.Dataset) else None
            )
        )
        values.update({f"attr {name}": value for name, value in h5.attrs.items()})
    return values


def assert_same_file(path_a: Path, path_b: Path) -> None:
    a, b = contents(path_a), contents(path_b)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_csv_rows_are_the_recordings_chunks_in_order(csv_job, tmp_path, capsys):
    wav_dir, labels = csv_job
    out = tmp_path / "out.h5"
    assert load(wav_dir, ["--csv", labels], out) == 0
    with open_dataset(out) as dataset:
        recordings = dataset.recordings
        assert list(recordings["MediaId"]) == ["tone", "short", "silent", "long"]
        assert dataset.classes == ["aaa", "bbb", "ccc"]
        assert list(recordings["label"]) == [0, 1, 0, 2]
        assert recordings["background"].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
        assert dataset.info.source["metadata"] == "csv"
        for index, name in enumerate(recordings["file"]):
            samples, _ = read_wav(wav_dir / name)
            expected, n_frames = extract_chunks(samples, PARAMS)
            first, n = recordings["first_row"][index], recordings["n_chunks"][index]
            assert n == len(expected) and recordings["n_frames"][index] == n_frames
            assert recordings["duration_s"][index] == pytest.approx(len(samples) / RATE)
            np.testing.assert_array_equal(dataset.X[first : first + n, :, :, 0], expected)
            assert list(dataset["chunk_index"][first : first + n]) == list(range(n))
            assert set(dataset["MediaId"].asstr()[first : first + n]) == {name[:-4]}
        assert recordings["n_chunks"][3] >= 2  # the 12 s recording spans several chunks
        assert np.isfinite(dataset.X[:]).all()  # digital silence included
    report = capsys.readouterr().out
    assert "recordings  4" in report and "skipped     0" in report
    # the faint hiss and the 0.1 s tone: kept as in 2016, all zeros, and named
    emptied = next(line for line in report.splitlines() if "emptied" in line)
    assert "2 recording(s)" in emptied and "short.wav" in emptied and "silent.wav" in emptied
    with open_dataset(out) as dataset:
        for index in (1, 2):
            first, n = dataset.recordings["first_row"][index], dataset.recordings["n_chunks"][index]
            assert not dataset.X[first : first + n].any()


def first_task_finishes_last(task, info):
    """load_data's worker task, but the first one waits until the third has written its
    shard: the shards are done out of input order."""
    if task.shard.name.endswith("-00000.h5"):
        third = task.shard.with_name(task.shard.name.replace("-00000.h5", "-00002.h5"))
        deadline = time.monotonic() + 60
        while not third.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert third.exists(), "the third task never finished"
    return EXTRACT_INTO_SHARD(task, info)


def test_several_workers_write_the_same_file(csv_job, tmp_path, monkeypatch):
    """Workers write their tasks' shards themselves and send back only what they wrote; the
    parent copies the shards into OUT in input order, whatever order they were done in: the
    same file as one worker writes."""
    wav_dir, labels = csv_job
    rows = list(csv.DictReader(labels.read_text().splitlines()))
    for index in range(12):  # enough files for several worker tasks
        wavfile.write(wav_dir / f"extra{index}.wav", RATE, tone_in_noise(1 + index, index))
        rows.append({"file": f"extra{index}.wav", "label": "bbb", "background": ""})
    write_csv(labels, rows)
    assert load(wav_dir, ["--csv", labels], tmp_path / "one.h5") == 0
    argv = ["--wav-dir", str(wav_dir), "--csv", str(labels), "--out", str(tmp_path / "two.h5")]
    outcomes = []
    places_in_shard = load_data_module.places_in_shard
    monkeypatch.setattr(
        load_data_module,
        "places_in_shard",
        lambda task, each, *args: outcomes.extend(each) or places_in_shard(task, each, *args),
    )
    monkeypatch.setattr(load_data_module, "extract_into_shard", first_task_finishes_last)
    assert main([*argv, "--workers", "2"]) == 0
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    with open_dataset(tmp_path / "two.h5") as dataset:  # the workers said what they wrote
        assert len(outcomes) == 16 and sum(each.n_chunks for each in outcomes) == len(dataset)
    assert not (tmp_path / "two.h5.parts").exists()


XML = "<Audio><MediaId>{id}</MediaId><FileName>{file}</FileName>{labels}</Audio>"
LABELS = (
    "<ClassId>{class_id}</ClassId><Quality>{quality}</Quality><Genus>{genus}</Genus>"
    "<Species>{species}</Species><BackgroundSpecies>{background}</BackgroundSpecies>"
)


def write_xml(folder: Path, media_id: int, file: str, **labels) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = XML.format(id=media_id, file=file, labels=LABELS.format(**labels) if labels else "")
    (folder / f"{file[:-4]}.xml").write_text(text)


def test_long_recordings_are_streamed_into_the_same_file(csv_job, tmp_path, monkeypatch, capsys):
    """Over STREAM_SECONDS (lowered to 1 s here) a wav is extracted in pieces: the file is
    the same; a truncated one is skipped by name."""
    wav_dir, labels = csv_job
    assert load(wav_dir, ["--csv", labels], tmp_path / "whole.h5") == 0
    streamed = []

    def counted_stream_chunks(*args):
        streamed.append(1)
        return stream_chunks(*args)

    monkeypatch.setattr(extract_module, "STREAM_SECONDS", 1.0)
    monkeypatch.setattr(extract_module, "stream_chunks", counted_stream_chunks)
    assert load(wav_dir, ["--csv", labels], tmp_path / "streamed.h5") == 0
    assert len(streamed) == 3  # tone, silent and long; not short (0.1 s)
    assert_same_file(tmp_path / "whole.h5", tmp_path / "streamed.h5")

    data = (wav_dir / "long.wav").read_bytes()
    (wav_dir / "long.wav").write_bytes(data[: len(data) - 1000])
    capsys.readouterr()
    assert load(wav_dir, ["--csv", labels], tmp_path / "cut.h5") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "long.wav" in line)
    assert "truncated" in line
    with open_dataset(tmp_path / "cut.h5") as dataset:
        assert list(dataset.recordings["file"]) == ["tone.wav", "short.wav", "silent.wav"]


def test_a_second_run_on_the_same_output_is_refused(csv_job, tmp_path, lock_held_elsewhere, capsys):
    wav_dir, labels = csv_job
    out = tmp_path / "train.h5"
    pid = lock_held_elsewhere(tmp_path / "train.h5.lock")
    assert load(wav_dir, ["--csv", labels], out) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {out} is being written by another process (pid {pid}")
    assert not out.exists() and not (tmp_path / "train.h5.parts").exists()
    assert load(wav_dir, ["--csv", labels], tmp_path / "other.h5") == 0  # other outputs run
    with exclusive_run(tmp_path / "other.h5.lock", "other.h5"):  # released at the end
        pass


def test_birdclef_folders_with_bad_inputs(tmp_path, capsys, caplog):
    wav_dir, xml_dir = tmp_path / "wav", tmp_path / "xml"
    make_wavs(wav_dir)  # silent.wav gets no XML
    (wav_dir / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage that is not a wav file")
    (wav_dir / "empty.wav").write_bytes(b"")
    alpha = {"genus": "Alpha", "species": "one", "class_id": "aaaaaa"}
    beta = {"genus": "Beta", "species": "two", "class_id": "bbbbbb"}
    write_xml(xml_dir, 1, "tone.wav", quality=1, background="Beta two, Unknown bird", **alpha)
    write_xml(xml_dir, 2, "long.wav", quality=2, background="", **beta)
    write_xml(xml_dir, 3, "short.wav", quality=4, background="", **alpha)
    write_xml(xml_dir, 4, "ghost.wav", quality=1, background="", **beta)  # no wav
    gamma = {"genus": "Gamma", "species": "three", "class_id": "cccccc"}
    write_xml(xml_dir, 8, "lost.wav", quality=1, background="", **gamma)  # its class's only
    write_xml(xml_dir, 5, "corrupt.wav", quality=1, background="", **beta)
    write_xml(xml_dir, 6, "empty.wav", quality=1, background="", **beta)
    (xml_dir / "broken.xml").write_text("<Audio><MediaId>7</MediaId>")

    out = tmp_path / "train.h5"
    assert load(wav_dir, ["--xml-dir", xml_dir], out) == 0
    with open_dataset(out) as dataset:
        recordings = dataset.recordings
        assert list(recordings["MediaId"]) == ["2", "3", "1"]  # XML files in name order
        assert dataset.class_names == {"aaaaaa": "Alpha one", "bbbbbb": "Beta two"}
        assert list(recordings["ClassId"]) == ["bbbbbb", "aaaaaa", "aaaaaa"]
        assert recordings["background"].tolist() == [[0, 0], [0, 0], [0, 1]]
        assert list(dataset.label[:][dataset["chunk_index"][:] == 0]) == [1, 0, 0]
    report = capsys.readouterr().out
    assert "skipped     6 file(s)" in report
    assert "1 classes have no recording: the audio of each of theirs is missing" in caplog.text
    assert "bbbbbb" not in caplog.text and ": cccccc" in caplog.text
    for reason, name in [
        ("XML without wav", "ghost.wav"),
        ("unusable XML", "broken.xml"),
        ("unusable wav", "corrupt.wav"),
        ("unusable wav", "empty.wav"),
        ("wav without metadata", "silent.wav"),
    ]:
        line = next(line for line in report.splitlines() if reason in line)
        assert name in line, (reason, name, report)

    # a quality selection; then a test set without labels, with the training classes
    assert load(wav_dir, ["--xml-dir", xml_dir], tmp_path / "hq.h5", "--max-quality", 2) == 0
    with open_dataset(tmp_path / "hq.h5") as dataset:
        assert list(dataset.recordings["MediaId"]) == ["2", "1"]
    test_xml = tmp_path / "test_xml"
    for media_id, name in enumerate(["long.wav", "tone.wav"]):
        write_xml(test_xml, media_id, name)
    test_out = tmp_path / "test.h5"
    assert load(wav_dir, ["--xml-dir", test_xml], test_out, "--classes-from", out) == 0
    with open_dataset(test_out) as dataset:
        assert dataset.classes == ["aaaaaa", "bbbbbb"]
        assert (dataset.label[:] == -1).all() and not dataset.y[:].any()
        assert set(dataset["ClassId"].asstr()[:]) == {""}


def test_class_folders(tmp_path, capsys):
    wav_dir = tmp_path / "wav"
    wavs = make_wavs(tmp_path / "flat")
    for label, name in [("owl", "tone.wav"), ("wren", "long.wav"), ("wren", "short.wav")]:
        (wav_dir / label).mkdir(parents=True, exist_ok=True)
        wavfile.write(wav_dir / label / name, RATE, wavs[name])
    wavfile.write(wav_dir / "owl" / "._tone.wav", RATE, wavs["tone.wav"])  # a Mac's copy
    assert load(wav_dir, ["--class-folders"], tmp_path / "out.h5") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "hidden" in line)
    assert "1 hidden file (not used)" in line and "owl/._tone.wav" in line
    with open_dataset(tmp_path / "out.h5") as dataset:
        assert dataset.classes == ["owl", "wren"]
        assert list(dataset.recordings["file"]) == [
            "owl/tone.wav",
            "wren/long.wav",
            "wren/short.wav",
        ]
        assert list(dataset.recordings["label"]) == [0, 1, 1]


def test_rerun_does_nothing_and_other_settings_need_overwrite(csv_job, tmp_path, capsys):
    wav_dir, labels = csv_job
    out = tmp_path / "out.h5"
    assert load(wav_dir, ["--csv", labels], out) == 0
    written = out.stat().st_mtime_ns
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert "already complete" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == written

    assert load(wav_dir, ["--csv", labels], out, "--top-n", 1) == 2  # would change the file
    assert out.stat().st_mtime_ns == written
    assert load(wav_dir, ["--csv", labels], out, "--top-n", 1, "--overwrite") == 0
    with open_dataset(out) as dataset:
        assert dataset.classes == ["aaa"] and len(dataset.recordings["MediaId"]) == 2


def test_someone_elses_hdf5_file_at_out_is_never_replaced(csv_job, tmp_path, capsys):
    """Keras weights or another project's data: even --overwrite replaces only a dataset of
    load_data's own."""
    wav_dir, labels = csv_job
    out = tmp_path / "precious.h5"
    with h5py.File(out, "w") as h5:
        h5["measurements"] = np.arange(5)
    before = out.read_bytes()
    for options in ((), ("--overwrite",)):
        assert load(wav_dir, ["--csv", labels], out, *options) == 2
        assert "is not a chunk dataset written by preprocess/load_data.py" in (
            capsys.readouterr().err
        )
    assert out.read_bytes() == before


def test_an_input_named_as_a_working_file_of_out_is_refused(csv_job, tmp_path, capsys):
    """--classes-from OUT.parts/x.h5: the clean-up of the shards would delete it; an HDF5 file
    of the user's at OUT.tmp (the temporary name of versions before) is left alone."""
    wav_dir, labels = csv_job
    classes = tmp_path / "classes.h5"
    assert load(wav_dir, ["--csv", labels], classes) == 0
    source = tmp_path / "out.h5.parts" / "shard.h5"
    source.parent.mkdir()
    source.write_bytes(classes.read_bytes())
    options = ("--classes-from", source)
    assert load(wav_dir, ["--csv", labels], tmp_path / "out.h5", *options) == 2
    assert "whose clean-up would delete it" in capsys.readouterr().err
    assert source.read_bytes() == classes.read_bytes()
    shutil.rmtree(source.parent)
    users = tmp_path / "out.h5.tmp"
    users.write_bytes(classes.read_bytes())
    assert load(wav_dir, ["--csv", labels], tmp_path / "out.h5", "--classes-from", users) == 0
    assert users.read_bytes() == classes.read_bytes()


def test_fatal_errors_are_one_clear_line(tmp_path):
    argv = ["--wav-dir", tmp_path / "nowhere", "--csv", tmp_path / "none.csv", "--out", "x.h5"]
    command = [sys.executable, SCRIPT, *argv]
    result = subprocess.run(
        list(map(str, command)), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "none.csv" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.h5").exists()


def child_processes(pid: int) -> list[int]:
    """The running processes whose parent is pid."""
    pids = (int(path.name) for path in Path("/proc").glob("[0-9]*"))
    return [child for child in pids if process_state(child)[1] == pid]


def numbered_recordings(folder: Path, seconds: float) -> Path:
    """48 wavs r00.wav..r47.wav in folder/wav, of three classes; returns their labels CSV."""
    wav_dir = folder / "wav"
    wav_dir.mkdir()
    rows = []
    for index in range(48):
        wavfile.write(wav_dir / f"r{index:02d}.wav", RATE, tone_in_noise(seconds, index))
        rows.append({"file": f"r{index:02d}.wav", "label": f"class{index % 3}"})
    return write_csv(folder / "labels.csv", rows)


def test_kill_9_then_rerun_gives_every_recording_once(tmp_path):
    labels, wav_dir = numbered_recordings(tmp_path, seconds=30), tmp_path / "wav"
    out = tmp_path / "out.h5"
    parts = tmp_path / "out.h5.parts"

    argv = ["--wav-dir", wav_dir, "--csv", labels, "--out", out, "--workers", 2]
    command = [sys.executable, SCRIPT, *argv]
    process = subprocess.Popen(
        list(map(str, command)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while len(complete_shards(parts)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = child_processes(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists(), "load_data finished before it could be killed"
    # the workers look for their parent every second
    assert not still_running(workers, seconds=10), "the workers outlive load_data"
    done = len(complete_shards(parts))
    assert 2 <= done < 8  # tasks of 6 files: 48 files / (4 tasks per worker * 2 workers)
    (parts / "part-00999.h5.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    cut_short = tmp_path / ".out.h5.999-0a1b2c3d.partial"
    cut_short.write_bytes(HDF5_SIGNATURE + b"half an output")

    assert load(wav_dir, ["--csv", labels], out) == 0
    assert not parts.exists() and not cut_short.exists()
    with open_dataset(out) as dataset:
        media_ids = list(dataset.recordings["MediaId"])
    assert media_ids == [f"r{index:02d}" for index in range(48)]  # each once, in order
    assert load(wav_dir, ["--csv", labels], tmp_path / "again.h5") == 0
    assert_same_file(out, tmp_path / "again.h5")


def extract_or_die(task, info):
    """load_data's worker task, but the worker process dies (as the out-of-memory killer ends
    it) when given r20.wav."""
    if any(path.name == "r20.wav" for path in task.paths):
        os._exit(9)
    return EXTRACT_INTO_SHARD(task, info)


EXTRACT_INTO_SHARD = load_data_module.extract_into_shard


def test_a_worker_that_dies_ends_the_run_with_one_error_and_a_rerun_finishes(
    tmp_path, monkeypatch, capsys
):
    """A worker that dies ends load_data with status 2 and one message, where
    multiprocessing.Pool waited forever; the rerun keeps the recordings already done and
    gives each recording once."""
    labels, wav_dir = numbered_recordings(tmp_path, seconds=5), tmp_path / "wav"
    out, parts = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    options = ("--workers", 2)
    monkeypatch.setattr(load_data_module, "BATCH_BYTES", 1)  # a task, and a shard, per file
    monkeypatch.setattr(load_data_module, "extract_into_shard", extract_or_die)
    assert load(wav_dir, ["--csv", labels], out, *options) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: a worker process ended abruptly (killed, or out of memory?)")
    named = re.search(r"while extracting .*/r([0-9]{2})\.wav or a file after it$", error)
    assert named and int(named[1]) <= 20  # the file that killed it, or one before
    assert not out.exists() and len(complete_shards(parts)) >= 2

    monkeypatch.undo()
    assert load(wav_dir, ["--csv", labels], out, *options) == 0
    with open_dataset(out) as dataset:
        media_ids = list(dataset.recordings["MediaId"])
    assert media_ids == [f"r{index:02d}" for index in range(48)]  # in order, gaps or not


def test_real_8khz_recordings_are_resampled_with_one_warning(shared_data, tmp_path, caplog):
    fsdd = shared_data / "fsdd"
    with open(fsdd / "metadata.csv", encoding="utf-8") as stream:
        rows = [{"file": row["file"], "label": row["label"]} for row in csv.DictReader(stream)]
    labels = write_csv(tmp_path / "labels.csv", rows[::100])  # 30 files, every digit
    caplog.set_level(logging.INFO)
    assert load(fsdd, ["--csv", labels], tmp_path / "digits.h5") == 0
    advice = [r for r in caplog.records if "resample_wavs_to_16k.sh" in r.getMessage()]
    assert len(advice) == 1 and "8000 Hz" in advice[0].getMessage()
    with open_dataset(tmp_path / "digits.h5") as dataset:
        recordings = dataset.recordings
        assert len(recordings["MediaId"]) == 30 and dataset.classes == list("0123456789")
        assert (recordings["n_chunks"] == 1).all()  # clips under 2.3 s: one padded chunk
        for first, file in zip(recordings["first_row"], recordings["file"], strict=True):
            samples, rate = read_wav(fsdd / file)
            expected = extract_chunks(to_sample_rate(samples, rate, RATE), PARAMS).chunks
            np.testing.assert_array_equal(dataset.X[first, :, :, 0], expected[0])


@pytest.mark.parametrize("recipe", ["2016", "modern"])
def test_many_short_real_clips_are_each_the_chunks_of_the_clip_alone(shared_data, tmp_path, recipe):
    """60 real clips of 0.2-2 s through 2 workers, several clips per worker task and shard,
    several chunks compressed at once (the modern recipe's 1 s chunks): the same file as with
    1 worker, and row for row what each clip gives extracted alone."""
    fsdd = shared_data / "fsdd"
    with open(fsdd / "metadata.csv", encoding="utf-8") as stream:
        rows = [{"file": row["file"], "label": row["label"]} for row in csv.DictReader(stream)]
    labels = write_csv(tmp_path / "labels.csv", rows[::50])
    assert load(fsdd, ["--csv", labels], tmp_path / "one.h5", "--recipe", recipe) == 0
    argv = ["--wav-dir", fsdd, "--csv", labels, "--out", tmp_path / "two.h5", "--recipe", recipe]
    assert main([str(arg) for arg in [*argv, "--workers", 2]]) == 0
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    with open_dataset(tmp_path / "two.h5") as dataset:
        recordings, params = dataset.recordings, dataset.params
        assert len(recordings["file"]) == 60 and len(dataset) > 60 * (recipe == "modern")
        for first, n, n_frames, file in zip(
            *(recordings[name] for name in ("first_row", "n_chunks", "n_frames", "file")),
            strict=True,
        ):
            samples, rate = read_wav(fsdd / file)
            alone = extract_chunks(to_sample_rate(samples, rate, RATE), params)
            assert n_frames == alone.n_frames
            np.testing.assert_array_equal(dataset.X[first : first + n, :, :, 0], alone.chunks)


def counting_extractions(monkeypatch) -> list[str]:
    """The file names load_data extracts from now on (with --workers 1, in this process)."""
    extracted = []

    def counted(path, *args):
        extracted.append(Path(path).name)
        return extract_recording(path, *args)

    extract_recording = load_data_module.extract_recording
    monkeypatch.setattr(load_data_module, "extract_recording", counted)
    return extracted


def test_a_repaired_or_changed_wav_is_extracted_again_and_the_rest_kept(
    csv_job, tmp_path, monkeypatch, capsys
):
    wav_dir, labels = csv_job
    whole = (wav_dir / "long.wav").read_bytes()
    (wav_dir / "long.wav").write_bytes(b"RIFF broken")
    out = tmp_path / "out.h5"
    assert load(wav_dir, ["--csv", labels], out) == 0
    with open_dataset(out) as dataset:
        assert list(dataset.recordings["file"]) == ["tone.wav", "short.wav", "silent.wav"]
    extracted = counting_extractions(monkeypatch)
    assert load(wav_dir, ["--csv", labels], out) == 0  # unchanged: the broken file stays out
    assert extracted == [] and "already complete" in capsys.readouterr().out

    (wav_dir / "long.wav").write_bytes(whole)  # repaired: tried again, the others kept
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert extracted == ["long.wav"]
    assert "recordings  4 (3 kept from an earlier run)" in capsys.readouterr().out
    assert load(wav_dir, ["--csv", labels], tmp_path / "fresh.h5") == 0
    assert_same_file(out, tmp_path / "fresh.h5")

    extracted.clear()  # a changed wav (same name, other sound) replaces its old chunks
    wavfile.write(wav_dir / "short.wav", RATE, tone_in_noise(7, 9))
    os.utime(wav_dir / "short.wav", ns=(1, 1))  # whatever the clock: a new modification time
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert extracted == ["short.wav"]
    with open_dataset(out) as dataset:
        assert sorted(dataset.recordings["file"]) == sorted(["tone.wav", "short.wav",
                                                             "silent.wav", "long.wav"])  # fmt: skip
        short = list(dataset.recordings["file"]).index("short.wav")
        assert dataset.recordings["n_chunks"][short] == 2  # 7 s now, 0.1 s before

    extracted.clear()  # another file of the same size and modification time in its place
    status = (wav_dir / "short.wav").stat()
    wavfile.write(tmp_path / "other.wav", RATE, tone_in_noise(7, 3))
    os.utime(tmp_path / "other.wav", ns=(status.st_atime_ns, status.st_mtime_ns))
    time.sleep(0.01)  # a status-change time of its own, on coarse clocks too
    os.replace(tmp_path / "other.wav", wav_dir / "short.wav")
    assert (wav_dir / "short.wav").stat().st_size == status.st_size
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert extracted == ["short.wav"]


def test_clips_of_one_source_are_stored_as_a_group_that_a_rerun_keeps(
    csv_job, tmp_path, monkeypatch, capsys
):
    """tone.wav and long.wav given one media_id (clips of one source recording) are stored
    with that group; a rerun keeps every recording; a CSV that no longer groups them has them
    extracted again (their group changed) and keeps the two recordings alone."""
    wav_dir, _ = csv_job
    rows = [
        {"file": "tone.wav", "label": "aaa", "media_id": "src"},
        {"file": "short.wav", "label": "bbb", "media_id": ""},
        {"file": "silent.wav", "label": "aaa", "media_id": "s9"},
        {"file": "long.wav", "label": "ccc", "media_id": "src"},
    ]
    grouped, out = write_csv(tmp_path / "grouped.csv", rows), tmp_path / "out.h5"
    assert load(wav_dir, ["--csv", grouped], out) == 0
    with open_dataset(out) as dataset:
        assert list(dataset.recordings["MediaId"]) == ["tone", "short", "s9", "long"]
        assert list(dataset.recordings["group"]) == ["long.wav", "", "", "long.wav"]
    extracted = counting_extractions(monkeypatch)
    assert load(wav_dir, ["--csv", grouped], out) == 0
    assert extracted == [] and "already complete" in capsys.readouterr().out
    for row in rows:
        row["media_id"] = {"src": row["file"][:-4]}.get(row["media_id"], row["media_id"])
    assert load(wav_dir, ["--csv", write_csv(tmp_path / "alone.csv", rows)], out) == 0
    assert sorted(extracted) == ["long.wav", "tone.wav"]
    with open_dataset(out) as dataset:
        assert list(dataset.recordings["group"]) == [""] * 4


def test_a_file_on_two_rows_of_one_media_id_is_one_recording_with_a_background(csv_job, tmp_path):
    """Background birds listed as rows of their own (file, other label, same media_id), as
    a table of the species heard per recording has them: one recording, not an error."""
    wav_dir, _ = csv_job
    rows = [
        {"file": "tone.wav", "label": "aaa", "media_id": "XC1"},
        {"file": "tone.wav", "label": "bbb", "media_id": "XC1"},
        {"file": "long.wav", "label": "bbb", "media_id": "XC2"},
    ]
    out = tmp_path / "out.h5"
    assert load(wav_dir, ["--csv", write_csv(tmp_path / "rows.csv", rows)], out) == 0
    with open_dataset(out) as dataset:
        assert list(dataset.recordings["MediaId"]) == ["XC1", "XC2"]
        assert dataset.recordings["background"].tolist() == [[0, 1], [0, 0]]


def test_a_missing_file_is_named_as_the_csv_gives_it(csv_job, tmp_path, capsys):
    """sub/gone.mp3, whose 16 kHz copy sub/gone.wav never came: named as the user typed it,
    beside the wav it lacks."""
    wav_dir, _ = csv_job
    rows = [{"file": "tone.wav", "label": "aaa"}, {"file": "sub/gone.mp3", "label": "bbb"},
            {"file": "lost.wav", "label": "bbb"}, {"file": "long.wav", "label": "bbb"}]  # fmt: skip
    assert load(wav_dir, ["--csv", write_csv(tmp_path / "rows.csv", rows)], tmp_path / "o.h5") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "missing wav" in line)
    assert f"sub/gone.mp3 (no {wav_dir / 'sub' / 'gone.wav'})" in line
    assert f", lost.wav (no {wav_dir / 'lost.wav'})" in line


def test_the_key_of_a_recording_alone_is_what_older_versions_made():
    """Outputs of versions before groups are kept by a rerun: a recording without a group
    keeps its key."""
    recording = Recording("m", "m.wav", "aaa", background=["bbb"])
    stamp_free = Path("/nonexistent/m.wav")
    older = load_data_module._digest(["m", "m.wav", "aaa", ["bbb"], None])[:32]
    assert load_data_module.recording_key(recording, stamp_free) == older
    grouped = dataclasses.replace(recording, group="src")
    assert load_data_module.recording_key(grouped, stamp_free) != older


def interrupted_run(wav_dir, labels, out, monkeypatch, after: int, *options) -> None:
    """load_data stopped by Ctrl-C after extracting `after` recordings (a shard each)."""
    monkeypatch.setattr(load_data_module, "BATCH_BYTES", 1)  # a task, and a shard, per file
    extract_recording = load_data_module.extract_recording
    calls = []

    def interrupted(*args):
        if len(calls) == after:
            raise KeyboardInterrupt
        calls.append(1)
        return extract_recording(*args)

    monkeypatch.setattr(load_data_module, "extract_recording", interrupted)
    assert load(wav_dir, ["--csv", labels], out, *options) == 130
    monkeypatch.setattr(load_data_module, "extract_recording", extract_recording)


def test_other_settings_never_delete_an_interrupted_runs_shards(
    csv_job, tmp_path, monkeypatch, capsys
):
    wav_dir, labels = csv_job
    out, parts = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    interrupted_run(wav_dir, labels, out, monkeypatch, 2)
    shards = complete_shards(parts)
    assert len(shards) == 2
    capsys.readouterr()
    assert load(wav_dir, ["--csv", labels], out, "--top-n", 1) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {parts} holds 2 recordings (")
    assert "--overwrite" in error and complete_shards(parts) == shards  # nothing lost

    extracted = counting_extractions(monkeypatch)  # the same settings finish the run
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert extracted == ["silent.wav", "long.wav"] and not parts.exists()
    assert load(wav_dir, ["--csv", labels], tmp_path / "fresh.h5") == 0
    assert_same_file(out, tmp_path / "fresh.h5")

    interrupted_run(wav_dir, labels, tmp_path / "b.h5", monkeypatch, 1)  # --overwrite discards
    assert load(wav_dir, ["--csv", labels], tmp_path / "b.h5", "--top-n", 1, "--overwrite") == 0
    with open_dataset(tmp_path / "b.h5") as dataset:
        assert dataset.classes == ["aaa"]


def test_an_output_without_room_stops_and_keeps_the_shards(csv_job, tmp_path, monkeypatch, capsys):
    wav_dir, labels = csv_job
    out, parts = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    real_usage = load_data_module.shutil.disk_usage
    monkeypatch.setattr(
        load_data_module.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000)
    )
    extracted = counting_extractions(monkeypatch)
    assert load(wav_dir, ["--csv", labels], out) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert error.startswith(f"error: writing {out} needs about ") and "GB are free" in error
    assert "the extracted recordings are kept" in error
    assert not out.exists() and not list(tmp_path.glob(".out.h5.*"))
    assert extracted == ["tone.wav"] and len(complete_shards(parts)) == 1  # a task per file
    monkeypatch.undo()
    extracted = counting_extractions(monkeypatch)
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert extracted == ["short.wav", "silent.wav", "long.wav"] and not parts.exists()
    assert load(wav_dir, ["--csv", labels], tmp_path / "fresh.h5") == 0
    assert_same_file(out, tmp_path / "fresh.h5")


def shard_disk_full(path, info, temporary=None):
    """atomic_dataset, but the disk is full when a worker writes a shard."""
    if path.parent.name.endswith(".parts"):
        raise OSError(errno.ENOSPC, "No space left on device", f"{path}.tmp")
    return ATOMIC_DATASET(path, info, temporary)


ATOMIC_DATASET = load_data_module.atomic_dataset


def test_a_full_disk_in_a_worker_is_an_error_naming_the_shard_not_a_bug(
    csv_job, tmp_path, monkeypatch, capsys
):
    wav_dir, labels = csv_job
    monkeypatch.setattr(load_data_module, "atomic_dataset", shard_disk_full)
    assert load(wav_dir, ["--csv", labels], tmp_path / "out.h5", "--workers", 2) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(
        r"error: \S*/out\.h5\.parts/part-\S+\.h5\.tmp: No space left on device", error
    )
    assert not (tmp_path / "out.h5").exists()


def test_an_output_that_is_a_folder_or_a_pipe_is_refused(csv_job, tmp_path, capsys):
    wav_dir, labels = csv_job
    (tmp_path / "out.h5").mkdir()
    os.mkfifo(tmp_path / "pipe.h5")
    for out, message in [("out.h5", "is a folder"), ("pipe.h5", "is not a regular file")]:
        for extra in ([], ["--overwrite"]):
            assert load(wav_dir, ["--csv", labels], tmp_path / out, *extra) == 2
            error = capsys.readouterr().err
            assert error.startswith(f"error: --out {tmp_path / out} ") and message in error
    assert not list(tmp_path.glob("*.lock"))


def test_an_xml_with_a_dtd_entity_is_skipped_by_name(tmp_path, capsys):
    wav_dir, xml_dir = tmp_path / "wav", tmp_path / "xml"
    make_wavs(wav_dir)
    alpha = {"genus": "Alpha", "species": "one", "class_id": "aaaaaa", "background": ""}
    write_xml(xml_dir, 1, "tone.wav", quality=1, **alpha)
    write_xml(xml_dir, 2, "long.wav", quality=1, **alpha)
    (xml_dir / "short.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE Audio [<!ENTITY lol "lol">]>'
        "<Audio><MediaId>&lol;</MediaId><FileName>short.wav</FileName></Audio>"
    )
    assert load(wav_dir, ["--xml-dir", xml_dir], tmp_path / "out.h5") == 0
    report = capsys.readouterr().out
    line = next(line for line in report.splitlines() if "unusable XML" in line)
    assert "short.xml" in line and "entities are disabled" in line


def test_xml_files_read_by_several_workers_give_the_same_recordings_and_skips(tmp_path):
    xml_dir = tmp_path / "xml"
    for number in range(9):
        alpha = {"genus": "Alpha", "species": "one", "class_id": "aaaaaa", "background": ""}
        write_xml(xml_dir, number, f"r{number}.wav", quality=1, **alpha)
    (xml_dir / "r3.xml").write_text("<Audio><MediaId>3</MediaId>")  # cut short
    (xml_dir / "r7.xml").write_text("<Audio><FileName>r7.wav</FileName></Audio>")
    alone = metadata.read_birdclef_xml_dir(xml_dir)
    assert len(alone[0]) == 7 and len(alone[1]) == 2
    for workers in (1, 3):
        parse = functools.partial(load_data_module.parse_xml_in_workers, workers=workers)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(load_data_module, "XML_BATCH", 2)  # 5 tasks
            assert metadata.read_birdclef_xml_dir(xml_dir, parse) == alone


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--top-n", "-1", "argument --top-n: must be at least 1, not -1"),
        ("--top-n", "0", "argument --top-n: must be at least 1, not 0"),
        ("--workers", "0", "argument --workers: must be at least 1, not 0"),
        ("--min-quality", "-1", "argument --min-quality: must be at least 0, not -1"),
        ("--top-n", "lots", "argument --top-n: 'lots' is not a whole number"),
        ("--workers", "1000000", "argument --workers: must be at most"),
    ],
)
def test_impossible_numbers_are_argument_errors(csv_job, tmp_path, capsys, option, value, message):
    wav_dir, labels = csv_job
    with pytest.raises(SystemExit) as exit_status:
        load(wav_dir, ["--csv", labels], tmp_path / "out.h5", option, value)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.h5").exists()


def test_quality_bounds_the_wrong_way_round(csv_job, tmp_path, capsys):
    wav_dir, labels = csv_job
    with pytest.raises(SystemExit):
        load(wav_dir, ["--csv", labels], tmp_path / "o.h5", "--min-quality", 4, "--max-quality", 2)
    assert "--min-quality 4 is above --max-quality 2" in capsys.readouterr().err


HOLD_OPEN = """
import fcntl, sys, time
held = open(sys.argv[1], "rb")
fcntl.flock(held, fcntl.LOCK_EX)  # as HDF5 locks a file another program writes
print("held", flush=True)
time.sleep(120)
"""


def test_a_finished_shard_held_by_another_program_is_kept(csv_job, tmp_path, monkeypatch, capsys):
    """HDF5 will not open a shard another program holds (errno 11): it was deleted as
    unreadable and its recordings extracted again."""
    wav_dir, labels = csv_job
    out, parts = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    real_usage = load_data_module.shutil.disk_usage
    monkeypatch.setattr(
        load_data_module.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000)
    )
    assert load(wav_dir, ["--csv", labels], out) == 2  # stops before OUT, the shard kept
    monkeypatch.undo()
    (shard,) = complete_shards(parts)
    written = shard.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(shard)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert load(wav_dir, ["--csv", labels], out) == 2
        error = capsys.readouterr().err
        assert f"error: {shard}: not a readable HDF5 file" in error
        assert "if another program has it open, close that and run again" in error
        assert shard.read_bytes() == written
    finally:
        holder.kill()
        holder.wait()
    extracted = counting_extractions(monkeypatch)
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert "tone.wav" not in extracted  # from the shard kept


def test_an_update_killed_before_its_output_is_complete_leaves_the_old_one(
    csv_job, tmp_path, monkeypatch
):
    wav_dir, labels = csv_job
    out = tmp_path / "out.h5"
    assert load(wav_dir, ["--csv", labels], out) == 0
    before = contents(out)
    wavfile.write(wav_dir / "tone.wav", RATE, tone_in_noise(4, 5))  # changed: to extract again
    replace = os.replace

    def killed_before_the_last_rename(source, target):
        if Path(target) == out:
            raise SystemExit(137)  # stands for kill -9
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_before_the_last_rename)
    with pytest.raises(SystemExit):
        load(wav_dir, ["--csv", labels], out)
    monkeypatch.undo()
    after_kill = contents(out)
    assert after_kill.keys() == before.keys()  # the old OUT is untouched
    for name in before:
        np.testing.assert_array_equal(after_kill[name], before[name])
    # as a kill -9 mid-write leaves it: HDF5 writes its signature when it creates the file
    cut_short = tmp_path / ".out.h5.999-0a1b2c3d.partial"
    cut_short.write_bytes(HDF5_SIGNATURE + b"half an output")
    extracted = counting_extractions(monkeypatch)
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert extracted == []  # tone.wav was already extracted into a shard before the kill
    assert not cut_short.exists() and not (tmp_path / "out.h5.parts").exists()
    with open_dataset(out) as dataset:
        assert list(dataset.recordings["file"]) == ["tone.wav", "short.wav", "silent.wav",
                                                    "long.wav"]  # fmt: skip
        assert dataset.recordings["duration_s"][0] == pytest.approx(4.0)


def test_worker_tasks_group_short_files_and_keep_every_worker_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(load_data_module, "BATCH_BYTES", 10_000)
    sizes = [1000] * 40 + [50_000] + [3000] * 9  # short files, one long, medium ones
    paths = []
    for index, size in enumerate(sizes):
        paths.append(tmp_path / f"{index:02d}.wav")
        paths[-1].write_bytes(bytes(size))
    paths.append(tmp_path / "missing.wav")
    batches = load_data_module.worker_batches(paths, workers=2)
    assert [path for batch in batches for path in batch] == paths  # all, in order
    assert [len(batch) for batch in batches] == [7, 7, 7, 7, 7, 5, 1, 3, 3, 4]
    assert load_data_module.worker_batches(paths[:3], workers=4) == [[path] for path in paths[:3]]


def victim_folder(folder: Path) -> dict[str, bytes]:
    """A folder of someone else's files, named as load_data's own are: their bytes."""
    folder.mkdir()
    (folder / "c.tmp").write_bytes(b"the victim's c.tmp")
    (folder / "part-aaaa-00000.h5").write_bytes(b"not a shard: the victim's")
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_file_named_as_a_shard_that_is_not_one_is_refused_and_kept(csv_job, tmp_path, capsys):
    """OUT.parts/part-x.h5 of another program's (an HDF5 file, or none): the run stops, naming
    it, where it was deleted as an unreadable shard."""
    import h5py

    wav_dir, labels = csv_job
    out = tmp_path / "train.h5"
    parts = out.with_name("train.h5.parts")
    parts.mkdir()
    with h5py.File(parts / "part-experiment1.h5", "w") as other:
        other["d"] = np.arange(9)
    (parts / "part-notes.h5").write_bytes(b"notes")
    kept = {path.name: path.read_bytes() for path in parts.iterdir()}
    assert load(wav_dir, ["--csv", labels], out) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "part-experiment1.h5" in error
    assert "it is left as it is" in error
    assert {path.name: path.read_bytes() for path in parts.iterdir()} == kept
    assert not out.exists()


def test_a_link_as_the_parts_folder_is_refused_and_nothing_is_touched_through_it(
    csv_job, tmp_path, capsys
):
    wav_dir, labels = csv_job
    victim = tmp_path / "victim"
    kept = victim_folder(victim)
    before = tree_state(victim)
    out = tmp_path / "P" / "train.h5"
    out.parent.mkdir()
    parts = out.with_name("train.h5.parts")
    parts.symlink_to(victim)
    for extra in ([], ["--overwrite"]):
        assert load(wav_dir, ["--csv", labels], out, *extra) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {parts} is a link") and error.count("\n") == 1
        assert "move or remove it" in error
    assert tree_state(victim) == before  # nothing deleted, written or added through the link
    assert {path.name: path.read_bytes() for path in victim.iterdir()} == kept
    assert parts.is_symlink() and not out.exists() and not out.with_name("train.h5.tmp").exists()


def test_a_users_folder_at_the_parts_name_is_refused_not_emptied(csv_job, tmp_path, capsys):
    wav_dir, labels = csv_job
    out = tmp_path / "train.h5"
    assert load(wav_dir, ["--csv", labels], out) == 0  # complete: a rerun would clean up
    parts = tmp_path / "train.h5.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("the user's notes")
    (parts / "part-00000.h5.tmp").write_bytes(b"a shard cut short")  # load_data's own
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert load(wav_dir, ["--csv", labels], out, *extra) == 2
        error = capsys.readouterr().err
        assert (
            error.startswith(f"error: {parts} is not only a folder of shards")
            and "notes.txt" in error
        )
        assert error.count("\n") == 1
    assert sorted(path.name for path in parts.iterdir()) == ["notes.txt", "part-00000.h5.tmp"]
    assert (parts / "notes.txt").read_text() == "the user's notes"


@pytest.mark.parametrize(
    "planted", ["text", "link", "link at a cut-short write's name", "train.h5.old's write"]
)
def test_a_users_file_or_a_link_beside_out_is_left_alone(csv_job, tmp_path, planted):
    """OUT.tmp, where versions before wrote OUT, and a link named as a write of OUT cut short
    are left as they are: OUT is written under a name unique to the run."""
    wav_dir, labels = csv_job
    out = tmp_path / "train.h5"
    planted_at = tmp_path / (
        ".train.h5.999-0a1b2c3d.partial" if "cut" in planted else "train.h5.tmp"
    )
    if "old" in planted:  # another load_data's, writing --out train.h5.old meanwhile
        planted_at = tmp_path / ".train.h5.old.999-0a1b2c3d.partial"
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's text")
    if planted == "text":
        planted_at.write_text("the user's text")
    elif "old" in planted:
        planted_at.write_bytes(HDF5_SIGNATURE + b"half of another output")
    else:
        planted_at.symlink_to(victim)
    before = planted_at.read_bytes()
    assert load(wav_dir, ["--csv", labels], out) == 0
    assert planted_at.is_symlink() == ("link" in planted)
    assert planted_at.read_bytes() == before and victim.read_text() == "the user's text"
    assert sorted(path.name for path in tmp_path.glob("*train.h5*")) == sorted(
        [planted_at.name, "train.h5", "train.h5.lock"]
    )


def test_recordings_that_hold_no_sound_are_skipped_by_name(tmp_path, capsys):
    wav_dir = tmp_path / "wav"
    make_wavs(wav_dir)
    wavfile.write(wav_dir / "zeros.wav", RATE, np.zeros(3 * RATE, np.int16))
    wavfile.write(wav_dir / "click.wav", RATE, np.full(20, 3000, np.int16))  # 1.25 ms
    stereo = np.random.default_rng(4).normal(0, 3000, (4 * 44100, 2)).astype(np.int16)
    wavfile.write(wav_dir / "hiss.wav", 44100, stereo)  # the 2016 filter may empty it: kept
    wavfile.write(wav_dir / "zeros2.wav", 44100, np.zeros((3 * 44100, 2), np.int16))
    names = ["tone.wav", "zeros.wav", "click.wav", "hiss.wav", "zeros2.wav", "long.wav"]
    labels = write_csv(
        tmp_path / "labels.csv", [{"file": n, "label": "ab"[i % 2]} for i, n in enumerate(names)]
    )
    for options in ([], ["--recipe", "modern"]):
        out = tmp_path / f"out{len(options)}.h5"
        assert load(wav_dir, ["--csv", labels], out, *options) == 0
        with open_dataset(out) as dataset:
            files = list(dataset.recordings["file"])
        assert files == ["tone.wav", "click.wav", "hiss.wav", "long.wav"]  # a click is sound
        report = capsys.readouterr().out
        assert "zeros.wav (silent: every sample is zero)" in report
        assert "zeros2.wav (silent: every sample is zero)" in report


def test_labels_that_differ_only_in_case_are_warned_of(tmp_path, caplog):
    """Two cases of a word are two classes, said; NFC and NFD of one word are one class (in
    NFC, as the scorer reads them)."""
    wav_dir = tmp_path / "wav"
    names = sorted(make_wavs(wav_dir))
    labels = ["caf\u00e9", "cafe\u0301", "Owl", "owl"]  # NFC and NFD of one word; two cases
    rows = [{"file": n, "label": label} for n, label in zip(names, labels, strict=True)]
    assert (
        load(wav_dir, ["--csv", write_csv(tmp_path / "labels.csv", rows)], tmp_path / "o.h5") == 0
    )
    assert "labels 'Owl' and 'owl' differ only in case" in caplog.text
    assert "cafe\\u0301" not in caplog.text
    with open_dataset(tmp_path / "o.h5") as dataset:
        assert dataset.classes == ["Owl", "caf\u00e9", "owl"]
    caplog.clear()  # a test set labelled in the other form, against the training set's classes
    test_rows = [{"file": names[0], "label": "cafe\u0301"}, {"file": names[1], "label": "OWL"}]
    labels = write_csv(tmp_path / "test.csv", test_rows)
    assert (
        load(wav_dir, ["--csv", labels], tmp_path / "t.h5", "--classes-from", tmp_path / "o.h5")
        == 0
    )
    assert "'OWL' is not one of" in caplog.text


def test_labels_take_the_spelling_of_classes_from_an_older_dataset():
    """--classes-from a dataset built before labels were read in NFC, its classes spelt in NFD
    (a Mac's folder names): a label in NFC is that class, not unlabelled; others stay."""
    nfd = "cafe\u0301"
    recordings = [
        Recording("1", "1.wav", class_id="caf\u00e9", background=["caf\u00e9", "owl"]),
        Recording("2", "2.wav", class_id="owl"),
        Recording("3", "3.wav"),
    ]
    spelt = load_data_module.labels_spelt_as(recordings, [nfd, "owl"])
    assert [r.class_id for r in spelt] == [nfd, "owl", None]
    assert spelt[0].background == [nfd, "owl"]


def test_a_label_in_another_unicode_form_of_a_class_from_another_dataset_is_not_warned_of(
    tmp_path, caplog
):
    """It becomes that class (`labels_spelt_as`): no warning that it is unlabelled."""
    from tests.helpers import write_dataset

    nfd = "cafe\u0301"
    other = tmp_path / "other.h5"
    params = SpectrogramParams()
    write_dataset(other, DatasetInfo(params, [nfd, "owl"], {nfd: nfd, "owl": "owl"}), [])
    recordings = [Recording("1", "1.wav", class_id="caf\u00e9"), Recording("2", "2.wav", "owl")]
    classes, _, spelt = load_data_module.class_table(recordings, other)
    assert classes == [nfd, "owl"] and "unlabelled" not in caplog.text
    assert [r.class_id for r in spelt] == [nfd, "owl"]


def test_when_every_recording_is_missing_the_error_names_them(tmp_path, capsys):
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    rows = [{"file": f"gone{n}.wav", "label": "ab"[n % 2]} for n in range(8)]
    labels = write_csv(tmp_path / "labels.csv", rows)
    for options in ([], ["--recipe", "modern"]):  # modern: the chunk length is chosen first
        assert load(wav_dir, ["--csv", labels], tmp_path / "o.h5", *options) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1
        assert "gone0.wav" in error and "(3 more)" in error
