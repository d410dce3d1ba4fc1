"""Augmentation of training batches: shapes, bounds, label mixing, reproducibility."""

import dataclasses

import numpy as np
import pytest

from preprocess.params import SpectrogramParams
from preprocess.spectrogram import split_chunks
from train.augment import (
    AugmentedBatches,
    AugmentSettings,
    add_noise,
    crop_across,
    mask_spans,
    mixup,
    quietest_chunks,
    random_gain,
    roll_time,
    spec_augment,
)

BINS, FRAMES = 8, 12


def batch(n=6, seed=0):
    return np.random.default_rng(seed).normal(3, 1, (n, BINS, FRAMES, 1)).astype(np.float32)


def test_crop_across_neighbouring_chunks_is_a_window_of_the_recording():
    first, second = batch(3, 1), batch(3, 2)
    offsets = np.array([0, 5, FRAMES])
    cropped = crop_across(first, second, offsets)
    assert cropped.shape == first.shape
    np.testing.assert_array_equal(cropped[0], first[0])
    np.testing.assert_array_equal(cropped[2], second[2])
    joined = np.concatenate([first[1], second[1]], axis=1)
    np.testing.assert_array_equal(cropped[1], joined[:, 5 : 5 + FRAMES])


def test_crop_across_a_recordings_last_chunk_skips_the_frames_it_repeats():
    """30 frames in chunks of 12 start at 0, 12 and 18 (the last moved back to end with the
    recording): the last two share 6 frames, and every crop across them is a true window."""
    spec = np.random.default_rng(0).normal(size=(BINS, 30)).astype(np.float32)
    chunks = split_chunks(spec, dataclasses.replace(SpectrogramParams(), chunk_frames=FRAMES))
    np.testing.assert_array_equal(chunks[2], spec[:, 18:30])
    offsets = np.arange(7)  # 0 .. frames - overlap
    first = np.repeat(chunks[1][None, ..., None], len(offsets), axis=0)
    second = np.repeat(chunks[2][None, ..., None], len(offsets), axis=0)
    cropped = crop_across(first, second, offsets, np.full(len(offsets), 6))
    for offset, window in zip(offsets, cropped, strict=True):
        np.testing.assert_array_equal(window[..., 0], spec[:, 12 + offset : 24 + offset])


def test_roll_keeps_every_frame():
    x = batch(2)
    rolled = roll_time(x, np.array([0, 3]))
    np.testing.assert_array_equal(rolled[0], x[0])
    np.testing.assert_array_equal(rolled[1], np.roll(x[1], 3, axis=1))


def test_mixup_labels_sum_to_one_and_follow_the_features():
    rng = np.random.default_rng(0)
    x = batch(64)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 64)]
    x_mixed, y_mixed = mixup(x, y, np.random.default_rng(1), alpha=0.4, share=0.5)
    assert x_mixed.shape == x.shape and y_mixed.shape == y.shape
    np.testing.assert_allclose(y_mixed.sum(axis=1), 1, rtol=1e-6)
    assert (y_mixed.max(axis=1) >= 0.5 - 1e-6).all()  # the chunk's own label dominates
    changed = ~np.all(x_mixed == x, axis=(1, 2, 3))
    assert 10 < changed.sum() < 54  # about half the chunks mixed
    assert np.all((y_mixed != y).any(axis=1) <= changed)  # labels change only with the chunk


def test_masks_stay_inside_the_chunk_and_fill_with_its_mean():
    starts, ends = mask_spans(np.random.default_rng(0), 200, FRAMES, count=2)
    assert starts.shape == ends.shape == (200, 2)
    assert (starts >= 0).all() and (ends <= FRAMES).all()
    assert (ends - starts >= 0).all() and (ends - starts).max() == FRAMES // 8
    x = batch(50)
    masked = spec_augment(x, np.random.default_rng(0), time_masks=2, freq_masks=2)
    assert masked.shape == x.shape and masked.dtype == np.float32
    changed = masked != x
    assert changed.any()
    means = x.mean(axis=(1, 2, 3))
    for chunk in range(len(x)):
        np.testing.assert_allclose(masked[chunk][changed[chunk]], means[chunk], rtol=1e-6)
    band_means = np.arange(BINS, dtype=np.float32) - 20  # far from every value of x
    filled = spec_augment(x, np.random.default_rng(0), 2, 2, fill=band_means)
    bands = np.broadcast_to(band_means[None, :, None, None], x.shape)
    np.testing.assert_array_equal(filled[changed], bands[changed])  # same masks, band fill
    np.testing.assert_array_equal(filled[~changed], x[~changed])


