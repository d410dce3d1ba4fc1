"""The training recipes: the 2016 one (the default, unchanged) and the modern one, and the
parts of the modern one that train_model.py puts together.

`--recipe NAME` only chooses the defaults of the training options (RECIPES); an option
given explicitly wins, and every value used is recorded in the run's config.json.

The modern recipe's parts, each switchable by its own option:
    --normalize dataset|chunk|none   a normalisation layer in front of the model, saved in it
    --augment crop,mixup,...|none    augmentation of the training batches (train/augment.py)
    --optimizer adamw, --warmup-epochs, --weight-decay, --label-smoothing
                                     AdamW, linear warm-up then cosine decay to the last epoch
    --class-balance weights          loss weights against long-tailed classes
    --early-stop-on none             no early stopping (val_map, the official MAP, on request)
    --time-budget MINUTES            training ends with the budget, the cosine decay too
    --pooling auto                   recording pooling chosen on validation (inference.json)
    --inference-model final          the model as the decay leaves it
    --test-fraction 0                no test split of its own: all labels train or validate
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from preprocess.audio import AUDIO_SUFFIXES, WAV_SUFFIXES, AudioError
from preprocess.dataset import Dataset
from preprocess.extract import recording_chunks
from preprocess.params import SpectrogramParams
from preprocess.paths import NOT_REGULAR, files_under, shown_name, write_text_atomically
from train.augment import NOISE_CHUNKS, AugmentedBatches, AugmentSettings, quietest_chunks
from train.data import SplitData, TrainError
from train.metrics import POOLINGS, POWER_EXPONENT, recording_map
from train.run_files import BEST_VAL_MAP, FINAL, INFERENCE
from train.saved_model import save_model_atomically, saved_model_probs

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# option -> default, per recipe; "2016" is exactly what train_model.py had before recipes
RECIPES = {
    "2016": {
        "model": PROJECT_ROOT / "train" / "model-BirdClef.py",
        "epochs": 20000,
        "patience": 100,
        "batch_size": 32,
        "learning_rate": 0.001,
        "optimizer": "rmsprop",
        "weight_decay": 0.0,
        "warmup_epochs": 0,
        "label_smoothing": 0.0,
        "background_weight": 0.0,
        "normalize": "none",
        "augment": "none",
        "class_balance": "none",
        "early_stop_on": "val_loss",
        "time_budget": 0.0,
        "pooling": "mean",
        "inference_model": "best_val_map",
        "val_fraction": 0.1,
        "test_fraction": 0.1,
    },
    "modern": {
        "model": PROJECT_ROOT / "train" / "model-ResNet.py",
        "epochs": 300,
        "patience": 50,
        "batch_size": 32,
        "learning_rate": 0.002,
        "optimizer": "adamw",
        "weight_decay": 0.01,
        "warmup_epochs": 2,
        "label_smoothing": 0.1,
        # a recording's background species, where the data names them, as weak targets:
        # MAP with background +6 points on a proxy, foreground MAP unchanged (BENCHMARKS.md)
        "background_weight": 0.1,
        "normalize": "dataset",
        "augment": "crop,mixup,specaugment,noise,gain",
        "class_balance": "weights",
        # the cosine decay ends training: early stopping on a small validation set (whose MAP
        # soon reaches 1.0 and cannot improve) would cut it short, and the model as the
        # decay leaves it is then the one to keep (BENCHMARKS.md, ESC-10)
        "early_stop_on": "none",
        # 300 epochs of a few hundred 5 s clips fit on a 2-core CPU; larger data gets fewer,
        # with the decay ending on the clock, and the whole job stays within 20 minutes
        "time_budget": 12.0,
        "pooling": "auto",
        "inference_model": "final",
        # every labelled recording trains or validates (the validation only chooses the
        # pooling, so the original's 5 % suffices): score on recordings of your own
        "val_fraction": 0.05,
        "test_fraction": 0.0,
    },
}
NORMALIZATIONS = ("none", "dataset", "chunk")
OPTIMIZERS = ("rmsprop", "adamw")
CLASS_BALANCES = ("none", "weights")
EARLY_STOP_ON = ("val_loss", "val_map", "none")


def apply_recipe(args) -> None:
    """Fill the options the user did not give (None) with the defaults of args.recipe."""
    for name, value in RECIPES[args.recipe].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


# ---------------------------------------------------------------------------------------------
# Normalisation inside the model


def band_statistics(x: np.ndarray, floor: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and variance of chunks x (n, bins, frames, 1), float64 sums.

    floor: values at or below it (padding, digital silence) are left out of the statistics
    where a band has other values.
    Returns (mean (bins,), variance (bins,)), variance at least 1e-6. One band at a time:
    float64 copies of 4,000 chunks at once took gigabytes.
    """
    x = np.asarray(x)
    mean, variance = np.empty(x.shape[1]), np.empty(x.shape[1])
    for band in range(x.shape[1]):
        values = x[:, band, :, 0]  # (n, frames)
        keep = values > floor if floor is not None else np.ones(values.shape, bool)
        if not keep.any():  # a band that is all floor: use it as it is
            keep[...] = True
        count = np.count_nonzero(keep)
        mean[band] = np.sum(values, where=keep, dtype=np.float64) / count
        deviation = np.square(values - mean[band], dtype=np.float64)
        variance[band] = np.sum(deviation, where=keep) / count
    return mean.astype(np.float32), np.maximum(variance, 1e-6).astype(np.float32)


