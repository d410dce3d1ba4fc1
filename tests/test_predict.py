"""Prediction: chunks as in training, shared batches, run files from a tiny trained run folder."""

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

import predict.predict as predict_module
import preprocess.extract as extract_module
import preprocess.workers as workers_module
from predict import runfile
from predict.evaluate import main as evaluate_main
from predict.evaluate import read_truth, score
from predict.predict import PredictError, find_audio, load_run, main, predict_pieces
from predict.runfile import (
    AtomicWriter,
    RunEntry,
    read_run_file,
    remove_stale_parts,
    top_classes,
)
from preprocess.audio import AudioError, pcm16_mono_header, read_wav, read_wav_blocks
from preprocess.make_demo_dataset import SPECIES, make_demo_dataset
from preprocess.metadata import read_birdclef_xml_dir
from preprocess.params import SpectrogramParams
from preprocess.spectrogram import (
    chunk_slices,
    extract_chunks,
    log_spectrogram,
    stream_chunks,
    window_bounds,
    window_chunks,
)
from preprocess.workers import HANDOFF_PREFIX, MEMORY_FOLDER
from train.metrics import recording_scores

PARAMS = SpectrogramParams()


def song(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with loud tone bursts at 16 kHz, int16 scale: the filter keeps part of it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * PARAMS.sample_rate)) / PARAMS.sample_rate
    bursts = (np.sin(2 * np.pi * 0.7 * t) > 0.3) * np.sin(2 * np.pi * (2000 + 500 * t % 1) * t)
    return (200 * rng.standard_normal(t.size) + 8000 * bursts).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.01, 3.0, 9.9, 31.0])
@pytest.mark.parametrize("max_chunks", [1, 2, 100])
def test_chunk_slices_equal_the_training_chunks(seconds, max_chunks):
    samples = song(seconds)
    expected = extract_chunks(samples, PARAMS).chunks
    slices = list(chunk_slices(log_spectrogram(samples, PARAMS), PARAMS, max_chunks))
    assert all(len(piece) <= max_chunks for piece in slices)
    np.testing.assert_array_equal(np.concatenate(slices), expected)


def test_window_chunks_one_per_5s_window():
    log_spec = log_spectrogram(song(12.0), PARAMS)
    windows = list(window_chunks(log_spec, PARAMS, 5.0))
    assert len(windows) == 3  # 0-5, 5-10, 10-12 s
    assert all(w.shape[1:] == (PARAMS.n_bins, PARAMS.chunk_frames) for w in windows)


@pytest.mark.parametrize(
    "n_frames, expected",
    [
        (938, [(0, 312), (312, 625), (625, 938)]),  # round(937.5) == 938: no empty 4th window
        (1010, [(0, 312), (312, 625), (625, 938), (938, 1010)]),  # 1 s or more: its own
        (987, [(0, 312), (312, 625), (625, 987)]),  # under 1 s left: joins the window before
        (40, [(0, 40)]),  # shorter than a second: still one window
    ],
)
def test_window_bounds_leave_no_window_empty_or_under_a_second(n_frames, expected):
    assert window_bounds(n_frames, frames_per_window=312.5, shortest_last=62.5) == expected


def test_window_chunks_where_the_last_window_would_start_at_the_end():
    """15.024 s at 16 kHz: 938 frames, and round(3 * 312.5) = 938, which once gave an empty
    4th window and a ValueError that ended the whole prediction run."""
    log_spec = np.ones((PARAMS.n_bins, 938), np.float32)
    windows = list(window_chunks(log_spec, PARAMS, 5.0))
    assert len(windows) == 3


class MeanModel:
    """Stands in for a Keras model: softmax over 3 classes of simple chunk statistics."""

    output_shape = (None, 3)

    def __init__(self):
        self.batch_shapes = []

    def predict_on_batch(self, batch):
        self.batch_shapes.append(batch.shape)
        logits = np.stack(
            [batch.mean(axis=(1, 2, 3)), batch.std(axis=(1, 2, 3)), batch[:, 0, 0, 0]], 1
        )
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("overlap", [False, True])
def test_predict_pieces_batches_across_pieces_in_order(overlap):
    rng = np.random.default_rng(1)
    pieces = [(key, rng.normal(size=(n, 4, 5))) for key, n in enumerate([3, 1, 7, 2, 5])]
    model = MeanModel()
    results = list(predict_pieces(model, pieces, batch_size=4, overlap=overlap))
    assert [key for key, _ in results] == [0, 1, 2, 3, 4]
    assert set(model.batch_shapes) == {(4, 4, 5, 1)}  # one fixed shape, last one padded
    assert len(model.batch_shapes) == 5  # 18 chunks in batches of 4
    for (_, probs), (_, chunks) in zip(results, pieces, strict=True):
        np.testing.assert_allclose(
            probs, MeanModel().predict_on_batch(chunks[..., None]), rtol=1e-6
        )


def test_with_overlap_the_next_batch_fills_while_the_model_runs():
    """As with a GPU: the model's call on one batch waits here until the next batch's chunks
    have come in, which they can only do while it runs."""
    next_batch_came = threading.Event()

    class WaitingModel(MeanModel):
        def predict_on_batch(self, batch):
            if not self.batch_shapes:
                self.came_meanwhile = next_batch_came.wait(timeout=10)
            return super().predict_on_batch(batch)

    def pieces():
        for key in range(4):  # 2 chunks each: the first batch is full after piece 1
            if key == 3:
                next_batch_came.set()
            yield key, np.full((2, 4, 5), float(key))

    model = WaitingModel()
    results = list(predict_pieces(model, pieces(), batch_size=4, overlap=True))
    assert model.came_meanwhile and [key for key, _ in results] == [0, 1, 2, 3]


