"""Augmentation of training batches on the fly: pure functions on numpy batches, and the
batches that apply them (the modern recipe's; the 2016 recipe has none).

Features are the raw log10 powers of the HDF5 file (normalisation happens inside the model),
so a gain is an additive offset and mixing in noise is log10(10**x + 10**noise). Every
function takes its random numbers from the `rng` it is given: `AugmentedBatches` seeds one
per (seed, epoch, batch), so a run is reproducible with --seed whatever order worker threads
ask for the batches in.

Shapes: x (batch, n_bins, frames, 1) float32; y (batch, classes) float32 rows summing to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from train.data import ChunkBatches

AUGMENTATIONS = ("crop", "mixup", "specaugment", "noise", "gain")
NOISE_CHUNKS = 256  # the most background-noise chunks the "noise" augmentation draws from


@dataclass(frozen=True)
class AugmentSettings:
    """How strongly each augmentation acts; `use` names those switched on."""

    use: tuple[str, ...] = AUGMENTATIONS
    mixup_alpha: float = 0.4  # Beta(alpha, alpha) weight of the first chunk
    mixup_share: float = 0.5  # share of the chunks mixed with another
    time_masks: int = 2  # SpecAugment masks per chunk, each up to an eighth of the frames
    freq_masks: int = 2  # ... and of the bands
    noise_share: float = 0.5  # share of the chunks that get background noise
    noise_db: tuple[float, float] = (-10.0, 5.0)  # noise level offset range, in dB
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db]


def crop_across(
    first: np.ndarray, second: np.ndarray, offsets: np.ndarray, overlaps: np.ndarray | None = None
) -> np.ndarray:
    """A chunk-long window starting `offsets[i]` frames into first[i] and running on into
    second[i] (the next chunk of the same recording): a random crop inside the recording.

    first, second: (b, bins, frames, 1); overlaps: (b,) int, the frames second[i] begins with
    that end first[i] (a recording's last chunk is moved back to end with it, so it overlaps
    the one before), None for none; offsets: (b,) int in [0, frames - overlaps[i]].
    """
    frames = first.shape[2]
    overlaps = np.zeros(len(first), np.int64) if overlaps is None else np.asarray(overlaps)
    out = np.empty_like(first)
    for i, (offset, overlap) in enumerate(zip(np.asarray(offsets), overlaps, strict=True)):
        out[i, :, : frames - offset] = first[i, :, offset:]  # slices: cheaper than fancy indexing
        out[i, :, frames - offset :] = second[i, :, overlap : overlap + offset]
    return out


def roll_time(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each chunk rolled by shifts[i] frames along time (a single-chunk recording's shift).

    x: (b, bins, frames, 1); shifts: (b,) int.
    """
    return np.stack([np.roll(chunk, shift, axis=1) for chunk, shift in zip(x, shifts, strict=True)])


