"""The official MAP, checked by hand and against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from train.metrics import (
    chunk_micro_ap,
    mean_average_precision,
    ranking_average_precision,
    recording_map,
    recording_scores,
    top1_accuracy,
)


def test_hand_computed_average_precision():
    # ranking: c, a, d, b; relevant a (rank 2) and b (rank 4): (1/2 + 2/4) / 2 = 0.5
    scores = np.array([[0.3, 0.1, 0.4, 0.2]])
    relevant = np.array([[True, True, False, False]])
    assert ranking_average_precision(scores, relevant) == pytest.approx([0.5])


def test_relevant_class_not_returned_scores_zero():
    # a at rank 1 (precision 1); b never returned (precision 0): AP = 0.5
    scores = np.array([[0.9, -np.inf, 0.1]])
    relevant = np.array([[True, True, False]])
    assert ranking_average_precision(scores, relevant) == pytest.approx([0.5])
    # the same relevant class ranked last instead of missing scores more
    ranked_last = np.array([[0.9, 0.0, 0.1]])
    assert ranking_average_precision(ranked_last, relevant)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_equals_sklearn_on_full_rankings_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(200, 12)).astype(float)  # many ties
    relevant = rng.random((200, 12)) < 0.2
    relevant[np.arange(200), rng.integers(0, 12, 200)] = True  # at least one per row
    ours = mean_average_precision(scores, relevant)
    assert ours == pytest.approx(label_ranking_average_precision_score(relevant, scores))


def test_rows_without_relevant_class_are_left_out():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    relevant = np.array([[False, False], [True, False]])
    ap = ranking_average_precision(scores, relevant)
    assert np.isnan(ap[0]) and ap[1] == pytest.approx(0.5)
    assert mean_average_precision(scores, relevant) == pytest.approx(0.5)


def test_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match="recordings, classes"):
        ranking_average_precision(np.zeros((2, 3)), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="finite"):
        ranking_average_precision(np.array([[np.nan, 1.0]]), np.array([[True, False]]))


def test_recording_scores_average_and_renormalise_in_first_seen_order():
    probs = np.array([[0.6, 0.4], [0.2, 0.8], [1.0, 0.0], [0.5, 0.3]])
    ids, averaged = recording_scores(probs, np.array(["b", "a", "b", "c"]))
    assert list(ids) == ["b", "a", "c"]
    np.testing.assert_allclose(averaged, [[0.8, 0.2], [0.2, 0.8], [0.625, 0.375]])
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0)


def test_top1_accuracy_and_chunk_micro_ap():
    scores = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    assert top1_accuracy(scores, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    perfect = chunk_micro_ap(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]]))
    assert perfect == pytest.approx(1.0)


def test_recording_pooling_max_and_power_mean_lie_around_the_mean():
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.6, 0.4]])
    ids = np.array([0, 0, 0, 1])
    _, mean = recording_scores(probs, ids, "mean")
    _, peak = recording_scores(probs, ids, "max")
    _, power = recording_scores(probs, ids, "power", exponent=3.0)
    np.testing.assert_allclose(mean[0], [1.1 / 3, 1.9 / 3])
    np.testing.assert_allclose(peak[0], [0.5, 0.5])  # max 0.9 each, renormalised
    cubes = np.array([0.9**3 + 2 * 0.1**3, 0.1**3 + 2 * 0.9**3]) / 3
    np.testing.assert_allclose(power[0], cubes ** (1 / 3) / (cubes ** (1 / 3)).sum())
    assert mean[0, 0] < power[0, 0] < peak[0, 0]  # the rare loud class gains with the exponent
    for pooled in (mean, peak, power):  # a one-chunk recording is its chunk, whatever the pooling
        np.testing.assert_allclose(pooled[1], [0.6, 0.4])
    with pytest.raises(ValueError, match="pooling"):
        recording_scores(probs, ids, "median")


def test_recording_map_pools_each_recordings_chunks_before_ranking():
    """Recording 0 (class 1): its mean ranks class 1 first, its max ranks class 0 first (one
    loud chunk); recording 1 (class 0) ranks class 0 first either way."""
    chunk_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    chunk_recording = np.array([0, 0, 0, 1])
    labels = np.array([1, 0])
    assert recording_map(chunk_probs, chunk_recording, labels, "mean") == pytest.approx(1.0)
    assert recording_map(chunk_probs, chunk_recording, labels, "max") == pytest.approx(0.75)
