"""The comparison statistics against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.stats import mcnemar_exact, paired_bootstrap_ci


def test_mcnemar_known_table():
    # b=1, c=9: 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375, abs=1e-15)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)


def test_mcnemar_equal_counts_and_no_discordance():
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_extreme_and_large_counts():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    # large counts stay exact and finite (integers, no float overflow)
    p = mcnemar_exact(400, 600)
    expected = 2 * sum(math.comb(1000, k) for k in range(401)) / 2**1000
    assert p == pytest.approx(expected, rel=1e-12)
    assert 0 < p < 1e-9


def test_mcnemar_agrees_with_scipy():
    from scipy.stats import binomtest

    for b, c in [(3, 12), (7, 9), (0, 1), (20, 4)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_rejects_negative():
    with pytest.raises(FlowerfastError):
        mcnemar_exact(-1, 3)


def _synthetic(n=400, acc_a=0.85, acc_b=0.75, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random(n) < acc_a, rng.random(n) < acc_b


def test_bootstrap_contains_the_observed_difference():
    # 200 images: A right on 170, B right on 150 -> the difference is exactly +0.10
    a = np.array([True] * 170 + [False] * 30)
    b = np.array([True] * 140 + [False] * 30 + [True] * 10 + [False] * 20)
    diff, lo, hi = paired_bootstrap_ci(a, b, n_resamples=2000, seed=0)
    assert diff == pytest.approx(0.10)
    assert lo < 0.10 < hi
    assert lo > 0  # 40 discordant images, 35 to 5: clearly positive


def test_bootstrap_covers_the_true_difference_about_95_percent_of_the_time():
    # models drawn with accuracies 0.85 and 0.75 (true difference 0.10), 100 validation sets
    hits = 0
    for seed in range(100):
        a, b = _synthetic(n=200, seed=seed)
        _, lo, hi = paired_bootstrap_ci(a, b, n_resamples=500, seed=seed)
        hits += lo <= 0.10 <= hi
    assert hits >= 85


def test_bootstrap_identical_models_give_zero_width():
    a, _ = _synthetic()
    assert paired_bootstrap_ci(a, a, n_resamples=200, seed=3) == (0.0, 0.0, 0.0)


def test_bootstrap_is_deterministic_with_a_seed():
    a, b = _synthetic(n=60)
    first = paired_bootstrap_ci(a, b, n_resamples=500, seed=7)
    assert paired_bootstrap_ci(a, b, n_resamples=500, seed=7) == first
    assert paired_bootstrap_ci(a, b, n_resamples=500, seed=8) != first


def test_bootstrap_wider_at_higher_level():
    a, b = _synthetic(n=100)
    _, lo90, hi90 = paired_bootstrap_ci(a, b, n_resamples=2000, seed=0, level=0.90)
    _, lo99, hi99 = paired_bootstrap_ci(a, b, n_resamples=2000, seed=0, level=0.99)
    assert lo99 < lo90 and hi99 > hi90
    # the same resamples drawn here: each interval is exactly the percentiles its level asks for
    d = a.astype(float) - b.astype(float)
    idx = np.random.default_rng(0).integers(0, d.size, size=(2000, d.size))
    means = d[idx].mean(axis=1)
    assert (lo90, hi90) == pytest.approx(tuple(np.percentile(means, [5, 95])), abs=1e-12)
    assert (lo99, hi99) == pytest.approx(tuple(np.percentile(means, [0.5, 99.5])), abs=1e-12)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(FlowerfastError):
        paired_bootstrap_ci([True, False], [True])
    with pytest.raises(FlowerfastError):
        paired_bootstrap_ci([], [])


def test_confusion_counts_agree_with_scikit_learn():
    from sklearn.metrics import confusion_matrix

    from flowerfast.core.stats import confusion_counts

    rng = np.random.default_rng(0)
    classes = ["daisy", "rose", "tulip"]
    labels = list(rng.choice(classes, 200))
    predicted = list(rng.choice(classes, 200))
    assert confusion_counts(labels, predicted, classes) == confusion_matrix(labels, predicted, labels=classes).tolist()
    assert confusion_counts(["daisy", "lily"], ["lily", "daisy"], ["daisy"]) == [
        [0]
    ]  # outside the classes: not counted