def predict_cli(*args):
    main([str(arg) for arg in args])


# ---- a tiny trained run folder -------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, recordings_per_species=1, test_per_species=1, seed=3)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((PARAMS.n_bins, PARAMS.chunk_frames, 1)),
            keras.layers.AveragePooling2D((20, 31)),
            keras.layers.Flatten(),
            keras.layers.Dense(len(SPECIES), activation="softmax"),
        ]
    )
    model.save(folder / "best_val_map.keras")
    classes = [s.class_id for s in SPECIES]
    (folder / "params.json").write_text(PARAMS.to_json())
    (folder / "classes.json").write_text(
        json.dumps({"classes": classes, "class_names": {s.class_id: s.vernacular for s in SPECIES}})
    )
    return folder


def direct_run_entries(run_dir, recordings, wav_dir, out_dir, top_k) -> list[RunEntry]:
    """The run file predict should write, computed the plain way: each recording's cached
    16 kHz wav through extract_chunks and the model at once, softmax averaged, top_k ranked."""
    import keras

    model = keras.saving.load_model(run_dir / "best_val_map.keras", compile=False)
    classes = json.loads((run_dir / "classes.json").read_text())["classes"]
    entries = []
    for recording in recordings:  # in XML order, as predict writes them
        name = predict_module.cache_name(wav_dir / recording.file)
        samples, _ = read_wav(out_dir / ".resampled" / "resampled" / f"{name}.wav")
        chunks = extract_chunks(samples, PARAMS).chunks
        chunk_probs = np.asarray(model.predict_on_batch(chunks[..., None]))
        probs = recording_scores(chunk_probs, np.zeros(len(chunks)))[1][0]  # the mean
        for rank, column in enumerate(top_classes(probs, top_k), 1):
            entries.append(RunEntry(recording.media_id, classes[column], probs[column], rank))
    return entries


def test_birdclef_test_folder_gives_a_valid_run_file_with_xml_media_ids(demo, run_dir, tmp_path):
    out = tmp_path / "run.csv"
    human = tmp_path / "people.csv"
    predict_cli(
        "--run",
        run_dir,
        "--xml-dir",
        demo / "TestSet" / "xml",
        "--out",
        out,
        "--human-csv",
        human,
        "--top-k",
        3,
    )
    entries = read_run_file(out)
    recordings, _ = read_birdclef_xml_dir(demo / "TestSet" / "xml")
    assert {e.media_id for e in entries} == {r.media_id for r in recordings}
    assert len(entries) == 3 * len(recordings)
    truth = read_truth(demo / "TestSet" / "ground_truth.csv")
    expected = direct_run_entries(run_dir, recordings, demo / "TestSet" / "wav", tmp_path, 3)
    assert [(e.media_id, e.class_id, e.rank) for e in entries] == [
        (e.media_id, e.class_id, e.rank) for e in expected
    ]
    assert [e.probability for e in entries] == pytest.approx(
        [e.probability for e in expected], abs=2e-6
    )
    # deterministic: the same MAP, exactly, as the direct computation's
    assert score(entries, truth)["map_foreground"] == score(expected, truth)["map_foreground"]
    rows = human.read_text().splitlines()
    assert rows[0].startswith("file,MediaId,class_id_1,name_1,probability_1")
    assert len(rows) == 1 + len(recordings)
    assert rows[1].startswith(str(demo / "TestSet" / "wav"))  # the file as given, not the cache
    # 44.1 kHz test wavs went through the resampler into the cache beside the run file
    assert len(list((tmp_path / ".resampled" / "resampled").glob("*.wav"))) == len(recordings)


@pytest.mark.skipif(shutil.which("sox") is None, reason="SoX makes the flac and stereo inputs")
def test_any_format_media_ids_from_file_names_and_unreadable_files_skipped(
    demo, run_dir, tmp_path, caplog, capsys
):
    audio = tmp_path / "my recordings"
    (audio / "sub").mkdir(parents=True)
    first = sorted((demo / "TestSet" / "wav").glob("*.wav"))[:2]
    subprocess.run(["sox", first[0], audio / "dawn chorus.flac"], check=True)
    subprocess.run(
        ["sox", first[1], "-r", "8000", "-c", "2", audio / "sub" / "8k stereo.wav"], check=True
    )
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    wavfile.write(
        audio / "ready.wav", 16000, (1000 * np.sin(np.arange(40000) / 5)).astype(np.int16)
    )
    wavfile.write(audio / "cut.wav", 16000, np.ones(40000, dtype=np.int16))
    (audio / "cut.wav").write_bytes((audio / "cut.wav").read_bytes()[:1000])  # truncated
    out = tmp_path / "out" / "run.csv"
    predict_cli("--run", run_dir, "--audio", audio, "--out", out, "--work-dir", tmp_path / "c")
    assert {e.media_id for e in read_run_file(out)} == {"dawn chorus", "8k stereo", "ready"}
    assert "2 file(s) skipped" in caplog.text
    assert "broken.wav: could not be resampled (sox FAIL" in caplog.text
    cache_name = re.compile(f"[0-9a-f]{{{predict_module.CACHE_NAME_LENGTH}}}")
    resampler_output = capsys.readouterr().err
    assert "FAILED " + str(audio / "broken.wav") in resampler_output
    assert not cache_name.search(caplog.text + resampler_output)  # files named, not cache names
    assert "cut.wav: truncated" in caplog.text


