"""Test-time augmentation: the network sees each photo several ways and the answers are averaged.

Why: a photo framed a little differently, or mirrored, is the same flower; averaging the
probabilities of such views smooths out the framing the network happened to get (fastai's
``Learner.tta`` habit, which averages random training augmentations). Here the views are fixed,
not random, so the same photo always gets the same answer: as it is, mirrored, a centre crop
zoomed back to full size (the scaled crops training shows), and that crop mirrored.
The views are made from the network's input batch, so they apply to any model's preprocessing
(a fastai export's too), at the cost of one network pass per view.
"""

from __future__ import annotations

import torch

TTA_ZOOM = 1.15
"""How much the zoomed views enlarge the centre: the crop keeps 1 / 1.15 (87%) of each side,
within the scales of the random crops training shows."""

TTA_VIEWS = ("as is", "mirrored", "zoomed", "zoomed, mirrored")


def zoomed(x: torch.Tensor, zoom: float = TTA_ZOOM) -> torch.Tensor:
    """The centre ``1 / zoom`` of each side of a ``(N, C, H, W)`` batch, resized back to
    ``H x W`` (bilinear)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    return torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The views of :data:`TTA_VIEWS`, in order, of the network's input batch ``x``."""
    zoom = zoomed(x)
    return [x, x.flip(-1), zoom, zoom.flip(-1)]
