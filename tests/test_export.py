"""train/export_model.py: the exported SavedModel, reloaded with TensorFlow alone, gives the
Keras model's outputs on chunks of real bird song; the run's parameters travel with it."""

import importlib.util
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from preprocess.audio import read_wav, to_sample_rate
from preprocess.params import SpectrogramParams
from preprocess.spectrogram import extract_chunks
from tests.helpers import folder_contents
from train.export_model import main

PARAMS = SpectrogramParams()
CLASSES = ["aaa", "bbb", "ccc"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a small functional model (batch norm: inference mode must be kept)."""
    import keras

    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(1)
    inputs = keras.Input((PARAMS.n_bins, PARAMS.chunk_frames, 1))
    x = keras.layers.Conv2D(2, 5, strides=4, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(6, activation="relu")(keras.layers.GlobalAveragePooling2D()(x))
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    batch_norm = model.layers[2]
    batch_norm.set_weights([w + 0.5 for w in batch_norm.get_weights()])  # not the identity
    model.save(folder / "best_val_map.keras")
    (folder / "params.json").write_text(PARAMS.to_json())
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "class_names": {}}))
    (folder / "thresholds.json").write_text(json.dumps({"classes": {}}))
    return folder


def real_chunks(shared_data) -> np.ndarray:
    """Training chunks (n, n_bins, chunk_frames, 1) of real great tit songs at 16 kHz."""
    chunks = []
    for wav in sorted((shared_data / "birds" / "great_tit").glob("*.wav"))[:3]:
        samples, rate = read_wav(wav)
        samples = to_sample_rate(samples, rate, PARAMS.sample_rate)
        chunks.append(extract_chunks(samples, PARAMS).chunks)
    return np.concatenate(chunks)[..., None].astype(np.float32)


def test_saved_model_gives_the_keras_model_outputs_on_real_chunks(run_dir, shared_data, tmp_path):
    import keras

    if keras.backend.backend() != "tensorflow" or not importlib.util.find_spec("tensorflow"):
        pytest.skip("the SavedModel export is checked under the TensorFlow backend")
    import tensorflow as tf

    out = tmp_path / "exported"
    assert main(["--run", str(run_dir), "--out", str(out)]) == 0
    for name in ("params.json", "classes.json", "thresholds.json"):
        assert (out / name).read_bytes() == (run_dir / name).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary folder left

    chunks = real_chunks(shared_data)
    assert len(chunks) >= 3 and np.ptp(chunks) > 0
    exported = tf.saved_model.load(str(out))  # kept referenced: its variables live in it
    served = exported.serve(tf.constant(chunks)).numpy()
    model = keras.saving.load_model(run_dir / "best_val_map.keras", compile=False)
    expected = model.predict(chunks, verbose=0)
    assert served.shape == (len(chunks), len(CLASSES))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(expected, axis=0).max() > 1e-4  # the chunks give different outputs


def test_export_refuses_an_existing_target_and_a_missing_run(run_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["--run", str(run_dir), "--out", str(tmp_path / "taken")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "new")]) == 2
    assert "not a finished training run" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    other = str(run_dir / "best_val_map.keras")  # a path: another run's model would pass too
    argv = ["--run", str(run_dir), "--out", str(tmp_path / "new"), "--model-file", other]
    assert main(argv) == 2 and "name of a model in the run folder" in capsys.readouterr().err


class FakeModel:
    """Exports as TensorFlow does (into the folder, made when absent), in no time, on any
    backend; or fails, as a missing converter package does."""

    inputs = [types.SimpleNamespace(shape=(None, 4, 4, 1))]

    def __init__(self, fail: bool = False):
        self.fail = fail

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), len(CLASSES)))

    def export(self, path, format, verbose):  # noqa: A002 (Keras's name)
        if self.fail:
            raise ImportError("no converter")
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "saved_model.pb").write_bytes(b"model")


@pytest.fixture
def fake_model(monkeypatch):
    """Call with fail=True for an export that fails: load_saved_model then returns that."""

    def use(fail: bool = False) -> None:
        monkeypatch.setattr("train.saved_model.load_saved_model", lambda path: FakeModel(fail))

    use()
    return use


def test_export_never_writes_through_a_planted_part_link(run_dir, tmp_path, fake_model):
    victim = tmp_path / "victim" / "sub"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("precious")
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "exp.part").symlink_to(victim)  # the fixed temporary name the export once used
    before = folder_contents(tmp_path / "victim")

    assert main(["--run", str(run_dir), "--out", str(exports / "exp")]) == 0

    assert folder_contents(tmp_path / "victim") == before
    out = exports / "exp"
    assert out.is_dir() and not out.is_symlink()
    assert (out / "saved_model.pb").read_bytes() == b"model"
    assert (out / "params.json").read_bytes() == (run_dir / "params.json").read_bytes()
    assert sorted(p.name for p in exports.iterdir()) == ["exp", "exp.part"]  # the link is left
    assert (exports / "exp.part").readlink() == victim


def test_export_refuses_a_run_file_that_is_a_link(run_dir, tmp_path, fake_model, capsys):
    """A run folder received from someone else, its thresholds.json a link to a private
    file: the export, made to be shared, would carry that file's content."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (tmp_path / "secret.txt").write_text("private")
    (run / "thresholds.json").unlink()
    (run / "thresholds.json").symlink_to(tmp_path / "secret.txt")

    assert main(["--run", str(run), "--out", str(tmp_path / "exp")]) == 2

    assert f"{run / 'thresholds.json'} is a link" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_export_keeps_a_users_folder_named_like_a_temporary_one(run_dir, tmp_path, fake_model):
    exports = tmp_path / "exports"
    (exports / "exp2.part").mkdir(parents=True)
    (exports / "exp2.part" / "notes.txt").write_text("my notes")

    assert main(["--run", str(run_dir), "--out", str(exports / "exp2")]) == 0

    assert (exports / "exp2.part" / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in exports.iterdir()) == ["exp2", "exp2.part"]
    assert (exports / "exp2" / "saved_model.pb").is_file()


def test_a_failed_export_leaves_nothing_and_a_dangling_link_is_refused(
    run_dir, tmp_path, fake_model, capsys
):
    exports = tmp_path / "exports"
    (exports / "exp.part").mkdir(parents=True)
    (exports / "exp.part" / "notes.txt").write_text("my notes")
    fake_model(fail=True)
    assert main(["--run", str(run_dir), "--out", str(exports / "exp")]) == 2
    assert "ImportError: no converter" in capsys.readouterr().err
    assert sorted(p.name for p in exports.iterdir()) == ["exp.part"]
    assert (exports / "exp.part" / "notes.txt").read_text() == "my notes"

    fake_model()
    (exports / "link").symlink_to(tmp_path / "elsewhere")
    assert main(["--run", str(run_dir), "--out", str(exports / "link")]) == 2
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_an_onnx_export_is_not_refused_for_a_model_never_called(run_dir, tmp_path, capsys):
    """Keras exports to ONNX only a model that has been called, which a model loaded from its
    file has not: the export calls it first. Without the converter packages installed the
    export fails naming them instead."""
    out = tmp_path / "onnx"
    argv = ["--run", str(run_dir), "--out", str(out), "--format", "onnx",
            "--model-file", "best_val_map.keras"]  # fmt: skip
    if main(argv) == 0:
        assert (out / "model.onnx").stat().st_size > 0
    else:
        error = capsys.readouterr().err
        assert "never called" not in error and "onnx" in error.lower()


def test_a_model_that_leaves_the_chunk_width_open_is_exported(run_dir, tmp_path):
    """Input (n_bins, None, 1), as predict.py accepts: called on a chunk of the run's width."""
    import keras

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    inputs = keras.Input((PARAMS.n_bins, None, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 5, strides=4)(inputs))
    keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(pooled)).save(
        run / "best_val_map.keras"
    )
    out = tmp_path / "exported"
    argv = ["--run", str(run), "--out", str(out), "--model-file", "best_val_map.keras"]
    assert main(argv) == 0 and (out / "saved_model.pb").is_file()