def test_soundscape_mode_ranks_each_window(demo, run_dir, tmp_path):
    wav = sorted((demo / "TestSet" / "wav").glob("*.wav"))[0]
    rate, samples = wavfile.read(wav)
    out = tmp_path / "soundscape.csv"
    predict_cli(
        "--run",
        run_dir,
        "--audio",
        wav,
        "--out",
        out,
        "--soundscape",
        "--top-k",
        2,
        "--work-dir",
        tmp_path / "cache",
    )
    lines = [line.split(";") for line in out.read_text().splitlines()]
    windows = int(np.ceil(len(samples) / rate / 5))
    assert len(lines) == 2 * windows
    assert lines[0][1] == "00:00:00-00:00:05"
    assert {line[0] for line in lines} == {wav.stem}


def test_clear_errors_for_missing_run_folder_model_and_audio(run_dir, tmp_path, capsys):
    with pytest.raises(PredictError, match="not found"):
        load_run(tmp_path / "nothing")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(run_dir / "params.json", incomplete)
    with pytest.raises(PredictError, match="classes.json, best_val_map.keras"):
        load_run(incomplete)
    (tmp_path / "never trained").mkdir()  # a training that failed before its first file
    with pytest.raises(PredictError, match="holds no training run: another folder, or a tra"):
        load_run(tmp_path / "never trained")
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # --run runs, for --run runs/demo
    (tmp_path / "runs" / "demo" / "config.json").write_text("{}")
    with pytest.raises(PredictError, match=r"it holds runs \(demo\): give one of them"):
        load_run(tmp_path / "runs")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        predict_cli("--run", run_dir, "--audio", empty, "--out", tmp_path / "r.csv")
    assert exit_info.value.code == 2
    assert "error: no audio to predict" in capsys.readouterr().err
    assert find_audio([empty]) == ([], [])


def test_audio_in_linked_folders_is_found_as_training_finds_it(tmp_path, caplog):
    """A test folder may gather recordings by links to folders (as a training folder may):
    they are walked, once each; hidden files and folders, folders named like audio and files
    of other types are not inputs, and are named in the log."""
    elsewhere, folder = tmp_path / "elsewhere", tmp_path / "test"
    (elsewhere / "site").mkdir(parents=True)
    wavfile.write(elsewhere / "site" / "b.wav", 16000, np.zeros(1600, np.int16))
    (folder / ".hidden").mkdir(parents=True)
    (folder / "dir.wav").mkdir()
    for wav in (folder / "a.wav", folder / ".hidden" / "c.wav", folder / ".d.wav"):
        wavfile.write(wav, 16000, np.zeros(1600, np.int16))
    (folder / "site").symlink_to(elsewhere / "site")
    (folder / "again").symlink_to(elsewhere / "site")  # the same folder twice: walked once
    (folder / "loop").symlink_to(folder)
    (folder / "notes.txt").write_text("my notes")
    (folder / "memo.m4a").write_bytes(b"AAC from a phone")
    caplog.set_level(logging.INFO)
    found = {item.media_id: item.path for item in find_audio([folder])[0]}
    assert found == {"a": folder / "a.wav", "b": folder / "again" / "b.wav"}
    assert "2 hidden audio file(s) not read" in caplog.text and ".hidden/c.wav" in caplog.text
    assert "1 file(s) not named like audio" in caplog.text and "notes.txt" in caplog.text
    assert "1 audio file(s) not read, a format neither SoX nor libsndfile reads" in caplog.text
    assert "memo.m4a" in caplog.text


def test_files_of_one_name_in_two_folders_are_told_apart_by_path(tmp_path):
    """As training names them (Speech Commands: yes/0a7c.wav, no/0a7c.wav). A file whose
    MediaId an earlier one has (the same path in two folders given, x.wav beside x.flac) is
    skipped, named, and the rest predicted."""
    for name in ("yes/0a7c.wav", "no/0a7c.wav", "b.wav"):
        (tmp_path / "test" / name).parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(tmp_path / "test" / name, 16000, np.zeros(1600, np.int16))
    items, skipped = find_audio([tmp_path / "test"])
    assert sorted(item.media_id for item in items) == ["b", "no/0a7c", "yes/0a7c"]
    assert skipped == []
    shutil.copytree(tmp_path / "test", tmp_path / "again")
    items, skipped = find_audio([tmp_path / "test", tmp_path / "again"])
    assert [item.path.parent.name for item in items] == ["test", "no", "yes"]
    assert len(skipped) == 3 and all("again" in message for message in skipped)
    shutil.copy(tmp_path / "test" / "b.wav", tmp_path / "test" / "b.flac")
    items, skipped = find_audio([tmp_path / "test"])
    assert items[0].media_id == "b"
    assert skipped == [f"{tmp_path / 'test' / 'b.wav'}: MediaId 'b' is "
                       f"{tmp_path / 'test' / 'b.flac'}'s; rename it"]  # fmt: skip
    # the file skipped changes no other's MediaId: birds/x.flac stays x, not birds/x
    (tmp_path / "other" / "birds").mkdir(parents=True)
    for name in ("x.wav", "x.flac"):
        shutil.copy(tmp_path / "test" / "b.wav", tmp_path / "other" / "birds" / name)
    items, _ = find_audio([tmp_path / "other"])
    assert [(item.media_id, item.path.name) for item in items] == [("x", "x.flac")]