def test_noise_is_added_in_the_power_domain_and_gain_is_an_offset():
    x = batch(40)
    noise = np.full((1, BINS, FRAMES, 1), 3.0, dtype=np.float32)
    mixed = add_noise(x, noise, np.random.default_rng(0), share=1.0, level_db=(0.0, 0.0))
    np.testing.assert_allclose(mixed, np.log10(10.0**x + 10.0**3), rtol=1e-5)
    assert (mixed >= x - 1e-6).all()  # noise only ever adds power
    gained = random_gain(x, np.random.default_rng(0), gain_db=6)
    offsets = (gained - x).reshape(len(x), -1)
    np.testing.assert_allclose(offsets, offsets[:, :1].repeat(offsets.shape[1], 1), atol=1e-5)
    assert np.abs(offsets).max() <= 0.6 + 1e-6


def test_quietest_chunks_are_the_lowest_mean():
    x = batch(20)
    x[[3, 7]] -= 5
    np.testing.assert_array_equal(quietest_chunks(x, share=0.1), x[[3, 7]])


def make_batches(
    seed: int, use=("crop", "mixup", "specaugment", "noise", "gain"), background_weight=0.0
):
    x = batch(20)
    recording = np.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 9, 10, 11, 12, 13])
    same_next = np.append(recording[1:] == recording[:-1], False)
    return AugmentedBatches(
        x,
        np.arange(20),
        recording % 3,
        3,
        8,
        shuffle=True,
        seed=seed,
        background=np.eye(3, dtype=bool)[(recording + 1) % 3],  # another class than the label
        background_weight=background_weight,
        settings=AugmentSettings(use=use),
        next_positions=np.where(same_next, np.arange(20) + 1, -1),
        first_of_recording=np.insert(recording[1:] != recording[:-1], 0, True),
        noise=quietest_chunks(x),
        class_weights=np.array([1.0, 2.0, 0.5], dtype=np.float32),
    )


def test_augmented_batches_are_reproducible_with_the_seed():
    one, same, other = make_batches(3), make_batches(3), make_batches(4)
    for index in (2, 0, 1):  # any order, as worker threads may ask
        x, y, weights = one[index]
        x_same, y_same, _ = same[index]
        np.testing.assert_array_equal(x, x_same)
        np.testing.assert_array_equal(y, y_same)
        assert x.shape[1:] == (BINS, FRAMES, 1) and y.shape[1] == 3
        np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
        np.testing.assert_allclose(weights, y @ np.array([1.0, 2.0, 0.5]), rtol=1e-6)
    assert not np.array_equal(one[0][0], other[0][0])
    first_epoch = one[0][0]
    one.on_epoch_end()
    assert not np.array_equal(one[0][0], first_epoch)  # new draws every epoch


def test_background_targets_leave_a_chunks_weight_to_its_label():
    """The same draws as without background targets; only y differs, and the class weights
    still weigh each chunk by its (mixed) label, not by its background species."""
    for index in (0, 1, 2):
        x, y, weights = make_batches(3)[index]
        x_bg, y_bg, weights_bg = make_batches(3, background_weight=0.5)[index]
        np.testing.assert_array_equal(x, x_bg)
        np.testing.assert_array_equal(weights, weights_bg)
        assert not np.allclose(y, y_bg)
        np.testing.assert_allclose(y_bg.sum(axis=1), 1, rtol=1e-6)


def test_unknown_augmentation_or_missing_noise_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        make_batches(0, use=("wobble",))
    x = batch(4)
    with pytest.raises(ValueError, match="noise"):
        AugmentedBatches(
            x, np.arange(4), np.zeros(4, int), 2, 2, settings=AugmentSettings(use=("noise",)),
            next_positions=-np.ones(4, int), first_of_recording=np.ones(4, bool),
        )  # fmt: skip
