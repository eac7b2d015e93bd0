"""Statistics for comparing two classifiers on the same validation images.

Two models scored on one split are *paired*: each image is seen by both. Pairing is what makes a
small validation set informative, because images that both models get right (or both get wrong)
say nothing about which model is better and are left out of the noise. So the accuracy difference
gets a paired bootstrap interval (images resampled, both models' outcomes kept together), and the
significance test is McNemar's, which looks only at the discordant images. The test is computed
exactly (a binomial test on the discordant counts), not with the chi-square approximation, which is
poor for the handful of discordant images a small validation set has.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np

from flowerfast.core.errors import FlowerfastError


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``b``: images only the first model gets right; ``c``: images only the second gets right.
    Under "no difference" each discordant image is a fair coin, so the p-value is the two-sided
    binomial tail ``2 * P(X <= min(b, c))`` with ``X ~ Binomial(b + c, 1/2)``, capped at 1.
    Computed with integers, so it is exact for any count (no overflow, no rounding until the end).
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise FlowerfastError(f"discordant counts must be 0 or more (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_bootstrap_ci(
    correct_a: Sequence[bool], correct_b: Sequence[bool], n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B, with a percentile bootstrap interval.

    Images are resampled with replacement and each resampled image keeps both models' outcomes,
    so the interval reflects the pairing. Seeded, so the same inputs give the same interval.
    Returns ``(diff, lo, hi)``.
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise FlowerfastError(f"paired outcomes must be two lists of the same length (got {a.shape} and {b.shape})")
    if a.size == 0:
        raise FlowerfastError("no paired images to compare")
    if not 0 < level < 1:
        raise FlowerfastError(f"confidence level must be between 0 and 1 (got {level})")
    if n_resamples < 1:
        raise FlowerfastError(f"n_resamples must be at least 1 (got {n_resamples})")
    d = a - b
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    n = d.size
    means = np.empty(n_resamples)
    chunk = max(1, min(n_resamples, 4_000_000 // n))  # bound memory on large validation sets
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1 - level
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return diff, float(lo), float(hi)


def confusion_counts(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[list[int]]:
    """``[i][j]``: how many images of ``classes[i]`` were predicted as ``classes[j]``; a label or
    prediction outside ``classes`` is not counted. The one confusion matrix of flowerfast: a run's
    picture, ``evaluate``'s metrics and the comparison report all count with it."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for label, guess in zip(labels, predicted):
        if label in index and guess in index:
            matrix[index[label]][index[guess]] += 1
    return matrix