def test_when_nothing_can_be_read_the_error_names_every_kind_of_failure(run_dir, tmp_path, capsys):
    """A file that cannot be resampled and one of digital silence: both named, where the
    resampling failures were once left out of the message (or left it empty)."""
    for folder in ("only broken", "both"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "broken.wav").write_text("not audio")
    wavfile.write(tmp_path / "both" / "silent.wav", 16000, np.zeros(16000, np.int16))
    for folder, names in (("only broken", ["broken.wav"]), ("both", ["broken.wav", "silent.wav"])):
        with pytest.raises(SystemExit):
            predict_cli("--run", run_dir, "--audio", tmp_path / folder, "--out", tmp_path / "r.csv")
        error = capsys.readouterr().err
        line = next(line for line in error.splitlines() if "no recording could be read" in line)
        assert all(name in line for name in names), line


def test_wav_blocks_are_read_wav_in_pieces(tmp_path):
    mono, stereo = tmp_path / "mono.wav", tmp_path / "stereo.wav"
    samples = (song(3.0) + 0.5).astype(np.int16)
    wavfile.write(mono, 16000, samples)
    wavfile.write(stereo, 16000, np.stack([samples, samples], axis=1))
    assert pcm16_mono_header(mono) == (16000, samples.size)
    blocks = list(read_wav_blocks(mono, block_samples=10_000))
    assert [len(block) for block in blocks] == [10_000] * 4 + [8_000]
    np.testing.assert_array_equal(np.concatenate(blocks), read_wav(mono)[0])
    with pytest.raises(AudioError, match="stereo.wav: 2 channel"):
        pcm16_mono_header(stereo)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(mono.read_bytes()[:-2])  # its last sample missing
    with pytest.raises(AudioError, match="cut.wav: truncated"):
        next(read_wav_blocks(cut, block_samples=10_000))  # before any block is used


