"""Per-class detection thresholds, chosen on the validation recordings at the end of training.

For each class, the validation recordings are ranked by the class's recording-level score (chunk
softmax pooled with the run's pooling and renormalised, as prediction does); the threshold is the
one that maximises F1 of "score >= threshold" against "the recording's foreground class is this
one". It is placed halfway between the lowest score kept and the next score below it (or at the
lowest score kept when nothing is below), so that it does not sit exactly on one validation
recording. A class without validation recordings gets the documented fallback threshold
(FALLBACK_THRESHOLD, marked "fallback" in the file); so does a class whose best F1 is 0.

RUN/thresholds.json:
    {"model_file": "best_val_map.keras", "rule": "...", "fallback": 0.5,
     "classes": {"<ClassId>": {"threshold": t, "f1": f, "precision": p, "recall": r,
                              "support": n, "source": "max_f1" | "fallback"}, ...}}
`predict.py --thresholds run` applies them per class instead of one `--min-conf`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from preprocess.paths import write_text_atomically
from train.run_files import THRESHOLDS

FALLBACK_THRESHOLD = 0.5  # no validation positives: a detection needs a majority probability
RULE = (
    "max F1 per class on the validation recordings' recording-level scores, halfway to the "
    "next lower score; fallback for classes without validation positives"
)


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used; the message says which and why."""


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> dict:
    """Max-F1 threshold of one class. scores (recordings,) float; positive (recordings,) bool.

    Returns {"threshold", "f1", "precision", "recall", "support"}; threshold None when there
    is no positive (or no recording). Ties in F1 go to the higher threshold (fewer detections).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    support = int(positive.sum())
    result = {"threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0, "support": support}
    if support == 0:
        return result
    cutoffs = np.unique(scores)[::-1]  # falling: each is "keep every score >= cutoff"
    kept = scores[None, :] >= cutoffs[:, None]
    true_positives = (kept & positive).sum(axis=1)
    precision = true_positives / kept.sum(axis=1)
    recall = true_positives / support
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=precision + recall > 0,
    )
    best = int(np.argmax(f1))  # the first maximum: the highest cutoff
    if f1[best] == 0:
        return result
    below = cutoffs[best + 1] if best + 1 < len(cutoffs) else cutoffs[best]
    result.update(
        threshold=float((cutoffs[best] + below) / 2),
        f1=float(f1[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
    )
    return result


def choose_thresholds(
    recording_probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    fallback: float = FALLBACK_THRESHOLD,
) -> dict[str, dict]:
    """Per-class thresholds from validation recordings.

    recording_probs: (recordings, classes) recording-level scores; labels: (recordings,) int
    foreground class index (-1: unlabelled, counted as a negative everywhere).
    Returns {class_id: {"threshold", "f1", "precision", "recall", "support", "source"}}.
    """
    recording_probs = np.asarray(recording_probs, dtype=np.float64)
    labels = np.asarray(labels)
    if recording_probs.ndim != 2 or recording_probs.shape != (len(labels), len(classes)):
        raise ValueError(
            f"recording_probs {recording_probs.shape} must be (recordings {len(labels)}, "
            f"classes {len(classes)})"
        )
    chosen = {}
    for column, class_id in enumerate(classes):
        result = best_f1_threshold(recording_probs[:, column], labels == column)
        if result["threshold"] is None:
            result.update(threshold=float(fallback), source="fallback")
        else:
            result["source"] = "max_f1"
        chosen[class_id] = result
    return chosen


def write_thresholds(
    path: Path, chosen: dict[str, dict], model_file: str, fallback: float = FALLBACK_THRESHOLD
) -> None:
    document = {"model_file": model_file, "rule": RULE, "fallback": fallback, "classes": chosen}
    write_text_atomically(path, json.dumps(document, indent=1) + "\n")


def read_thresholds(path: Path, classes: Sequence[str]) -> tuple[np.ndarray, str]:
    """(thresholds (classes,) in the order of classes, the model file they were chosen for)."""
    if not path.is_file():
        raise ThresholdsError(
            f"{path} not found: this run has no per-class thresholds (runs trained before "
            "they existed); use --min-conf, or retrain"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        by_class = document["classes"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise ThresholdsError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    values = np.zeros(len(classes), dtype=np.float64)
    for index, class_id in enumerate(classes):
        try:
            values[index] = float(by_class[class_id]["threshold"])
        except (ValueError, KeyError, TypeError, OverflowError) as error:
            raise ThresholdsError(
                f"{path}: no threshold of class {class_id!r} ({type(error).__name__}: {error})"
            ) from None
        if not 0 <= values[index] <= 1:  # NaN too
            raise ThresholdsError(
                f"{path}: the threshold of class {class_id!r} is {values[index]}, not in [0, 1]"
            )
    return values, str(document.get("model_file", ""))


def save_validation_thresholds(
    run_dir: Path,
    model_file: str,
    batches,
    chunk_recording: np.ndarray,
    recording_labels: np.ndarray,
    classes: Sequence[str],
    pooling: str,
    exponent: float,
) -> dict[str, dict] | None:
    """Choose the thresholds of run_dir/model_file on the validation chunks and save them.

    pooling, exponent: the recording pooling prediction uses (inference.json), so the
    thresholds are chosen on the scores they will be compared with.

    batches: the validation chunks in order (a keras PyDataset, not shuffled);
    chunk_recording: (chunks,) recording index of each; recording_labels: (all recordings,)
    foreground class index. Returns the chosen thresholds, or None (with nothing written)
    when the model file or validation chunks are missing.
    """
    from train.metrics import recording_scores
    from train.saved_model import saved_model_probs  # imports Keras: only when training does

    model_path = run_dir / model_file
    if not model_path.is_file() or len(chunk_recording) == 0:
        return None
    chunk_probs = saved_model_probs(model_path, batches)
    ids, probs = recording_scores(chunk_probs, chunk_recording, pooling, exponent)
    chosen = choose_thresholds(probs, np.asarray(recording_labels)[ids.astype(int)], classes)
    write_thresholds(run_dir / THRESHOLDS, chosen, model_file)
    return chosen