def normalized_model(
    model: keras.Model, normalize: str, stats: tuple[np.ndarray, np.ndarray] | None = None
) -> keras.Model:
    """The model with a normalisation layer in front, so the saved model takes raw features.

    normalize: "none" (the model itself), "dataset" (keras Normalization by per-band `stats`
    (mean, variance) of the training chunks) or "chunk" (each chunk standardised over its
    bands and frames).
    """
    if normalize == "none":
        return model
    inputs = keras.Input(model.input_shape[1:], name="features")
    if normalize == "dataset":
        mean, variance = stats
        layer = keras.layers.Normalization(
            axis=1, mean=mean, variance=variance, name="band_normalization"
        )
    elif normalize == "chunk":
        # over the one channel too: the same values, and torch's layer_norm takes only
        # trailing axes (Keras 3.15 on torch fails on axis=(1, 2))
        layer = keras.layers.LayerNormalization(
            axis=(1, 2, 3), center=False, scale=False, name="chunk_normalization"
        )
    else:
        raise ValueError(f"normalize {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    return keras.Model(inputs, model(layer(inputs)), name=f"{model.name}_normalized")


def noise_chunks_from_dir(
    directory: Path, params: SpectrogramParams, most: int = NOISE_CHUNKS, per_file: int = 32
) -> np.ndarray:
    """Background noise for the "noise" augmentation from the wavs under `directory` (any
    rate), through the data's own front end (`params`): up to per_file chunks of each file,
    at most `most` in all. A file that cannot be read, or audio of another format, is logged
    by name and skipped.
    Returns (k, n_bins, chunk_frames, 1) float32 raw log chunks; ValueError if none.
    """
    chunks = []
    for path in files_under(Path(directory)):
        if path.suffix.lower() not in WAV_SUFFIXES:
            if path.suffix.lower() in AUDIO_SUFFIXES:
                logger.warning(
                    "noise file %s skipped: --noise-dir reads wav files only (convert it with "
                    "preprocess/resample_wavs_to_16k.sh)",
                    shown_name(str(path)),
                )
            continue
        if sum(map(len, chunks)) >= most:
            break
        if not path.is_file():  # a pipe (reading it would wait forever), a device
            logger.warning("noise file %s skipped: %s", shown_name(str(path)), NOT_REGULAR)
            continue
        try:
            source = recording_chunks(path, params, per_file, resample=True)
            piece = next(source.pieces, np.empty((0,)))[:per_file]
            source.pieces.close()
        except AudioError as error:
            logger.warning("noise file %s skipped: %s", path, error)
            continue
        if len(piece):
            chunks.append(piece)
        else:
            logger.warning("noise file %s skipped: no chunks (the noise filter kept none)", path)
    if not chunks:
        raise ValueError(f"{directory}: no readable .wav files for --noise-dir")
    return np.concatenate(chunks)[:most, ..., None].astype(np.float32)


def noise_chunks(dataset: Dataset, sample: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Background noise to mix in: --noise-dir's wavs through the data's front end, else the
    quietest of the sampled training chunks."""
    if args.noise_dir is None:
        return quietest_chunks(sample)
    try:
        noise = noise_chunks_from_dir(args.noise_dir, dataset.params)
    except ValueError as error:
        raise TrainError(str(error)) from error
    if noise.shape[1:] != sample.shape[1:]:
        raise TrainError(
            f"--noise-dir chunks {noise.shape[1:]} do not match the data's {sample.shape[1:]}"
        )
    logger.info("%d noise chunks from %s", len(noise), args.noise_dir)
    return noise


# ---------------------------------------------------------------------------------------------
# Class balance


def class_weights(labels: np.ndarray, n_classes: int, power: float = 0.5) -> np.ndarray:
    """Loss weight per class, (count / mean count) ** -power over the training chunks'
    labels (n,): rare classes weigh more; power 0.5 softens inverse frequency, which overfits
    a class of a few recordings. Scaled so the average chunk weighs 1; absent classes get 0.
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = (counts[present] / counts[present].mean()) ** -power
    weights /= (weights[labels]).mean()
    return weights.astype(np.float32)


def augmented_batches(
    train: SplitData,
    dataset: Dataset,
    sample: np.ndarray | None,
    band_means: np.ndarray | None,
    args: argparse.Namespace,
) -> AugmentedBatches:
    """The training batches with --augment and --class-balance applied.

    sample: (n, bins, frames, 1) training chunks, for the default noise; band_means: (bins,)
    their per-band means (`band_statistics`), SpecAugment's fill (None when neither is used).
    """
    plain = train.batches
    recording = train.chunk_recording
    same_next = np.append(recording[1:] == recording[:-1], False)
    first = np.insert(recording[1:] != recording[:-1], 0, True)
    # a recording's last chunk ends with its last frame (split_chunks), so it repeats the
    # n_chunks * chunk_frames - n_frames frames that end the chunk before it
    next_is_last = same_next & ~np.append(same_next[1:], False)
    table, chunk_frames = dataset.recordings, dataset.params.chunk_frames
    n_chunks, n_frames = (
        table[name][recording].astype(np.int64) for name in ("n_chunks", "n_frames")
    )
    repeated = n_chunks * chunk_frames - n_frames
    overlaps = np.where(next_is_last, np.clip(repeated, 0, chunk_frames - 1), 0)
    use = tuple(name for name in args.augment.split(",") if name and name != "none")
    weights = None
    if args.class_balance == "weights":
        weights = class_weights(plain.labels, plain.n_classes)
        logger.info("class loss weights %s", np.round(weights, 2).tolist())
    return AugmentedBatches(
        plain.source,
        plain.rows,
        plain.labels,
        plain.n_classes,
        plain.batch_size,
        shuffle=True,
        seed=args.seed,
        readers=plain.readers,
        workers=plain.workers,
        multiple_of=plain.multiple_of,
        background=plain.background,
        background_weight=plain.background_weight,
        settings=AugmentSettings(use=use),
        next_positions=np.where(same_next, np.arange(len(recording)) + 1, -1),
        first_of_recording=first,
        next_overlaps=overlaps,
        noise=noise_chunks(dataset, sample, args) if "noise" in use else None,
        band_means=band_means,
        class_weights=weights,
    )


# ---------------------------------------------------------------------------------------------
# Optimizer, loss, schedule, budget


def defines_compile_args(model_module) -> bool:
    """Whether a model file defines how it is compiled (a `compile_args(settings)` function)."""
    return callable(getattr(model_module, "compile_args", None))


def compile_args(args, model_module=None) -> dict:
    """Keyword arguments of model.compile: the model file's `compile_args(settings)` when it
    defines one (settings: {"optimizer", "learning_rate", "weight_decay",
    "label_smoothing"}; it returns at least optimizer and loss), else the options'."""
    settings = {
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
    }
    if defines_compile_args(model_module):
        chosen = dict(model_module.compile_args(settings))
        missing = {"optimizer", "loss"} - set(chosen)
        if missing:
            raise ValueError(f"the model file's compile_args returned no {sorted(missing)}")
        return chosen
    if args.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(args.learning_rate, weight_decay=args.weight_decay)
    else:
        optimizer = Keras1RMSprop(args.learning_rate)
    if args.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
    else:
        loss = "categorical_crossentropy"
    return {"optimizer": optimizer, "loss": loss}


@keras.saving.register_keras_serializable(package="birdclef2016")
class Keras1RMSprop(keras.optimizers.Optimizer):
    """RMSprop as the 2016 scripts' Keras 1 stepped each weight w with gradient g:

        v <- rho * v + (1 - rho) * g^2
        w <- w - learning_rate * g / (sqrt(v) + epsilon)      (rho 0.9, epsilon 1e-8)

    Keras 3's RMSprop divides by sqrt(v + epsilon) (epsilon 1e-7) instead: a floor of 3e-4
    under sqrt(v), which shrank the steps of weights with small gradients up to 30,000-fold.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-8, name="keras1_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho, self.epsilon = rho, epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [
            self.add_variable_from_reference(reference_variable=variable, name="velocity")
            for variable in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        velocity = self.velocities[self._get_variable_index(variable)]
        self.assign(
            velocity,
            keras.ops.add(
                keras.ops.multiply(self.rho, velocity),
                keras.ops.multiply(1 - self.rho, keras.ops.square(gradient)),
            ),
        )
        denominator = keras.ops.add(keras.ops.sqrt(velocity), self.epsilon)
        self.assign_sub(
            variable, keras.ops.divide(keras.ops.multiply(learning_rate, gradient), denominator)
        )

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


def warmup_cosine(
    step: float,
    total_steps: float,
    warmup_steps: float,
    peak: float,
    time_share: float = 0.0,
    warmup_time_share: float = 0.0,
) -> float:
    """Learning rate at `step`: linear from peak / warmup_steps up to peak over the warm-up
    (or faster: with warmup_time_share, the share of the warm-up's time allowance that has
    passed, where that is further), then cosine down to 0 at total_steps, or sooner: at
    time_share 1 (the share of the time budget left after the warm-up that has passed),
    whichever comes first."""
    if step < warmup_steps:
        return peak * min(1.0, max((step + 1) / warmup_steps, warmup_time_share))
    progress = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
    progress = max(progress, min(1.0, time_share))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


# the warm-up takes at most this share of the time budget: on data large enough that an
# epoch is minutes, whole epochs of warm-up would leave little of the budget to the decay
WARMUP_BUDGET_SHARE = 0.05
# the rate is set again once it is this far (relative) from the one set: setting it reaches
# into the model, which under JAX syncs every variable back to it, a step's worth on a GPU
RATE_TOLERANCE = 0.01


class ScheduleAndBudget(keras.callbacks.Callback):
    """Sets the optimizer's learning rate every step (warm-up, then cosine decay) and ends
    training when the time budget would run out.

    The warm-up ends with its epochs or with WARMUP_BUDGET_SHARE of the budget, whichever
    comes first. The decay ends with the last of `epochs`, or with the time budget if that
    comes first: its progress is then measured on the clock from the end of the warm-up, so a
    machine slower than expected (other work on the cores) still ends training at a low rate.
    Training stops after the epoch whose length, once more, would pass the budget, and
    mid-epoch (after a step) once the budget is spent; Keras still validates that epoch.
    budget_seconds: 0 for none. schedule: False keeps the optimizer's constant rate.
    past_seconds: the epoch_seconds of the epochs a resumed run has done ([] for a new run):
    its budget and its decay's clock go on from them, rather than starting over; a run whose
    budget had ended it (its last epoch once more would pass it) stops after one step.

    The rate is computed before every step and set when it is RATE_TOLERANCE away from the
    one set; no work follows a step, so Keras dispatches steps without waiting for each.
    """

    def __init__(
        self,
        epochs: int,
        steps_per_epoch: int,
        peak: float,
        warmup_epochs: int,
        budget_seconds: float,
        schedule: bool,
        past_seconds: Sequence[float] = (),
    ):
        super().__init__()
        self.epochs, self.steps_per_epoch, self.peak = epochs, steps_per_epoch, peak
        self.warmup_epochs, self.warmup_steps = warmup_epochs, warmup_epochs * steps_per_epoch
        self.budget_seconds, self.schedule = budget_seconds, schedule
        self.past_seconds = np.asarray(past_seconds, dtype=np.float64)
        self.epoch, self.decay_start, self.rate_set = 0, None, None
        self.spent = False  # the budget had ended the run resumed: Keras runs one step

    def on_train_begin(self, logs=None):
        done = np.cumsum(self.past_seconds)
        self.last_end = time.perf_counter()  # an epoch's length counts from the last's end
        self.start = self.last_end - (done[-1] if len(done) else 0.0)
        if not len(done) or self.budget_seconds <= 0:
            return
        # the decision that ended the run before its kill (`on_epoch_end`), made again
        self.spent = done[-1] + self.past_seconds[-1] > self.budget_seconds
        # where the warm-up of the epochs done ended: with its epochs or its share of the time
        allowance = WARMUP_BUDGET_SHARE * self.budget_seconds
        by_time = int(np.searchsorted(done, allowance))  # the epoch the allowance ran out in
        if by_time < min(len(done), self.warmup_epochs):
            before = done[by_time - 1] if by_time else 0.0
            share = (allowance - before) / max(self.past_seconds[by_time], 1e-9)
            self.warmup_steps = round((by_time + share) * self.steps_per_epoch)
            self.decay_start = self.start + allowance
        elif len(done) >= self.warmup_epochs:
            self.decay_start = self.start + (
                done[self.warmup_epochs - 1] if self.warmup_epochs else 0.0
            )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        now = time.perf_counter()
        if self.spent or (self.budget_seconds > 0 and now - self.start > self.budget_seconds):
            self.model.stop_training = True  # after this step
        if not self.schedule:
            return
        step = self.epoch * self.steps_per_epoch + batch
        warmup_time_share = time_share = 0.0
        if self.budget_seconds > 0 and step < self.warmup_steps:
            warmup_time_share = (now - self.start) / (WARMUP_BUDGET_SHARE * self.budget_seconds)
            if warmup_time_share >= 1:
                self.warmup_steps = step
        if self.budget_seconds > 0 and step >= self.warmup_steps:
            if self.decay_start is None:
                self.decay_start = now
            left = self.start + self.budget_seconds - self.decay_start
            time_share = (now - self.decay_start) / max(left, 1e-9)
        rate = warmup_cosine(
            step,
            self.epochs * self.steps_per_epoch,
            self.warmup_steps,
            self.peak,
            time_share,
            warmup_time_share,
        )
        if self.rate_set is None or abs(rate - self.rate_set) > RATE_TOLERANCE * self.rate_set:
            self.model.optimizer.learning_rate.assign(rate)
            self.rate_set = rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
        if self.budget_seconds <= 0:
            return
        # the epoch's length as EpochTime logs it (what ran since the last epoch ended), as
        # on_train_begin judges a resumed run by
        now = time.perf_counter()
        length, self.last_end = now - self.last_end, now
        if now - self.start + length > self.budget_seconds:
            logger.info(
                "time budget of %.1f min: training ends after epoch %d",
                self.budget_seconds / 60,
                epoch + 1,
            )
            self.model.stop_training = True


def schedule_and_budget(
    args: argparse.Namespace,
    steps_per_epoch: int,
    options_optimizer: bool,
    past_seconds: Sequence[float] = (),
) -> list[keras.callbacks.Callback]:
    """[ScheduleAndBudget] when the learning rate is scheduled (--optimizer adamw or
    --warmup-epochs, and the options chose the optimizer, not the model file's compile_args)
    or --time-budget is set; else []. past_seconds: as ScheduleAndBudget's."""
    schedule = options_optimizer and (args.optimizer != "rmsprop" or args.warmup_epochs > 0)
    if not (schedule or args.time_budget):
        return []
    return [
        ScheduleAndBudget(
            args.epochs,
            steps_per_epoch,
            args.learning_rate,
            args.warmup_epochs,
            args.time_budget * 60,
            schedule=schedule,
            past_seconds=past_seconds,
        )
    ]


# ---------------------------------------------------------------------------------------------
# Recording pooling chosen on validation; inference.json


def choose_pooling(
    chunk_probs: np.ndarray, chunk_recording: np.ndarray, labels: np.ndarray
) -> tuple[str, dict[str, float]]:
    """The recording pooling with the best validation MAP (ties: the first of POOLINGS,
    mean). chunk_probs (chunks, C); chunk_recording (chunks,) recording index; labels
    (recordings,) class of each recording index. Returns (pooling, {pooling: MAP})."""
    scores = {
        pooling: recording_map(chunk_probs, chunk_recording, labels, pooling)
        for pooling in POOLINGS
    }
    best = max(POOLINGS, key=lambda name: ranked(scores[name]))
    return best, scores


def ranked(score: float) -> float:
    """A validation MAP to compare: NaN (one that could not be computed) ranks lowest."""
    return float(np.nan_to_num(score, nan=-1.0))


def write_inference(run_dir: Path, model_file: str, pooling: str, extra: dict) -> dict:
    """RUN/inference.json: the checkpoint and recording pooling predict.py uses by default."""
    inference = {
        "model_file": model_file,
        "pooling": pooling,
        "pooling_exponent": POWER_EXPONENT,
        **extra,
    }
    write_text_atomically(run_dir / INFERENCE, json.dumps(inference, indent=1) + "\n")
    return inference


INFERENCE_CHOICES = {  # --inference-model -> candidate checkpoints, preferred first on ties
    "best_val_map": (BEST_VAL_MAP,),
    "final": (FINAL,),
    "auto": (FINAL, BEST_VAL_MAP),
}


def save_final_model(
    model: keras.Model, run_dir: Path, inference_model: str, diverged: bool
) -> None:
    """RUN/final.keras, the model as training ended, where --inference-model may choose it;
    whole or absent, as the checkpoints. Absent too where training diverged (`MAPCallback`
    saw predictions that are not finite and stopped it), so prediction falls back on a best
    model."""
    if FINAL in INFERENCE_CHOICES[inference_model]:
        if diverged:
            logger.warning("training diverged (predictions not finite): no %s written", FINAL)
            return
        save_model_atomically(model, run_dir / FINAL)


def choose_inference(
    run_dir: Path, data: dict[str, SplitData], dataset: Dataset, args: argparse.Namespace
) -> dict:
    """RUN/inference.json: the checkpoint (--inference-model) and recording pooling
    (--pooling) for prediction; under auto, the pair with the best validation MAP (ties: the
    final model, then mean, max, power), with the test MAP of the pair. Returns what it
    wrote."""
    labels = dataset.recordings["label"]
    candidates = [
        name for name in INFERENCE_CHOICES[args.inference_model] if (run_dir / name).is_file()
    ]
    if not candidates and (run_dir / BEST_VAL_MAP).is_file():  # diverged, or killed before it
        logger.warning("%s missing: prediction uses %s", FINAL, BEST_VAL_MAP)
        candidates = [BEST_VAL_MAP]
    if not candidates:
        model_file = INFERENCE_CHOICES[args.inference_model][0]
        logger.warning("%s missing: inference.json names it all the same", model_file)
        return write_inference(run_dir, model_file, "mean", {})
    model_file, pooling, extra = candidates[0], args.pooling, {}
    if len(candidates) > 1 or args.pooling == "auto":
        best, extra["validation_map"] = -1.0, {}
        for name in candidates:
            probs = saved_model_probs(run_dir / name, data["val"].batches)
            chosen, maps = choose_pooling(probs, data["val"].chunk_recording, labels)
            if args.pooling != "auto":
                chosen = args.pooling
            extra["validation_map"][name] = maps
            if ranked(maps[chosen]) > best:
                best, model_file, pooling = ranked(maps[chosen]), name, chosen
        logger.info("prediction: %s, %s pooling (validation MAP %s)", model_file, pooling, extra)
    test = data["test"]
    if len(test):
        probs = saved_model_probs(run_dir / model_file, test.batches)
        extra["test_map"] = recording_map(probs, test.chunk_recording, labels, pooling)
    return write_inference(run_dir, model_file, pooling, extra)