def test_long_recordings_are_streamed_to_the_same_run_file(run_dir, tmp_path, monkeypatch, caplog):
    """Over STREAM_SECONDS (lowered to 60 s here) a wav is streamed: same chunks, same batches,
    the same run file, and a truncated one is skipped with the same message."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for name, seconds in [("long", 70), ("short", 4), ("cut", 70)]:
        wavfile.write(audio / f"{name}.wav", 16000, song(seconds, seed=seconds).astype(np.int16))
    cut = audio / "cut.wav"
    cut.write_bytes(cut.read_bytes()[: 16000 * 2 * 50])  # 50 of 70 s left
    whole, streamed = tmp_path / "whole.csv", tmp_path / "streamed.csv"
    one_process = ("--batch-size", 4, "--workers", 1)  # STREAM_SECONDS is lowered here only
    predict_cli("--run", run_dir, "--audio", audio, "--out", whole, *one_process)
    assert "cut.wav: truncated" in caplog.text
    caplog.clear()

    streamed_files = []

    def stream_chunks_spy(sample_blocks, *args, **kwargs):
        streamed_files.append(sample_blocks)
        return stream_chunks(sample_blocks, *args, **kwargs)

    monkeypatch.setattr(extract_module, "STREAM_SECONDS", 60.0)
    monkeypatch.setattr(extract_module, "stream_chunks", stream_chunks_spy)
    predict_cli("--run", run_dir, "--audio", audio, "--out", streamed, *one_process)
    assert len(streamed_files) == 2  # long and cut
    assert "cut.wav: truncated" in caplog.text
    assert {e.media_id for e in read_run_file(streamed)} == {"long", "short"}
    assert streamed.read_text() == whole.read_text()


def test_extraction_workers_beside_a_gpu_model_or_as_asked():
    cores = os.cpu_count() or 1
    assert predict_module.extraction_workers(None, model_on_gpu=False) == 1  # in turns
    beside_a_gpu = cores - 1 if cores > 2 else 1
    assert predict_module.extraction_workers(None, model_on_gpu=True) == beside_a_gpu
    assert predict_module.extraction_workers(2, model_on_gpu=True) == 1
    assert predict_module.extraction_workers(6, model_on_gpu=False) == 5


@pytest.mark.parametrize("soundscape", [False, True])
@pytest.mark.parametrize("tasks_per_worker", [4, 1])  # 1 recording a task, or up to 3
def test_worker_processes_extract_the_same_run_file(
    run_dir, tmp_path, monkeypatch, caplog, soundscape, tasks_per_worker
):
    """--workers 3 writes what --workers 1 writes, byte for byte, skips the same files with the
    same messages, and extracts a recording over WORKER_MAX_SECONDS (lowered to 20 s here) in
    this process, the others in the workers, one or a few a task (unreadable and silent files
    among them)."""
    monkeypatch.setattr(workers_module, "TASKS_PER_WORKER", tasks_per_worker)
    audio = tmp_path / "audio"
    audio.mkdir()
    for index, seconds in enumerate([4, 12, 25, 1, 7, 9, 3, 0.01]):
        wavfile.write(audio / f"r{index}.wav", 16000, song(seconds, seed=index).astype(np.int16))
    (audio / "r1.wav").write_bytes((audio / "r1.wav").read_bytes()[:20000])  # truncated
    (audio / "r4.wav").write_bytes((audio / "r4.wav").read_bytes()[:44])  # its header only
    wavfile.write(audio / "r8.wav", 16000, np.zeros(5 * 16000, np.int16))  # digital silence
    mode = ("--soundscape",) * soundscape
    folders_before = set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}{os.getpid()}-*"))  # others' own
    runs = {}
    for workers in (1, 3):
        caplog.clear()
        extracted_here = []

        def recording_chunks_spy(path, *args, extracted_here=extracted_here, **kwargs):
            extracted_here.append(Path(path).name)
            return extract_module.recording_chunks(path, *args, **kwargs)

        monkeypatch.setattr(predict_module, "recording_chunks", recording_chunks_spy)
        monkeypatch.setattr(predict_module, "WORKER_MAX_SECONDS", 20.0)
        out = tmp_path / f"{workers}.csv"
        predict_cli("--run", run_dir, "--audio", audio, "--out", out, "--workers", workers, *mode)
        skips = [line.strip() for line in caplog.text.splitlines() if str(audio) in line]
        runs[workers] = out.read_text(), skips, extracted_here
    (run_file, skips, extracted_here), in_workers = runs[1], runs[3]
    assert in_workers[:2] == (run_file, skips)
    assert [line.split(": ")[0] for line in skips] == [
        str(audio / f"r{index}.wav") for index in (1, 4, 8)
    ]
    assert "silent" in skips[-1]
    ranked = {line.split(";")[0] for line in run_file.splitlines()}
    assert ranked == {"r0", "r2", "r3", "r5", "r6", "r7"}  # r7: 10 ms, shorter than a window
    assert extracted_here == [f"r{index}.wav" for index in range(9)]
    assert in_workers[2] == ["r2.wav"]  # 25 s: in this process; the others in the workers
    folders = set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}{os.getpid()}-*"))
    assert folders <= folders_before  # handed over, gone


# ---- hostile input -------------------------------------------------------------------------


def tree(root) -> dict[str, bytes | str]:
    """Every file and link under root: relative path -> content (a link: where it points)."""
    return {
        str(path.relative_to(root)): str(path.readlink())
        if path.is_symlink()
        else path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


def write_xml(path, media_id: str, file_name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<Audio><MediaId>{media_id}</MediaId><FileName>{file_name}</FileName></Audio>")


def test_xml_items_take_the_file_named_then_the_one_with_its_stem(tmp_path, caplog):
    """x.wav beside x.flac (a resampled copy beside its source) is no error: FileName picks
    one; a stem alone picks only where it is the only file with it; audio no XML names is
    named in a warning."""
    audio = tmp_path / "wav"
    names = ("x.wav", "x.flac", "y.wav", "sub/z.wav", "w.wav", "w.flac", "a/v.wav", "b/v.wav")
    for name in (*names, "sub/u.ogg"):
        tone(audio / name)
    named = [("1", "x.flac"), ("2", "y.mp3"), ("3", "z.wav"), ("4", "w.mp3"), ("5", "b\\v.wav")]
    for media_id, file_name in named:
        write_xml(tmp_path / "xml" / f"{media_id}.xml", media_id, file_name)
    items, skipped = predict_module.xml_items(tmp_path / "xml", audio)
    assert [(item.media_id, item.path.relative_to(audio).as_posix()) for item in items] == [
        ("1", "x.flac"),
        ("2", "y.wav"),
        ("3", "sub/z.wav"),
        ("5", "b/v.wav"),  # a Windows path in the XML names it too
    ]
    assert len(skipped) == 1 and skipped[0].startswith("w.mp3 (MediaId 4): which one?")
    assert "2 audio files in" in caplog.text  # a/v.wav: v.wav of another folder than b/v.wav
    assert "not predicted: a/v.wav, sub/u.ogg" in caplog.text


@pytest.mark.parametrize("media_id", ["../../../v/target", "/ABSOLUTE/v/target", "a\\..\\b"])
def test_a_media_id_never_becomes_a_path(run_dir, tmp_path, media_id):
    """The issue's exploit: an 8 kHz a.wav (so it goes through the resampling cache) and an
    XML whose MediaId climbs out of the cache. Nothing outside --work-dir and --out changes."""
    media_id = media_id.replace("/ABSOLUTE", str(tmp_path))
    victim = tmp_path / "v" / "target.wav"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    (tmp_path / "W").mkdir()
    wavfile.write(
        tmp_path / "W" / "a.wav", 8000, (1000 * np.sin(np.arange(24000) / 3)).astype(np.int16)
    )
    write_xml(tmp_path / "X" / "a.xml", media_id, "a.wav")
    before = tree(tmp_path)
    work, out = tmp_path / "deep" / "C", tmp_path / "p" / "p.csv"
    predict_cli(
        "--run", run_dir, "--xml-dir", tmp_path / "X", "--audio", tmp_path / "W",
        "--out", out, "--work-dir", work,
    )  # fmt: skip
    after = {
        name: content
        for name, content in tree(tmp_path).items()
        if not name.startswith(("deep/C/", "p/"))
    }
    assert after == before
    assert [e.media_id for e in read_run_file(out)][0] == media_id
    cached = [p.name for p in work.rglob("*")]
    assert cached and all(".." not in name and "target" not in name for name in cached)


def tone(path, rate: int = 16000, seconds: float = 3.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds))
    wavfile.write(path, rate, (3000 * np.sin(t / 4) * (np.sin(t / rate) > 0)).astype(np.int16))


def test_the_resampling_cache_names_a_replaced_file_anew(tmp_path):
    """The same file keeps its cached wav; another recording put in its place, even with an
    older time (as `cp -p` or `tar -x` leave it), gets a new one, never the old audio."""
    path = tmp_path / "a.wav"
    tone(path, rate=8000)
    name = predict_module.cache_name(path)
    assert predict_module.cache_name(path) == name
    earlier = path.stat().st_mtime_ns - 10**9
    tone(path, rate=8000, seconds=4.0)
    os.utime(path, ns=(earlier, earlier))
    assert predict_module.cache_name(path) != name


def cli_error(capsys, *args) -> str:
    """Run predict expecting the bad-input exit: status 2 and one `error:` line; its text."""
    with pytest.raises(SystemExit) as exit_info:
        predict_cli(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_outputs_that_are_inputs_or_other_files_are_refused(run_dir, tmp_path, capsys):
    tone(tmp_path / "clips" / "x.wav")
    wav = (tmp_path / "clips" / "x.wav").read_bytes()
    classes = (run_dir / "classes.json").read_text()
    clips = ("--run", run_dir, "--audio", tmp_path / "clips")
    assert "--out" in cli_error(capsys, *clips, "--out", tmp_path / "clips" / "x.wav")
    assert "also an input" in cli_error(capsys, *clips, "--out", run_dir / "classes.json")
    (tmp_path / "notes.csv").write_text("species seen today\n")
    assert "not a run file" in cli_error(capsys, *clips, "--out", tmp_path / "notes.csv")
    out = tmp_path / "run.csv"
    assert "also an input" in cli_error(capsys, *clips, "--out", out, "--human-csv", out)
    assert "is a folder" in cli_error(capsys, *clips, "--out", tmp_path)
    assert (tmp_path / "clips" / "x.wav").read_bytes() == wav
    assert (run_dir / "classes.json").read_text() == classes
    assert not out.exists()


def test_out_inside_the_audio_folder_twice(run_dir, tmp_path):
    """Predict's cache and outputs in the audio folder are not inputs of the next run; a
    killed run's hidden .part files are removed; the files get the umask's mode."""
    audio = tmp_path / "audio"
    tone(audio / "wide.wav", rate=8000)  # resampled into the cache inside the folder
    tone(audio / "ready.wav")
    out, human = audio / "run.csv", audio / "people.csv"
    stale = audio / ".run.csv.k1ll3d_x.part"
    stale.write_text("a killed run's half file")
    old_umask = os.umask(0o027)
    try:
        predict_cli("--run", run_dir, "--audio", audio, "--out", out, "--human-csv", human)
        first = out.read_text()
        predict_cli("--run", run_dir, "--audio", audio, "--out", out, "--human-csv", human)
    finally:
        os.umask(old_umask)
    assert out.read_text() == first
    assert {e.media_id for e in read_run_file(out)} == {"wide", "ready"}
    assert len(human.read_text().splitlines()) == 3
    assert not stale.exists() and not list(audio.glob(".*.part"))
    assert (out.stat().st_mode & 0o777, human.stat().st_mode & 0o777) == (0o640, 0o640)


def test_a_run_whose_training_has_not_ended_is_refused(run_dir, tmp_path, capsys):
    """Still training, or killed before it chose its model: its checkpoints so far must not
    pass for the run's answer; a checkpoint named with --model-file may be used."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "config.json").write_text('{"recipe": "modern", "inference_model": "final"}')
    audio = tmp_path / "audio"
    tone(audio / "song.wav")
    out = tmp_path / "run.csv"
    for done in (False, True):  # killed before training_done.json, or before inference.json
        if done:
            (run / "training_done.json").write_text('{"epochs": 3, "stopped_early": false}')
        error = cli_error(capsys, "--run", run, "--audio", audio, "--out", out)
        assert f"{run}: its training has not ended" in error
    predict_cli("--run", run, "--audio", audio, "--out", out, "--model-file", "best_val_map.keras")
    assert {e.media_id for e in read_run_file(out)} == {"song"}


