"""Answering only when sure (``core.selective``) and the familiarity of a photo
(``models.familiarity``): each figure against a hand count, a brute-force search or scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.selective import (
    UNFAMILIAR,
    auroc,
    coverage_at,
    gated,
    is_answered,
    lowest_confidence_for,
    max_logit,
    max_probability,
    negative_energy,
    risk_coverage,
)
from flowerfast.models.familiarity import (
    class_prototypes,
    familiar_threshold,
    familiarity,
    fit_familiarity,
    pooled_features,
    training_sample,
)

CONFIDENCE = [0.9, 0.8, 0.8, 0.6, 0.5, 0.3]
CORRECT = [True, True, False, True, False, False]


def test_risk_coverage_answers_tied_confidences_together():
    thresholds, coverage, risk = risk_coverage(CONFIDENCE, CORRECT)
    assert thresholds.tolist() == [0.9, 0.8, 0.6, 0.5, 0.3]
    assert coverage.tolist() == pytest.approx([1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert risk.tolist() == pytest.approx([0, 1 / 3, 1 / 4, 2 / 5, 3 / 6])


def test_the_lowest_confidence_for_a_target_by_hand():
    assert lowest_confidence_for(CONFIDENCE, CORRECT, 0.75).min_confidence == 0.6  # 3 of 4 right
    reached = lowest_confidence_for(CONFIDENCE, CORRECT, 0.7)
    assert (reached.min_confidence, reached.answered, reached.accuracy) == (0.6, 4, 0.75)
    assert lowest_confidence_for(CONFIDENCE, CORRECT, 1.0).min_confidence == 0.9
    assert lowest_confidence_for(CONFIDENCE, CORRECT, 0.5).min_confidence == 0.0  # everything answered reaches it
    assert lowest_confidence_for([0.9, 0.4], [False, True], 0.9) is None  # the most confident is wrong


def test_the_lowest_confidence_equals_a_brute_force_search():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        conf = np.round(rng.random(n), 2)  # ties on purpose
        correct = rng.random(n) < conf
        target = float(rng.choice([0.5, 0.7, 0.9, 0.95]))
        candidates = sorted({0.0, *conf.tolist()})
        ok = [p for p in candidates if (conf >= p).any() and correct[conf >= p].mean() >= target - 1e-12]
        found = lowest_confidence_for(conf, correct, target)
        if not ok:
            assert found is None
            continue
        best = min(ok)
        # a threshold at or below the lowest confidence answers every photo: 0 says so
        expected = 0.0 if (conf >= best).all() else best
        assert found.min_confidence == expected
        assert found.accuracy >= target - 1e-12


def test_coverage_at_a_threshold_and_the_unfamiliar_are_never_answered():
    at = coverage_at(CONFIDENCE, CORRECT, 0.8)
    assert (at.images, at.answered, at.coverage, at.accuracy) == (6, 3, 0.5, pytest.approx(2 / 3))
    assert coverage_at(CONFIDENCE, CORRECT, 0.95).accuracy is None
    assert gated([0.9, 0.2], [True, False]) == [UNFAMILIAR, 0.2]
    assert coverage_at(gated(CONFIDENCE, [True] + [False] * 5), CORRECT, 0.0).answered == 5
    assert is_answered(0.3, None, unfamiliar=True)  # without a minimum confidence every photo is answered
    assert not is_answered(0.99, 0.5, unfamiliar=True) and not is_answered(0.4, 0.5) and is_answered(0.5, 0.5)


def test_a_target_outside_zero_to_one_is_refused_by_name():
    with pytest.raises(FlowerfastError) as caught:
        lowest_confidence_for(CONFIDENCE, CORRECT, 95)
    assert str(caught.value) == "target_accuracy must be between 0 and 1, not 95"


def test_auroc_equals_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    pos, neg = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0], [1]) == 0.0 and auroc([1], [1]) == 0.5


def test_the_scores_from_logits():
    logits = torch.randn(20, 5, generator=torch.Generator().manual_seed(0)) * 3
    t = 1.7
    assert max_probability(logits.numpy(), t) == pytest.approx(torch.softmax(logits / t, 1).max(1).values.numpy())
    assert negative_energy(logits.numpy(), t) == pytest.approx((t * torch.logsumexp(logits / t, 1)).numpy())
    assert max_logit(logits.numpy()) == pytest.approx(logits.max(1).values.numpy())


def test_prototypes_are_the_unit_class_means():
    feats = pooled_features(torch.randn(12, 8, 3, 3, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(feats.norm(dim=1), torch.ones(12))
    targets = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    protos = class_prototypes(feats, targets, 3)
    mean0 = feats[0::2].mean(0)
    assert torch.allclose(protos[0], mean0 / mean0.norm(), atol=1e-6)
    assert protos[2].abs().sum() == 0  # a class without photos is similar to nothing
    fam = familiarity(feats, protos)
    assert torch.allclose(fam, torch.stack([(feats @ protos[0]), (feats @ protos[1])]).max(0).values)


def test_the_conformal_threshold_refuses_at_most_alpha_of_photos_like_the_validation_ones():
    values = list(np.linspace(0.0, 1.0, 199))  # n = 199: alpha (n + 1) = 2 at alpha 1%
    assert familiar_threshold(values, 0.01) == values[1]
    assert familiar_threshold(values[:40], 0.01) == values[0]  # fewer than 1 / alpha photos: the lowest
    # a new photo drawn like the validation ones is refused at the promised rate, over many draws
    rng = np.random.default_rng(3)
    refused = []
    for _ in range(2000):
        draws = rng.random(100)
        refused.append(rng.random() < familiar_threshold(draws, 0.05))
    assert np.mean(refused) == pytest.approx(5 / 101, abs=0.015)  # floor(0.05 * 101) = 5


def test_fit_familiarity_and_the_training_sample():
    feats = pooled_features(torch.randn(30, 4, 2, 2, generator=torch.Generator().manual_seed(4)))
    prototypes, fam = fit_familiarity(feats[:20], [i % 2 for i in range(20)], feats[20:], 2)
    assert prototypes.shape == (2, 4)
    assert (fam.validation_photos, fam.training_photos, fam.alpha) == (10, 20, 0.01)
    assert fam.threshold == pytest.approx(float(familiarity(feats[20:], prototypes).min()))
    labels = ["a"] * 250 + ["b"] * 30
    chosen = training_sample(labels, per_class=100)
    assert chosen == sorted(chosen) and training_sample(labels, per_class=100) == chosen  # fixed
    assert sum(labels[i] == "a" for i in chosen) == 100 and sum(labels[i] == "b" for i in chosen) == 30
