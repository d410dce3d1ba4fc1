"""The model file (--model): its `build_model` run and checked, the model compiled with the
file's own `compile_args` or the options', given its starting weights; and the devices it
trains on.

A model file is a user's Python file defining `build_model(input_shape, n_classes)` that
returns a keras.Model, and optionally `compile_args(settings)` (train/recipe.py); whatever
it raises, or a `sys.exit` in it, becomes a TrainError naming the file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
from pathlib import Path

import keras

from train import recipe
from train.data import TrainError

logger = logging.getLogger(__name__)


def load_model_file(path: Path):
    """The model file as a module (its build_model, and compile_args if it defines one)."""
    if not path.is_file():
        raise TrainError(f"{path}: no such model file")
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    try:  # run as its loader would, but without leaving a __pycache__/ beside the file (in a
        # run folder, or the repository)
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except (Exception, SystemExit) as error:  # the user's file: report whatever it raises
        raise TrainError(
            f"{path}: cannot load model file: {type(error).__name__}: {error}"
        ) from error
    return module


def build_model_from_file(
    path: Path, input_shape: tuple, n_classes: int, module=None
) -> keras.Model:
    """Run a model file's `build_model(input_shape, n_classes)` and check what it gives.
    module: the file already loaded (load_model_file), else it is loaded here."""
    module = module or load_model_file(path)
    if not callable(getattr(module, "build_model", None)):
        raise TrainError(
            f"{path} defines no build_model(input_shape, n_classes) function returning a "
            "keras.Model (copy train/model-BirdClef.py and edit it)"
        )
    try:
        model = module.build_model(tuple(input_shape), n_classes)
    except (Exception, SystemExit) as error:
        raise TrainError(
            f"{path}: build_model({tuple(input_shape)}, {n_classes}) failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(model, keras.Model):
        raise TrainError(f"{path}: build_model returned {type(model).__name__}, not a keras.Model")
    if tuple(model.input_shape[1:]) != tuple(input_shape):
        raise TrainError(
            f"{path}: the model takes input {model.input_shape[1:]}, but the data's chunks "
            f"are {tuple(input_shape)}"
        )
    if tuple(model.output_shape) != (None, n_classes):
        raise TrainError(
            f"{path}: the model outputs shape {model.output_shape}, but the data has "
            f"{n_classes} classes: the last layer must be Dense({n_classes}, softmax), "
            "i.e. output (None, n_classes)"
        )
    return model


def compile_model(model: keras.Model, args: argparse.Namespace, module) -> bool:
    """Compile model with the optimizer and loss of the model file's compile_args when it
    defines one (module: the loaded model file), else of the options (recipe.compile_args),
    and accuracy as a metric. Returns whether the options chose the optimizer: only then may
    --optimizer adamw and --warmup-epochs schedule its learning rate."""
    try:
        compiled = recipe.compile_args(args, module)
    except Exception as error:  # the user's compile_args: report whatever it raises
        raise TrainError(
            f"{args.model}: compile_args failed: {type(error).__name__}: {error}"
        ) from error
    model.compile(**compiled, metrics=["accuracy"])
    return not recipe.defines_compile_args(module)


def load_weights(model: keras.Model, weights: Path, model_file: Path) -> None:
    """Start from the weights of a .keras or .weights.h5 file (--weights)."""
    try:
        model.load_weights(weights)
    except Exception as error:  # Keras raises many kinds on a damaged file
        raise TrainError(f"{weights}: cannot load weights into {model_file}: {error}") from error
    logger.info("starting from the weights of %s", weights)


def list_devices(kind: str | None = None) -> list[str]:
    """The backend's devices of a kind ("gpu", "cpu"; None: all) as "gpu:0"..., or [] where
    the backend cannot list them (JAX raises when a kind is absent)."""
    if keras.backend.backend() == "torch":  # which has no keras.distribution
        import torch

        devices = [f"gpu:{index}" for index in range(torch.cuda.device_count())] + ["cpu:0"]
        return [device for device in devices if kind is None or device.startswith(kind)]
    try:
        return keras.distribution.list_devices(kind)
    except (AttributeError, RuntimeError, NotImplementedError):
        return []


def accelerator_memory() -> int | None:
    """Bytes of memory the backend may use on the first GPU (JAX: its memory pool; torch: the
    card's), or None where there is no GPU or the backend does not say (TensorFlow)."""
    if not list_devices("gpu"):
        return None
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return (jax.devices("gpu")[0].memory_stats() or {}).get("bytes_limit")
        if backend == "torch":
            import torch

            return torch.cuda.mem_get_info()[1]
    except (ImportError, RuntimeError, IndexError):
        return None
    return None


def batch_multiple() -> int:
    """What every batch's size must be a multiple of: the GPUs that JAX's DataParallel splits
    it over (`data_parallel_scope`), else 1 (TensorFlow's MirroredStrategy takes any batch)."""
    gpus = list_devices("gpu")
    return len(gpus) if len(gpus) > 1 and keras.backend.backend() == "jax" else 1


def data_parallel_scope():
    """Spread each batch over the GPUs when there are several, with the backend's own
    engine; a no-op with one device."""
    gpus = list_devices("gpu")
    if len(gpus) < 2:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    logger.info("%d GPUs: data parallel training (%s backend)", len(gpus), backend)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    if backend == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=gpus))
    else:
        logger.warning("no data parallel training with the %s backend: one GPU is used", backend)
    return contextlib.nullcontext()