def test_the_csv_for_people_never_holds_a_formula(run_dir, tmp_path):
    audio = tmp_path / "audio"
    for name in ("=HYPERLINK(1)", "@SUM(1)", "plain"):
        tone(audio / f"{name}.wav")
    human = tmp_path / "people.csv"
    predict_cli("--run", run_dir, "--audio", audio, "--out", tmp_path / "run.csv",
                "--human-csv", human)  # fmt: skip
    with open(human, newline="", encoding="utf-8") as file:
        media_ids = sorted(row["MediaId"] for row in csv.DictReader(file))
    assert media_ids == ["'=HYPERLINK(1)", "'@SUM(1)", "plain"]
    assert {e.media_id for e in read_run_file(tmp_path / "run.csv")} == {
        "=HYPERLINK(1)", "@SUM(1)", "plain"}  # fmt: skip


def test_a_cell_that_a_spreadsheet_would_read_as_a_formula_is_text():
    for text in ("=1+1", "+1", "-1", "@SUM(1)", "\t=1", "\r=1"):
        assert predict_module.as_text_cell(text) == f"'{text}"
    assert predict_module.as_text_cell("song 1.wav") == "song 1.wav"


def test_recordings_that_hold_no_sound_are_skipped_by_name(run_dir, tmp_path, caplog):
    """Digital silence is skipped; a click shorter than one spectrogram window is ranked (a
    test recording left out of the run file scores nothing)."""
    audio = tmp_path / "audio"
    tone(audio / "song.wav")
    wavfile.write(audio / "zeros.wav", 16000, np.zeros(16000 * 6, np.int16))
    wavfile.write(audio / "click.wav", 16000, np.full(20, 3000, np.int16))  # 1.25 ms
    out = tmp_path / "run.csv"
    predict_cli("--run", run_dir, "--audio", audio, "--out", out)
    assert {e.media_id for e in read_run_file(out)} == {"song", "click"}
    assert "zeros.wav: silent: every sample is zero" in caplog.text
    assert "click.wav" not in caplog.text


