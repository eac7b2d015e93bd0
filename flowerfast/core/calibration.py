"""Calibration: how far a model's confidence is from its accuracy, and temperature scaling, the
one-number fix (Guo et al., "On Calibration of Modern Neural Networks", 2017).

Why: a fine-tuned network is usually over-confident: it says 99% where it is right 90% of the
time. Dividing its logits by a temperature ``T > 1`` softens every answer alike, so the ranking
of the classes (and so the accuracy) is unchanged, and the confidence can be read as a
probability. ``T`` is fitted on held-out photos by minimising their negative log-likelihood.

Everything here works on probabilities, not logits: ``log p`` differs from the logits by a
constant per image, which the softmax cancels, so ``softmax(log p / T)`` is the network's
``softmax(z / T)`` exactly (as far as float32 kept the small probabilities). numpy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

ECE_BINS = 15
TEMPERATURE_RANGE = (0.25, 10.0)
"""Where the fitted temperature may lie: wide enough for every real over- or under-confidence
(published fits are 1 to 3), narrow enough that a small validation split the model gets all
right cannot sharpen its answers without limit."""
MIN_IMAGES = 20
"""Fewer validation photos than this fit no temperature (it stays 1): too few to say anything."""
TINY = 1e-30  # a probability float32 rounded to 0 still has a finite log


def _log(probs) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), TINY))


def rescaled(probs, temperature: float) -> np.ndarray:
    """``probs`` (rows of softmax outputs) as the same network gives them at ``temperature``
    (relative to the one they were computed at): ``softmax(log p / T)``."""
    z = _log(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs, labels: Sequence[int]) -> float:
    """Mean ``-log p(true class)``: what the temperature is fitted to, lower is better."""
    p = np.asarray(probs, dtype=np.float64)
    return float(-_log(p[np.arange(len(p)), np.asarray(labels)]).mean())


def reliability_bins(probs, labels: Sequence[int], bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """``(mean confidence, accuracy, count)`` of the images whose top probability falls in each of
    ``bins`` equal-width bins of (0, 1] (empty bins give ``(nan, nan, 0)``): the reliability
    diagram, and what the expected calibration error sums."""
    p = np.asarray(probs, dtype=np.float64)
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    correct = predicted == np.asarray(labels)
    # bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first bin
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        out.append(
            (float(confidence[members].mean()), float(correct[members].mean()), n) if n else (math.nan, math.nan, 0)
        )
    return out


def expected_calibration_error(probs, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """The gap between confidence and accuracy, averaged over the reliability bins weighted by
    how many images each holds (15 bins, as in Guo et al.): 0 for a calibrated model."""
    total = len(labels)
    return float(sum(n * abs(conf - acc) for conf, acc, n in reliability_bins(probs, labels, bins) if n) / total)


def fit_temperature(probs, labels: Sequence[int], tolerance: float = 1e-4) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` under
    ``rescaled(probs, T)``, within :data:`TEMPERATURE_RANGE`.

    The likelihood is a convex function of ``1 / T`` (a log-sum-exp minus a linear term), so a
    golden-section search over ``log T`` finds its one minimum; no optimiser state, no learning
    rate, the same answer on every machine.
    """
    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(rescaled(probs, math.exp(log_t)), labels)

    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


@dataclass
class Calibration:
    """A temperature and what it did, on the photos it was fitted on (or measured on)."""

    temperature: float
    images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(probs, labels: Sequence[int]) -> Calibration:
    """Fit the temperature of ``probs`` (computed at temperature 1) on ``labels`` and measure the
    expected calibration error and negative log-likelihood before and after it (fewer than
    :data:`MIN_IMAGES` photos: temperature 1, measured only)."""
    temperature = fit_temperature(probs, labels) if len(labels) >= MIN_IMAGES else 1.0
    after = rescaled(probs, temperature)
    return Calibration(
        temperature=temperature,
        images=len(labels),
        ece_before=expected_calibration_error(probs, labels),
        ece_after=expected_calibration_error(after, labels),
        nll_before=negative_log_likelihood(probs, labels),
        nll_after=negative_log_likelihood(after, labels),
    )


def measure(probs, labels: Sequence[int], temperature: float) -> Calibration:
    """The calibration of a model that answered ``probs`` at ``temperature`` (its own): the
    figures at temperature 1 (``before``) and as it answered (``after``)."""
    before = rescaled(probs, 1 / temperature)
    return Calibration(
        temperature=temperature,
        images=len(labels),
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(probs, labels),
        nll_before=negative_log_likelihood(before, labels),
        nll_after=negative_log_likelihood(probs, labels),
    )


def before_and_after_bins(probs, labels: Sequence[int], calibration: Calibration) -> dict:
    """The reliability bins of ``probs`` (at temperature 1) and of the same probabilities at the
    fitted temperature, named with their ECE: what ``calibration.png`` draws, for a run that
    trained and for one calibrated afterwards."""
    t = calibration.temperature
    return {
        f"before (T=1, ECE {calibration.ece_before:.1%})": reliability_bins(probs, labels),
        f"after (T={t:.2f}, ECE {calibration.ece_after:.1%})": reliability_bins(rescaled(probs, t), labels),
    }
