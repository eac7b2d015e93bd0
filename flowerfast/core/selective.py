"""Answering only when sure: coverage, the risk-coverage curve, the confidence a target accuracy
needs, and how well a score tells the photos a model knows from the ones it does not.

Why a threshold on the calibrated top probability: a classifier always names one of its classes,
so a photo of a cat gets "rose, 71%". Below a minimum confidence ``P`` flowerfast answers
"unknown" instead. Raising ``P`` answers fewer photos (coverage) and, for a useful score, gets
more of the answered ones right; the risk-coverage curve shows that trade on labelled photos, and
:func:`lowest_confidence_for` names the lowest ``P`` reaching a chosen accuracy, so the user picks
an accuracy rather than guess a probability. :func:`auroc` measures a score against photos that
are not flowers at all (0.5: no better than chance, 1: every flower scores above every other photo).

numpy only; exact counts, no interpolation: every figure can be checked by hand from
``predictions.csv``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from flowerfast.core.errors import FlowerfastError


def check_probability(value: float, parameter: str) -> float:
    """A threshold or target accuracy must be a probability: between 0 and 1."""
    if not 0.0 <= value <= 1.0:
        raise FlowerfastError(f"${parameter} must be between 0 and 1, not {value:g}", parameters=(parameter,))
    return float(value)


def is_answered(confidence: float, min_confidence: Optional[float], unfamiliar: bool = False) -> bool:
    """The one rule, used by predict, evaluate and serve alike: with a ``min_confidence`` asked
    for, answer when the top probability is at least that and the photo is not unfamiliar (unlike
    every training class, :mod:`flowerfast.models.familiarity`); without one, always answer."""
    return min_confidence is None or (confidence >= min_confidence and not unfamiliar)


UNFAMILIAR = -1.0
"""The confidence an unfamiliar photo counts with in coverage figures: below every threshold."""


def gated(confidence: Sequence[float], unfamiliar: Sequence[bool]) -> list[float]:
    """The confidences :func:`is_answered` thresholds: an unfamiliar photo's is :data:`UNFAMILIAR`,
    so the coverage figures of this module follow the same rule."""
    return [UNFAMILIAR if u else float(c) for c, u in zip(confidence, unfamiliar)]


@dataclass
class Coverage:
    """What answering only at ``confidence >= min_confidence`` gives on labelled photos:
    ``answered`` of ``images`` (``coverage``), ``accuracy`` on the answered ones (``None`` when
    none is answered)."""

    min_confidence: float
    images: int
    answered: int
    coverage: float
    accuracy: Optional[float]

    def to_dict(self) -> dict:
        return asdict(self)


def coverage_at(confidence: Sequence[float], correct: Sequence[bool], min_confidence: float) -> Coverage:
    """:class:`Coverage` of the threshold ``min_confidence``."""
    conf, right = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    answered = conf >= min_confidence
    n = int(answered.sum())
    accuracy = float(right[answered].mean()) if n else None
    return Coverage(float(min_confidence), len(conf), n, n / len(conf) if len(conf) else 0.0, accuracy)


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk-coverage curve: ``(thresholds, coverage, risk)``, one point per distinct
    confidence, from the most confident photo down. At ``thresholds[k]`` the photos with
    confidence ``>= thresholds[k]`` are answered: ``coverage[k]`` of them, ``risk[k]`` of those
    wrong (1 - accuracy). Tied confidences are answered together, as the threshold would."""
    conf, right = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    if conf.shape != right.shape or conf.ndim != 1:
        raise ValueError("confidence and correct must be 1-D and of one length")
    if len(conf) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]  # the end of each run of equal confidences
    answered = np.arange(1, len(conf) + 1)[last_of_tie]
    wrong = np.cumsum(~right)[last_of_tie]
    return conf[last_of_tie], answered / len(conf), wrong / answered


def lowest_confidence_for(
    confidence: Sequence[float], correct: Sequence[bool], target_accuracy: float
) -> Optional[Coverage]:
    """The lowest minimum confidence whose answered photos reach ``target_accuracy``, with what it
    covers; ``None`` when no threshold does (even the most confident photos are wrong too often).

    0 when answering every photo already reaches the target. Otherwise the threshold is a
    confidence of these photos, the lowest at which the answered ones are right often enough: the
    most photos answered at the target. Small sets give rough thresholds (one photo of 40 is 2.5
    points of accuracy): choose it on the validation split, check it on photos of its own.
    """
    check_probability(target_accuracy, "target_accuracy")
    thresholds, coverage, risk = risk_coverage(confidence, correct)
    reaching = np.nonzero(1.0 - risk >= target_accuracy - 1e-12)[0]
    if len(reaching) == 0:
        return None
    k = int(reaching[-1])  # the lowest threshold (thresholds fall as k grows)
    threshold = 0.0 if k == len(thresholds) - 1 else float(thresholds[k])
    return coverage_at(confidence, correct, threshold)


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The probability that a random ``positive`` (a photo of a known class) scores above a random
    ``negative`` (a photo of something else), ties counting half: the area under the ROC curve,
    computed exactly from ranks (Mann-Whitney U)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("auroc needs at least one score of each kind")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):  # tied values share their mean rank
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def max_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The top softmax probability at ``temperature``: the confidence ``--min-confidence`` reads."""
    z = np.asarray(logits, dtype=float) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)


def negative_energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``T * logsumexp(z / T)``, the energy score of Liu et al. (2020) with its sign turned so that
    higher means "more like the training photos", as for the other scores."""
    z = np.asarray(logits, dtype=float) / temperature
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def max_logit(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The largest output (over ``temperature``, which changes no ranking): a score that ignores
    how the other classes compare."""
    return np.asarray(logits, dtype=float).max(axis=1) / temperature


SCORES = {"max_probability": max_probability, "negative_energy": negative_energy, "max_logit": max_logit}
"""The scores :func:`auroc` is measured for, by name; the first is the one flowerfast answers by."""
