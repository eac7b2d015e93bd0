"""Scoring several labels per photo: per-class F1 at a threshold, average precision (and its mean
over classes, mAP), and each class's threshold tuned for F1. numpy only.

Why these and not accuracy: with several labels a photo is rarely all right or all wrong, and
most (photo, class) pairs are "no", so per-label accuracy is high for a model that answers "no"
everywhere. F1 counts only the answers and the labels that matter; average precision scores the
ranking of each class's probabilities whatever the threshold, which is what the best model of a
run is chosen by (the thresholds are tuned afterwards). Why one threshold per class: a class seen
in few photos gets lower probabilities, and 0.5 would rarely answer it at all.

The average precision is scikit-learn's ``average_precision_score`` (the step-wise area under the
precision-recall curve, with tied scores taken together), computed exactly;
``tests/test_multilabel.py`` checks it against scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """One class's average precision; ``None`` when no photo has the class (it is undefined)."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth).astype(bool)
    positives = int(truth.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # each distinct score's last index
    tp = np.cumsum(truth)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_steps = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_steps * precision))


def mean_average_precision(probs: np.ndarray, targets: np.ndarray) -> Optional[float]:
    """The mean of the classes' average precisions, over the classes some photo has."""
    aps = [average_precision(probs[:, c], targets[:, c]) for c in range(probs.shape[1])]
    known = [a for a in aps if a is not None]
    return float(np.mean(known)) if known else None


def f1_counts(answers: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives per class of 0/1 answers."""
    answers, truth = np.asarray(answers).astype(bool), np.asarray(truth).astype(bool)
    return (answers & truth).sum(0), (answers & ~truth).sum(0), (~answers & truth).sum(0)


def f1_from_counts(tp, fp, fn) -> np.ndarray:
    """Per-class F1, ``2tp / (2tp + fp + fn)``; NaN for a class neither answered nor in any photo
    (undefined: left out of the macro mean, as mAP leaves it out)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


def answers_at(probs: np.ndarray, thresholds) -> np.ndarray:
    """Each class answered where its probability reaches its threshold."""
    return np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]


def tune_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Each class's threshold with the best F1 on these photos: every distinct probability is
    tried (the midpoint between it and the next lower one, so a threshold is never exactly a
    photo's score); among equal F1s the one nearest 0.5 wins, and a class no photo has keeps 0.5."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    out = []
    for c in range(probs.shape[1]):
        p, t = probs[:, c], targets[:, c]
        if not t.any():
            out.append(DEFAULT_THRESHOLD)
            continue
        values = np.unique(p)[::-1]
        candidates = np.r_[(values[:-1] + values[1:]) / 2, values[-1] / 2, DEFAULT_THRESHOLD]
        answers = p[None, :] >= candidates[:, None]
        tp = (answers & t).sum(1)
        f1 = 2 * tp / (answers.sum(1) + t.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out.append(float(candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]]))
    return out


@dataclass
class MultiLabelScores:
    """What a multi-label model scores on labelled photos at its thresholds (see the module)."""

    classes: list[str]
    thresholds: list[float]
    f1: list[Optional[float]]
    precision: list[float]
    recall: list[float]
    average_precision: list[Optional[float]]
    support: list[int]
    macro_f1: float
    mean_average_precision: Optional[float]
    exact_match: float
    label_accuracy: float
    n: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        per_class = {
            c: {"threshold": t, "f1": f, "precision": p, "recall": r, "average_precision": a, "support": s}
            for c, t, f, p, r, a, s in zip(
                self.classes,
                self.thresholds,
                self.f1,
                self.precision,
                self.recall,
                self.average_precision,
                self.support,
            )
        }
        return {
            "macro_f1": self.macro_f1,
            "mAP": self.mean_average_precision,
            "exact_match": self.exact_match,
            "label_accuracy": self.label_accuracy,
            "photos": self.n,
            "per_class": per_class,
            **self.extra,
        }


def score_multi_label(probs: np.ndarray, targets: np.ndarray, classes, thresholds=None) -> MultiLabelScores:
    """F1, precision and recall per class at ``thresholds`` (0.5 each by default), their macro
    mean, average precision and mAP, the share of photos with every label right, and per-label
    accuracy (fastai's ``accuracy_multi``)."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    thresholds = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * probs.shape[1]
    answers = answers_at(probs, thresholds)
    tp, fp, fn = f1_counts(answers, targets)
    f1 = f1_from_counts(tp, fp, fn)
    return MultiLabelScores(
        classes=list(classes),
        thresholds=[float(t) for t in thresholds],
        f1=[None if np.isnan(v) else float(v) for v in f1],
        precision=np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0).tolist(),
        recall=np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0).tolist(),
        average_precision=[average_precision(probs[:, c], targets[:, c]) for c in range(probs.shape[1])],
        support=targets.sum(0).astype(int).tolist(),
        macro_f1=float(np.nanmean(f1)) if np.isfinite(f1).any() else 0.0,
        mean_average_precision=mean_average_precision(probs, targets),
        exact_match=float((answers == targets).all(1).mean()) if len(probs) else 0.0,
        label_accuracy=float((answers == targets).mean()) if len(probs) else 0.0,
        n=len(probs),
    )
