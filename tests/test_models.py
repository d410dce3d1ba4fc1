"""The model files: the paper's networks, their sizes, and how a model file is checked."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from train.data import TrainError
from train.model_file import build_model_from_file

TRAIN = Path(__file__).resolve().parents[1] / "train"
INPUT_SHAPE = (200, 310, 1)


@pytest.mark.parametrize(
    ("name", "millions", "batch_norms"), [("AlexNet", 36.07, 3), ("BirdClef", 13.33, 2)]
)
def test_paper_models(name, millions, batch_norms):
    model = build_model_from_file(TRAIN / f"model-{name}.py", INPUT_SHAPE, 50)
    assert model.output_shape == (None, 50)
    assert round(model.count_params() / 1e6, 2) == millions
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == batch_norms
    for norm in norms:  # over channels (channels last), not over time as the original did
        assert norm.gamma.shape == (norm.input.shape[-1],)
    probs = model.predict(np.zeros((2, *INPUT_SHAPE), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape", [(128, 250, 1), (128, 50, 1), (200, 310, 1), (16, 20, 1)])
def test_resnet_takes_any_chunk_shape(shape):
    # the modern recipe's model: global pooling, so every front end's chunks fit
    model = build_model_from_file(TRAIN / "model-ResNet.py", shape, 17)
    assert model.output_shape == (None, 17)
    assert 0.5 < model.count_params() / 1e6 < 1.5
    probs = model.predict(np.zeros((2, *shape), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model_from_file(TRAIN / "model-BirdClef.py", INPUT_SHAPE, 5)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[0].compute_dtype == "float16"
    assert keras.ops.convert_to_numpy(model(np.zeros((1, *INPUT_SHAPE)))).dtype == np.float32


def write_model_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "model-Mine.py"
    path.write_text("import keras\nfrom keras import layers\n\n" + body)
    return path


def test_model_file_without_builder(tmp_path):
    path = write_model_file(tmp_path, "model = None\n")
    with pytest.raises(TrainError, match="defines no build_model"):
        build_model_from_file(path, (16, 20, 1), 3)


def test_model_file_with_wrong_output_size(tmp_path):
    path = write_model_file(
        tmp_path,
        "def build_model(input_shape, n_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),\n"
        "                             layers.Dense(7, activation='softmax')])\n",
    )
    with pytest.raises(TrainError, match=r"outputs shape \(None, 7\).*3 classes"):
        build_model_from_file(path, (16, 20, 1), 3)


def test_a_model_file_leaves_no_bytecode_cache_beside_it(tmp_path, monkeypatch):
    """A run folder's copy of the model file holds what training wrote, nothing more."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs by default
    path = write_model_file(
        tmp_path,
        "def build_model(input_shape, n_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),\n"
        "                             layers.Dense(n_classes, activation='softmax')])\n",
    )
    assert build_model_from_file(path, (16, 20, 1), 3).output_shape == (None, 3)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["model-Mine.py"]


def test_model_file_that_fails(tmp_path):
    path = write_model_file(tmp_path, "import not_a_module_anywhere\n")
    with pytest.raises(TrainError, match="model-Mine.py: cannot load.*not_a_module_anywhere"):
        build_model_from_file(path, (16, 20, 1), 3)
    with pytest.raises(TrainError, match="no such model file"):
        build_model_from_file(tmp_path / "missing.py", (16, 20, 1), 3)