def test_export_takes_the_model_the_run_predicts_with(run_dir, tmp_path, monkeypatch, caplog):
    """A modern run predicts with final.keras (inference.json): that is what is exported, with
    inference.json beside it; a run whose training has not ended is refused unless a model
    is named."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "final.keras").write_bytes((run / "best_val_map.keras").read_bytes())
    (run / "config.json").write_text(json.dumps({"inference_model": "final"}))
    inference = {"model_file": "final.keras", "pooling": "max"}
    (run / "inference.json").write_text(json.dumps(inference))
    loaded = []
    monkeypatch.setattr(
        "train.saved_model.load_saved_model", lambda path: loaded.append(path) or FakeModel()
    )

    assert main(["--run", str(run), "--out", str(tmp_path / "unfinished")]) == 2
    assert not loaded and not (tmp_path / "unfinished").exists()
    (run / "training_done.json").write_text("{}")
    assert main(["--run", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert loaded == [run / "final.keras"]
    assert json.loads((tmp_path / "exp" / "inference.json").read_text()) == inference

    assert main(["--run", str(run), "--out", str(tmp_path / "best"), "--model-file",
                 "best_val_map.keras"]) == 0  # fmt: skip
    assert loaded[-1] == run / "best_val_map.keras"
    assert "the run predicts with final.keras" in caplog.text