def test_media_ids_a_run_file_cannot_hold_are_skipped_by_name(run_dir, tmp_path, caplog):
    audio = tmp_path / "audio"
    for name in ("a;b", "new\nline", "tab\there", " padded", "fine name"):
        tone(audio / f"{name}.wav")
    out = tmp_path / "run.csv"
    predict_cli("--run", run_dir, "--audio", audio, "--out", out)
    assert {e.media_id for e in read_run_file(out)} == {"fine name"}
    assert "4 file(s) skipped" in caplog.text
    assert "MediaId 'a;b' holds ';'" in caplog.text
    assert "MediaId 'new\\nline' holds a line break" in caplog.text
    truth = tmp_path / "truth.csv"
    truth.write_text(f"fine name;{SPECIES[0].class_id};\n")
    evaluate_main(["--run-file", str(out), "--truth", str(truth)])


@pytest.mark.parametrize(
    "option",
    [
        ("--batch-size", 0),
        ("--batch-size", -3),
        ("--batch-size", 10**9),
        ("--workers", -2),
        ("--workers", 0),
        ("--top-k", 0),
        ("--top-k", 101),
    ],
)
def test_bad_numbers_are_one_argparse_error(run_dir, tmp_path, capsys, option):
    tone(tmp_path / "a.wav")
    err = cli_error(
        capsys, "--run", run_dir, "--audio", tmp_path, "--out", tmp_path / "r.csv", *option
    )
    assert f"argument {option[0]}: must be" in err


def test_bad_run_folders_and_outputs_are_one_error_line(run_dir, tmp_path, capsys):
    tone(tmp_path / "audio" / "a.wav")
    base = ("--audio", tmp_path / "audio", "--out", tmp_path / "r.csv")
    err = cli_error(capsys, "--run", run_dir, *base, "--model-file", "missing.keras")
    assert "has no missing.keras" in err
    elsewhere = str(run_dir / "best_val_map.keras")  # a path, if to a model of this very run
    err = cli_error(capsys, "--run", run_dir, *base, "--model-file", elsewhere)
    assert "give the name of a model in the run folder" in err
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "best_val_map.keras").write_bytes(b"PK\x03\x04 not really a zip")
    err = cli_error(capsys, "--run", damaged, *base)
    assert "best_val_map.keras: damaged model file" in err
    (damaged / "best_val_map.keras").unlink()
    shutil.copy(run_dir / "best_val_map.keras", damaged)
    (damaged / "classes.json").write_text('{"classes": "abc"}')
    err = cli_error(capsys, "--run", damaged, *base)
    assert f"{damaged / 'classes.json'}: not a run folder's classes.json" in err
    (tmp_path / "a file").write_text("")
    out = tmp_path / "a file" / "r.csv"
    err = cli_error(capsys, "--run", run_dir, "--audio", tmp_path / "audio", "--out", out)
    assert err.startswith("error: ") and "a file: " in err
    with pytest.raises(SystemExit):
        predict_cli("--run", run_dir, "--audio", tmp_path / "audio", "--out", out, "--verbose")
    assert "Traceback" in capsys.readouterr().err


def test_a_read_only_output_folder_is_one_error_line(run_dir, tmp_path, capsys):
    tone(tmp_path / "audio" / "a.wav")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes into read-only folders, not into sysfs
        locked = Path("/sys")
        if not locked.is_dir():
            pytest.skip("running as root without /sys: no folder root cannot write")
    err = cli_error(
        capsys, "--run", run_dir, "--audio", tmp_path / "audio", "--out", locked / "r.csv"
    )
    assert err == f"error: {locked / 'r.csv'}: Permission denied\n"


def test_an_xml_with_a_dtd_entity_is_skipped_by_name(run_dir, tmp_path, caplog):
    tone(tmp_path / "wav" / "a.wav")
    tone(tmp_path / "wav" / "b.wav")
    write_xml(tmp_path / "xml" / "a.xml", "1", "a.wav")
    (tmp_path / "xml" / "b.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE Audio [<!ENTITY id "2">]>'
        "<Audio><MediaId>&id;</MediaId><FileName>b.wav</FileName></Audio>"
    )
    out = tmp_path / "run.csv"
    predict_cli("--run", run_dir, "--xml-dir", tmp_path / "xml", "--out", out)
    assert {e.media_id for e in read_run_file(out)} == {"1"}
    assert "b.xml: malformed XML (entities are disabled)" in caplog.text


def test_a_bug_in_extraction_is_not_a_skipped_file(run_dir, tmp_path, monkeypatch, capsys):
    tone(tmp_path / "a.wav")

    def broken(*args, **kwargs):
        raise ValueError("a bug, not bad audio")

    monkeypatch.setattr(predict_module, "recording_chunks", broken)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli("--run", run_dir, "--audio", tmp_path / "a.wav", "--out", tmp_path / "r.csv")
    assert exit_info.value.code == 1  # a bug, said so, not bad input
    assert "unexpected ValueError: a bug, not bad audio" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_a_work_dir_holding_the_audio_is_refused(run_dir, tmp_path, capsys):
    tone(tmp_path / "clips" / "a.wav", rate=8000)
    for work in (tmp_path / "clips", tmp_path):
        err = cli_error(
            capsys, "--run", run_dir, "--audio", tmp_path / "clips", "--out", tmp_path / "r.csv",
            "--work-dir", work,
        )  # fmt: skip
        assert "give the cache a folder of its own" in err


