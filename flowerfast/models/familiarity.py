"""Familiarity: does a photo look like the photos the model was trained on at all?

Why: a classifier's probabilities say which of its classes a photo is most like, not whether it
is like any of them. Measured on a fine-tuned EfficientNet-Lite0 and real photos of other things
(a cat, coffee, a rocket...), the top probability tells flowers from them no better than chance
(AUROC about 0.45, ``benchmarks/bench_answers.py``): the cat gets "sunflower, 59%". The network's
features know better, since they come from ImageNet: the cosine similarity between a photo's
pooled features and the mean features of each training class (its prototype) is far higher for
flowers (AUROC 1.0 there).

The threshold comes from held-out photos, the conformal way: with the familiarities of ``n``
validation photos sorted, a photo below the ``k``-th lowest, ``k = max(1, floor(alpha (n + 1)))``,
is unfamiliar. A new photo like the validation ones falls there with probability ``k / (n + 1)``:
at most ``alpha`` of real flowers are refused once there are ``1 / alpha`` validation photos
(``1 / (n + 1)`` before). Plain torch: training and inference compute it alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

FAMILIARITY_ALPHA = 0.01
"""The share of flower photos like the validation ones that may be called unfamiliar."""

PHOTOS_PER_CLASS = 100
"""Training photos per class the prototypes are averaged from: a mean settles long before, and
a big data set then costs a few seconds, not another epoch."""

PROTOTYPES_KEY = "flowerfast.prototypes"
"""The name of the prototypes tensor in a model's safetensors file, beside the network's weights."""


@dataclass
class Familiarity:
    """A model's rule for unfamiliar photos: below ``threshold`` (a cosine similarity) a photo is
    unlike every class; fitted on ``validation_photos`` held-out photos at ``alpha``, from
    prototypes of ``training_photos`` training photos."""

    threshold: float
    alpha: float
    validation_photos: int
    training_photos: int

    def to_dict(self) -> dict:
        return asdict(self)


def pooled_features(feature_map: torch.Tensor) -> torch.Tensor:
    """A body's feature map ``(N, C, H, W)`` to unit-length features ``(N, C)`` (average pooled)."""
    return torch.nn.functional.normalize(feature_map.float().mean(dim=(2, 3)), dim=1)


def class_prototypes(features: torch.Tensor, targets: Sequence[int], n_classes: int) -> torch.Tensor:
    """Each class's mean unit feature, made unit length again: ``(n_classes, C)``. A class with
    no photo gets a zero row (similar to nothing)."""
    targets = torch.as_tensor(list(targets), dtype=torch.long)
    rows = torch.zeros(n_classes, features.shape[1])
    for c in range(n_classes):
        if bool((targets == c).any()):
            rows[c] = features[targets == c].mean(dim=0)
    return torch.nn.functional.normalize(rows, dim=1)


def familiarity(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The cosine similarity of each unit feature to its nearest class prototype: ``(N,)``."""
    return (features.float() @ prototypes.float().T).max(dim=1).values


def familiar_threshold(valid_familiarity: Sequence[float], alpha: float = FAMILIARITY_ALPHA) -> float:
    """The conformal threshold of the module's docstring: the ``k``-th lowest validation familiarity."""
    values = sorted(float(v) for v in valid_familiarity)
    if not values:
        raise ValueError("a familiarity threshold needs at least one validation photo")
    k = max(1, math.floor(alpha * (len(values) + 1)))
    return values[min(k, len(values)) - 1]


def fit_familiarity(
    train_features: torch.Tensor,
    train_targets: Sequence[int],
    valid_features: torch.Tensor,
    n_classes: int,
    alpha: float = FAMILIARITY_ALPHA,
) -> tuple[torch.Tensor, Familiarity]:
    """Prototypes from the training photos' features and the threshold from the validation ones'."""
    prototypes = class_prototypes(train_features, train_targets, n_classes)
    threshold = familiar_threshold(familiarity(valid_features, prototypes).tolist(), alpha)
    return prototypes, Familiarity(threshold, alpha, len(valid_features), len(train_features))


def training_sample(labels: Sequence[str], per_class: int = PHOTOS_PER_CLASS, seed: int = 0) -> list[int]:
    """Indices of at most ``per_class`` photos of each label, a fixed random choice, in order."""
    import random

    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    chosen = [i for idx in by_label.values() for i in (idx if len(idx) <= per_class else rng.sample(idx, per_class))]
    return sorted(chosen)
