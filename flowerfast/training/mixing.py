"""MixUp and CutMix of training batches, as one fastai callback that changes the batch and
nothing else.

Each training batch is mixed with a shuffled copy of itself: MixUp blends whole photos, CutMix
pastes a box of the other photo; the targets become the same shares of the two photos' labels
(soft targets, which :mod:`flowerfast.training.losses` accepts). With both on, each batch gets one
or the other at random, as timm does. Validation batches, lr-find's loss curve aside, predict and
the saved model never see a mixed batch: the callback acts only while a fit trains, and the loss
needs no swapping back (fastai's own MixUp swaps the loss function and can leave it swapped after
lr-find or at predict time, fastai issues #3486 and #3180).

Every draw (which mix, the share, the shuffle, the box) comes from torch's generator on the CPU,
which a checkpoint keeps, so a resumed run mixes its batches as the uninterrupted one did.
"""

from __future__ import annotations

import math

import torch
from fastai.callback.core import Callback


def beta_share(alpha: float) -> float:
    """A draw from Beta(alpha, alpha): the first photo's share of a mixed one."""
    gamma = torch.distributions.Gamma(torch.tensor([alpha, alpha]), torch.tensor([1.0, 1.0]))
    a, b = gamma.sample().tolist()
    return a / (a + b) if a + b > 0 else 0.5


def cutmix_box(height: int, width: int, share: float) -> tuple[int, int, int, int]:
    """A box covering about ``1 - share`` of the photo, its centre anywhere, clipped at the
    edges: ``(top, bottom, left, right)``."""
    cut = math.sqrt(1 - share)
    h, w = int(height * cut), int(width * cut)
    cy, cx = (int(torch.randint(n, (1,))) for n in (height, width))
    return max(cy - h // 2, 0), min(cy + h // 2, height), max(cx - w // 2, 0), min(cx + w // 2, width)


def mix_batch(
    x: torch.Tensor, target: torch.Tensor, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``x`` and ``target`` (one probability, or 0/1, per class) mixed with a shuffled copy;
    the first photo's share is returned too. ``mixup``, ``cutmix``: the alphas (0: off)."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(1) < 0.5))
    share = beta_share(cutmix if use_cutmix else mixup)
    order = torch.randperm(x.shape[0]).to(x.device)
    if use_cutmix:
        top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], share)
        x = x.clone()
        x[..., top:bottom, left:right] = x[order][..., top:bottom, left:right]
        share = 1 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])  # the box as clipped
    else:
        x = x * share + x[order] * (1 - share)
    return x, target * share + target[order] * (1 - share), share


class MixBatches(Callback):
    """Mixes each training batch (:func:`mix_batch`); targets that are class indices become
    one-hot first. Runs after the batch is on the device and in its memory layout."""

    order = 15

    def __init__(self, mixup: float, cutmix: float, n_classes: int):
        self.mixup, self.cutmix, self.n_classes = mixup, cutmix, n_classes

    def before_batch(self):
        if not self.training or (self.mixup <= 0 and self.cutmix <= 0):
            return
        y = self.learn.yb[0]
        target = y.float() if y.ndim == 2 else torch.nn.functional.one_hot(y.long(), self.n_classes).float()
        x, target, _ = mix_batch(self.learn.xb[0], target, self.mixup, self.cutmix)
        self.learn.xb, self.learn.yb = (x,), (target,)