def test_ctrl_c_leaves_no_run_file(run_dir, tmp_path, monkeypatch, capsys):
    tone(tmp_path / "a.wav")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "recording_chunks", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli("--run", run_dir, "--audio", tmp_path / "a.wav", "--out", tmp_path / "r.csv")
    assert exit_info.value.code == 130
    assert "error: interrupted" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_embeddings_never_replace_a_model_or_another_zip(run_dir, tmp_path, capsys):
    tone(tmp_path / "audio" / "a.wav")
    base = ("--run", run_dir, "--audio", tmp_path / "audio", "--out", tmp_path / "r.csv")
    model = run_dir / "best_val_map.keras"
    before = model.read_bytes()
    assert "also an input" in cli_error(capsys, *base, "--embeddings", model)
    other = tmp_path / "model_copy.npz"
    other.write_bytes(before)  # a zip, but not of embeddings
    assert "not an embeddings file" in cli_error(capsys, *base, "--embeddings", other)
    assert model.read_bytes() == before == other.read_bytes()
    embeddings = tmp_path / "e.npz"
    old_umask = os.umask(0o022)
    try:
        for _ in range(2):  # its own kind is replaced
            predict_cli(*base, "--embeddings", embeddings)
    finally:
        os.umask(old_umask)
    assert embeddings.stat().st_mode & 0o777 == 0o644
    assert len(np.load(embeddings)["media_id"]) > 0


def test_the_default_cache_is_made_beside_an_out_link_not_beside_its_target(run_dir, tmp_path):
    """--out a link to a file elsewhere: the run file replaces the link, and the resampling
    cache goes into the folder named, never beside the file the link leads to."""
    tone(tmp_path / "audio" / "a.wav", rate=8000)  # resampled: the cache is made
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "empty").write_text("")
    out = tmp_path / "out" / "c" / "c.csv"
    out.parent.mkdir(parents=True)
    out.symlink_to(victim / "empty")
    predict_cli("--run", run_dir, "--audio", tmp_path / "audio", "--out", out)
    assert [p.name for p in victim.iterdir()] == ["empty"]
    assert (victim / "empty").read_text() == ""
    assert list((out.parent / ".resampled" / "resampled").glob("*.wav"))
    assert read_run_file(out)


def test_stale_part_names_that_are_not_regular_files_are_left_alone(tmp_path):
    """A pipe named like a killed run's .part file made the next run wait forever (opening
    it waits for a writer); a link so named lost the link. Both are left alone, unopened."""
    out = tmp_path / "o.csv"
    stale = tmp_path / ".o.csv.k1ll3d_x.part"
    stale.write_text("a killed run's half file")
    pipe = tmp_path / ".o.csv.abcdefgh.part"
    os.mkfifo(pipe)
    (tmp_path / "kept.txt").write_text("kept")
    link = tmp_path / ".o.csv.l1nk3d_x.part"
    link.symlink_to(tmp_path / "kept.txt")
    removed: list = []
    worker = threading.Thread(target=lambda: removed.append(remove_stale_parts(out)), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # blocked opening the pipe: a writer lets it go, then fail
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(20)
        pytest.fail("remove_stale_parts waited on a pipe")
    assert removed == [[stale]]
    assert pipe.exists() and link.is_symlink() and (tmp_path / "kept.txt").read_text() == "kept"


def test_a_writer_clearing_up_never_removes_another_writers_new_file(tmp_path, monkeypatch):
    """Two writers of one output: the second one's clean-up ran between the first one's
    creating its temporary file and locking it, removed it, and the first one's whole output
    was lost at the rename."""
    out = tmp_path / "o.csv"
    lock = runfile.fcntl.flock

    def flock_after_another_writers_clean_up(handle, operation):
        monkeypatch.setattr(runfile.fcntl, "flock", lock)
        assert remove_stale_parts(out) == []  # as another writer, at the worst moment
        lock(handle, operation)

    monkeypatch.setattr(runfile.fcntl, "flock", flock_after_another_writers_clean_up)
    with AtomicWriter(out) as writer:
        writer.file.write("the first writer's\n")
    assert out.read_text() == "the first writer's\n"
    assert [path.name for path in tmp_path.iterdir()] == ["o.csv"]


def test_a_temporary_file_that_cannot_take_its_name_is_removed(tmp_path, monkeypatch):
    def no_rename(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(runfile.os, "rename", no_rename)
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "o.csv"))):
        AtomicWriter(tmp_path / "o.csv")
    assert list(tmp_path.iterdir()) == []


def test_audio_entries_that_are_not_regular_files_are_named(run_dir, tmp_path, caplog, capsys):
    """A pipe, a broken link and a link to a device named like audio were dropped without a
    word; given directly, a pipe was 'no such file'."""
    audio = tmp_path / "audio"
    tone(audio / "a.wav")
    os.mkfifo(audio / "pipe.wav")
    (audio / "broken.wav").symlink_to(tmp_path / "nowhere.wav")
    (audio / "zero.wav").symlink_to("/dev/zero")
    out = tmp_path / "r.csv"
    predict_cli("--run", run_dir, "--audio", audio, "--out", out)
    assert {e.media_id for e in read_run_file(out)} == {"a"}
    assert "3 file(s) skipped" in caplog.text
    for name in ("pipe.wav", "broken.wav", "zero.wav"):
        assert f"{audio / name}: not a regular file" in caplog.text
    capsys.readouterr()
    err = cli_error(capsys, "--run", run_dir, "--audio", audio / "pipe.wav", "--out", out)
    assert err == f"error: {audio / 'pipe.wav'}: {predict_module.NOT_REGULAR}\n"
    write_xml(tmp_path / "xml" / "1.xml", "1", "a.wav")
    write_xml(tmp_path / "xml" / "2.xml", "2", "pipe.wav")
    items, skipped = predict_module.xml_items(tmp_path / "xml", audio)
    assert [item.media_id for item in items] == ["1"]
    assert skipped == [f"{audio / 'pipe.wav'} (MediaId 2): {predict_module.NOT_REGULAR}"]