def mixup(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, alpha: float, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mix a `share` of the chunks with other chunks of the batch (Zhang et al. 2018): features
    and labels by the same weight lam ~ Beta(alpha, alpha), so mixed labels still sum to 1.

    Returns new (x, y); the rest of the chunks are unchanged.
    """
    n = len(x)
    lam = rng.beta(alpha, alpha, n).astype(np.float32)
    lam = np.where(rng.random(n) < share, np.maximum(lam, 1 - lam), 1.0).astype(np.float32)
    partner = rng.permutation(n)
    mixed = np.flatnonzero(lam < 1)
    x_mixed, y_mixed = x.copy(), y.astype(np.float32)
    weight = lam[mixed, None, None, None]
    x_mixed[mixed] = weight * x[mixed] + (1 - weight) * x[partner[mixed]]
    y_mixed[mixed] = lam[mixed, None] * y[mixed] + (1 - lam[mixed, None]) * y[partner[mixed]]
    return x_mixed, y_mixed


def mask_spans(
    rng: np.random.Generator, n: int, size: int, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` random spans per row, each 0..size // 8 long, inside [0, size): (starts,
    ends), each (n, count) int."""
    widths = rng.integers(0, max(1, size // 8) + 1, (n, count))
    starts = rng.integers(0, size - widths + 1)
    return starts, starts + widths


def spec_augment(
    x: np.ndarray,
    rng: np.random.Generator,
    time_masks: int,
    freq_masks: int,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """SpecAugment (Park et al. 2019): time and frequency spans of each chunk set to `fill`
    (bins,), the training data's per-band mean, which the model's normalisation maps to 0
    (SpecAugment's zero); without it, to the chunk's mean."""
    n, bins, frames = x.shape[:3]
    band_starts, band_ends = mask_spans(rng, n, bins, freq_masks)
    frame_starts, frame_ends = mask_spans(rng, n, frames, time_masks)
    out = x.astype(np.float32, copy=True)
    for i in range(n):  # slice assignments: far cheaper than a (batch, bins, frames) mask
        value = (
            np.full((bins, 1), x[i].mean(), np.float32)
            if fill is None
            else np.asarray(fill, dtype=np.float32)[:, None]
        )
        for start, end in zip(frame_starts[i], frame_ends[i], strict=True):
            out[i, :, start:end, 0] = value
        for start, end in zip(band_starts[i], band_ends[i], strict=True):
            out[i, start:end, :, 0] = value[start:end]
    return out


def add_noise(
    x: np.ndarray,
    noise: np.ndarray,
    rng: np.random.Generator,
    share: float,
    level_db: tuple[float, float],
) -> np.ndarray:
    """Background noise mixed into a `share` of the chunks in the power domain:
    log10(10**x + 10**(noise + offset)), offset uniform in level_db (dB, as log10 power / 10).

    noise: (k, bins, frames, 1) raw log chunks to draw from (e.g. the data's quietest).
    """
    n = len(x)
    picked = rng.integers(0, len(noise), n)
    offset = rng.uniform(*level_db, n).astype(np.float32) / 10
    noisy = np.flatnonzero(rng.random(n) < share)
    out = x.astype(np.float32, copy=True)
    for i in noisy:  # log10(10**a + 10**b) = max + log10(1 + 10**-|a - b|), in float32
        level = noise[picked[i]] + offset[i]
        out[i] = np.maximum(x[i], level) + np.log10(
            np.float32(1) + np.power(np.float32(10), -np.abs(x[i] - level))
        )
    return out


def random_gain(x: np.ndarray, rng: np.random.Generator, gain_db: float) -> np.ndarray:
    """Each chunk louder or softer by a gain uniform in [-gain_db, gain_db] dB: an offset
    of gain / 10 in log10 power."""
    gain = rng.uniform(-gain_db, gain_db, len(x)).astype(np.float32) / 10
    return (x + gain[:, None, None, None]).astype(np.float32)


def quietest_chunks(x: np.ndarray, share: float = 0.1, most: int = NOISE_CHUNKS) -> np.ndarray:
    """The `share` (at most `most`, at least 1) of chunks x (n, bins, frames, 1) with the
    lowest mean log power: the data's own background noise."""
    count = int(min(most, max(1, round(share * len(x)))))
    loudness = x.reshape(len(x), -1).mean(axis=1)
    return x[np.sort(np.argsort(loudness, kind="stable")[:count])]


def host_array(x) -> np.ndarray:
    """x as a numpy array: augmentation works on the host, and a backend tensor source (chunks
    on the GPU) gives tensors."""
    return x if isinstance(x, np.ndarray) else keras.ops.convert_to_numpy(x)


class AugmentedBatches(ChunkBatches):
    """Training batches with augmentation and, optionally, per-chunk loss weights.

    next_positions: (n,) for each chunk the position (index into `rows`) of the next chunk of
        its recording, -1 for a recording's last chunk; first_of_recording: (n,) bool. A chunk
        is cropped across itself and the next; a single-chunk recording is rolled instead.
    next_overlaps: (n,) frames the next chunk repeats of each chunk (`crop_across`), None for
        none.
    noise: (k, bins, frames, 1) raw chunks mixed in as background noise (needed for "noise").
    band_means: (bins,) the training data's per-band mean, SpecAugment's fill.
    class_weights: (classes,) loss weight of each class, or None; a batch then carries
        sample weights y @ class_weights (mixed labels weigh by their mix).
    Other arguments as ChunkBatches.
    """

    def __init__(
        self,
        *args,
        settings: AugmentSettings,
        next_positions: np.ndarray,
        first_of_recording: np.ndarray,
        next_overlaps: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        band_means: np.ndarray | None = None,
        class_weights: np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        unknown = set(settings.use) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}")
        if "noise" in settings.use and (noise is None or not len(noise)):
            raise ValueError("the noise augmentation needs noise chunks")
        self.settings, self.noise, self.class_weights = settings, noise, class_weights
        self.band_means = band_means
        self.next_positions = np.asarray(next_positions, dtype=np.int64)
        self.first_of_recording = np.asarray(first_of_recording, dtype=bool)
        self.next_overlaps = (
            np.zeros(len(self.next_positions), np.int64)
            if next_overlaps is None
            else np.asarray(next_overlaps, dtype=np.int64)
        )
        self.epoch = 0

    def batch(self, index: int) -> tuple:
        """Batch `index` augmented, before `padded`: (x, y) or (x, y, sample weights)."""
        x, y = super().batch(index)
        x = host_array(x)
        positions = self.positions(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        use, settings = self.settings.use, self.settings
        if "crop" in use:
            x = self._crop(x, positions, rng)
        if "gain" in use:
            x = random_gain(x, rng, settings.gain_db)
        if "noise" in use:
            x = add_noise(x, self.noise, rng, settings.noise_share, settings.noise_db)
        # the labels alone, mixed as y is, weigh a chunk: background species' target shares
        # (`ChunkBatches`) are no class a chunk stands for
        labels = np.eye(self.n_classes, dtype=np.float32)[self.labels[positions]]
        if "mixup" in use:
            x, both = mixup(
                x, np.hstack([y, labels]), rng, settings.mixup_alpha, settings.mixup_share
            )
            y, labels = both[:, : self.n_classes], both[:, self.n_classes :]
        if "specaugment" in use:
            x = spec_augment(x, rng, settings.time_masks, settings.freq_masks, self.band_means)
        if self.class_weights is None:
            return x, y
        return x, y, (labels @ self.class_weights).astype(np.float32)

    def _crop(self, x: np.ndarray, positions: np.ndarray, rng: np.random.Generator):
        frames = x.shape[2]
        following = self.next_positions[positions]
        has_next = following >= 0
        out = x.copy()
        if has_next.any():
            second = host_array(self.chunks(following[has_next]))
            overlaps = self.next_overlaps[positions[has_next]]
            offsets = rng.integers(0, frames - overlaps + 1)
            out[has_next] = crop_across(x[has_next], second, offsets, overlaps)
        alone = ~has_next & self.first_of_recording[positions]
        if alone.any():
            out[alone] = roll_time(x[alone], rng.integers(0, frames, int(alone.sum())))
        return out

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        self.epoch += 1
