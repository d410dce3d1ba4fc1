"""The official BirdCLEF score, one implementation for training and evaluation.

BirdCLEF ranks species per recording and scores the ranking by average precision (AP):
for each relevant species (the foreground one, and the background ones when they count)
the precision of the ranked list cut at that species' rank, averaged over the relevant
species; a relevant species that the run never returned scores 0. MAP is the mean of AP over
recordings. On complete rankings this equals scikit-learn's
`label_ranking_average_precision_score`, whose tie rule we share (a tie ranks against you).

The 2016 scripts instead scored chunks with scikit-learn's micro-averaged average precision;
`chunk_micro_ap` keeps that number under its own name for comparison with the original.
"""

from __future__ import annotations

import numpy as np


def ranking_average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Official AP of each recording's ranking.

    scores: (recordings, classes) float; higher ranks first; -inf marks a class the run did
        not return (a relevant class there adds precision 0).
    relevant: (recordings, classes) bool.
    Returns (recordings,) float AP, NaN for a recording without any relevant class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise ValueError(
            f"scores {scores.shape} and relevant {relevant.shape} "
            "must both be (recordings, classes)"
        )
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise ValueError("scores must be finite, or -inf for classes not returned")

    average_precision = np.full(len(scores), np.nan)
    for row, (row_scores, row_relevant) in enumerate(zip(scores, relevant, strict=True)):
        relevant_scores = row_scores[row_relevant]
        if relevant_scores.size == 0:
            continue
        # rank = how many classes score at least as high; hits = how many of them are relevant
        rank = (row_scores[None, :] >= relevant_scores[:, None]).sum(axis=1)
        hits = (relevant_scores[None, :] >= relevant_scores[:, None]).sum(axis=1)
        precision = np.where(np.isneginf(relevant_scores), 0.0, hits / rank)
        average_precision[row] = precision.mean()
    return average_precision


def mean_average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """MAP over the recordings that have at least one relevant class (NaN if none has)."""
    average_precision = ranking_average_precision(scores, relevant)
    if np.isnan(average_precision).all():
        return float("nan")
    return float(np.nanmean(average_precision))


POOLINGS = ("mean", "max", "power")  # recording-level pooling of chunk scores; mean is 2016's
POWER_EXPONENT = 3.0  # of the "power" mean: between the mean (1) and the max (infinity)


def recording_map(
    chunk_probs: np.ndarray,
    chunk_recording: np.ndarray,
    labels: np.ndarray,
    pooling: str = "mean",
) -> float:
    """The official MAP of chunk predictions pooled per recording (`recording_scores`).

    chunk_probs (chunks, C); chunk_recording (chunks,) recording index of each chunk; labels
    (recordings,) the class of each recording index.
    """
    ids, probs = recording_scores(chunk_probs, chunk_recording, pooling)
    return mean_average_precision(probs, np.eye(chunk_probs.shape[1], dtype=bool)[labels[ids]])


def recording_scores(
    chunk_probs: np.ndarray,
    recording_ids: np.ndarray,
    pooling: str = "mean",
    exponent: float = POWER_EXPONENT,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool chunk softmax outputs per recording and renormalise each to sum 1.

    chunk_probs: (chunks, classes); recording_ids: (chunks,) any hashable ids.
    pooling: "mean" (the 2016 scripts' average), "max" (a species heard in one chunk counts
        fully: long recordings whose bird sings rarely) or "power" ((mean p**exponent) **
        (1 / exponent), in between).
    Returns (ids (recordings,), probs (recordings, classes)), recordings in order of first
    appearance.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    chunk_probs = np.asarray(chunk_probs, dtype=np.float64)
    recording_ids = np.asarray(recording_ids)
    if len(chunk_probs) != len(recording_ids):
        raise ValueError(
            f"{len(chunk_probs)} chunk predictions but {len(recording_ids)} recording ids"
        )
    unique_ids, first_index, inverse = np.unique(
        recording_ids, return_index=True, return_inverse=True
    )
    order = np.argsort(first_index)
    pooled = np.zeros((len(unique_ids), chunk_probs.shape[1]))
    if pooling == "max":
        np.maximum.at(pooled, inverse, chunk_probs)
    elif pooling == "power":
        np.add.at(pooled, inverse, chunk_probs**exponent)
        pooled = (pooled / np.bincount(inverse)[:, None]) ** (1 / exponent)
    else:
        np.add.at(pooled, inverse, chunk_probs)  # the sum: renormalising makes it the mean
    pooled = pooled[order]
    totals = pooled.sum(axis=1, keepdims=True)
    probs = np.divide(pooled, totals, out=np.zeros_like(pooled), where=totals > 0)
    return unique_ids[order], probs


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest score is the label. scores (n, classes); labels (n,) int."""
    scores = np.asarray(scores)
    if len(scores) == 0:
        return float("nan")
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels)))


def chunk_micro_ap(chunk_probs: np.ndarray, onehot: np.ndarray) -> float:
    """The 2016 scripts' score: scikit-learn micro AP over chunks (not the official MAP)."""
    # imported here: scikit-learn takes 0.5 s to import, which every prediction worker
    # process (they import predict.py, and so this module) would pay for nothing
    from sklearn.metrics import average_precision_score

    onehot = np.asarray(onehot)
    if onehot.sum() == 0:
        return float("nan")
    return float(average_precision_score(onehot, np.asarray(chunk_probs), average="micro"))
