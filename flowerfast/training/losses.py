"""The training losses: cross-entropy for one label per photo, binary cross-entropy per class for
several, each with label smoothing and class weights, and each taking the soft targets MixUp and
CutMix make (:mod:`flowerfast.training.mixing`) as well as plain labels.

Why not fastai's ``CrossEntropyLossFlat``: it flattens the targets to one class index per photo,
so a mixed target (a share of two classes) cannot reach it; fastai's MixUp swaps the learner's
loss function for the length of a fit instead, and a fit that ends early (lr-find, an error)
leaves the swapped one behind (fastai issues #3486, #3180). Here the loss always accepts both,
and nothing is swapped.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SoftCrossEntropy(nn.Module):
    """Cross-entropy against class indices or class probabilities (``torch.nn.functional.cross_entropy``
    takes both), with ``label_smoothing`` and per-class ``weight``. ``activation`` and
    ``decodes`` are what fastai's ``get_preds`` and ``predict`` look for on a loss."""

    def __init__(self, weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.weight, self.label_smoothing = weight, label_smoothing

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() if target.is_floating_point() else target.long()
        return F.cross_entropy(pred.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=-1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=-1)


class SoftBinaryCrossEntropy(nn.Module):
    """Binary cross-entropy on each class's logit against 0/1 or soft targets; smoothing moves each
    target ``label_smoothing / 2`` towards one half (timm's ``BinaryCrossEntropy``); ``pos_weight``
    weighs each class's positives (``--class-weights balanced``)."""

    def __init__(self, pos_weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0, thresh: float = 0.5):
        super().__init__()
        self.pos_weight, self.label_smoothing, self.thresh = pos_weight, label_smoothing, thresh

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(pred.float(), target, pos_weight=self.pos_weight)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.thresh


def training_loss(
    multi_label: bool, class_weights: Optional[Sequence[float]], label_smoothing: float, device
) -> nn.Module:
    """The loss of a run: :class:`SoftBinaryCrossEntropy` for multi-label data, else
    :class:`SoftCrossEntropy`; ``class_weights`` (one per class) as their weights."""
    weight = torch.tensor(list(class_weights), dtype=torch.float32, device=device) if class_weights else None
    if multi_label:
        return SoftBinaryCrossEntropy(pos_weight=weight, label_smoothing=label_smoothing)
    return SoftCrossEntropy(weight=weight, label_smoothing=label_smoothing)
