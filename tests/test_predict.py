"""Prediction: chunks as in training, shared batches, run files from a tiny trained run folder."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from scipy.io import wavfile

import preprocess.extract as extract_module
from predict.evaluate import read_truth, score
from predict.predict import PredictError, find_audio, load_run, main, predict_pieces
from predict.runfile import read_run_file
from preprocess.audio import AudioError, pcm16_mono_header, read_wav, read_wav_blocks
from preprocess.make_demo_dataset import SPECIES, make_demo_dataset
from preprocess.metadata import read_birdclef_xml_dir
from preprocess.params import SpectrogramParams
from preprocess.spectrogram import (
    chunk_slices,
    extract_chunks,
    log_spectrogram,
    stream_chunks,
    window_chunks,
)

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


def test_predict_pieces_batches_across_pieces_in_order():
    rng = np.random.default_rng(1)
    pieces = [(key, rng.normal(size=(n, 4, 5))) for key, n in enumerate([3, 1, 7, 2, 5])]
    model = MeanModel()
    results = list(predict_pieces(model, pieces, batch_size=4))
    assert [key for key, _ in results] == [0, 1, 2, 3, 4]
    assert set(model.batch_shapes) == {(4, 4, 5, 1)}  # one fixed shape, last one padded
    assert len(model.batch_shapes) == 5  # 18 chunks in batches of 4
    for (_, probs), (_, chunks) in zip(results, pieces, strict=True):
        np.testing.assert_allclose(
            probs, MeanModel().predict_on_batch(chunks[..., None]), rtol=1e-6
        )


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
    results = score(entries, read_truth(demo / "TestSet" / "ground_truth.csv"))
    assert 0.0 < results["map_foreground"] <= 1.0
    rows = human.read_text().splitlines()
    assert rows[0].startswith("file,MediaId,class_id_1,name_1,probability_1")
    assert len(rows) == 1 + len(recordings)
    assert rows[1].startswith(str(demo / "TestSet" / "wav"))  # the file as given, not the cache
    # 44.1 kHz test wavs went through the resampler into the cache beside the run file
    assert len(list((tmp_path / ".resampled" / "resampled").glob("*.wav"))) == len(recordings)


@pytest.mark.skipif(shutil.which("sox") is None, reason="SoX makes the flac and stereo inputs")
def test_any_format_media_ids_from_file_names_and_unreadable_files_skipped(
    demo, run_dir, tmp_path, caplog
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
    assert "broken.wav: could not be resampled" in caplog.text
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


def test_clear_errors_for_missing_run_folder_model_and_audio(run_dir, tmp_path):
    with pytest.raises(PredictError, match="not found"):
        load_run(tmp_path / "nothing")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(run_dir / "params.json", incomplete)
    with pytest.raises(PredictError, match="classes.json, best_val_map.keras"):
        load_run(incomplete)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no audio to predict"):
        predict_cli("--run", run_dir, "--audio", empty, "--out", tmp_path / "r.csv")
    assert find_audio([empty]) == []


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
    predict_cli("--run", run_dir, "--audio", audio, "--out", whole, "--batch-size", 4)
    assert "cut.wav: truncated" in caplog.text
    caplog.clear()

    streamed_files = []

    def stream_chunks_spy(sample_blocks, *args, **kwargs):
        streamed_files.append(sample_blocks)
        return stream_chunks(sample_blocks, *args, **kwargs)

    monkeypatch.setattr(extract_module, "STREAM_SECONDS", 60.0)
    monkeypatch.setattr(extract_module, "stream_chunks", stream_chunks_spy)
    predict_cli("--run", run_dir, "--audio", audio, "--out", streamed, "--batch-size", 4)
    assert len(streamed_files) == 2  # long and cut
    assert "cut.wav: truncated" in caplog.text
    assert {e.media_id for e in read_run_file(streamed)} == {"long", "short"}
    assert streamed.read_text() == whole.read_text()
