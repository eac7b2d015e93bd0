"""How a photo becomes the network's input, behind one small interface.

Prediction (:mod:`flowerfast.infer.predict`) and export (:mod:`flowerfast.export`) need the same three
things from a model's preprocessing, whoever trained it: open one file as a ``uint8`` image tensor
(:meth:`Preprocessing.load`, in DataLoader worker processes), turn a batch of those into the
network's float input on the device (:meth:`Preprocessing.to_input`), and describe the recipe for
someone reimplementing it (:meth:`Preprocessing.describe`). There are two implementations:

* :class:`FlowerfastPreprocessing`, here: fastai's *validation* pipeline for the transforms
  flowerfast trains with, reproduced exactly in plain PIL and PyTorch (:func:`preprocess`,
  :func:`normalise`), so a photo gets the same probabilities here as in the training run's
  validation, without importing fastai (seconds);
* :class:`flowerfast.infer.fastai_export.FastaiExportPreprocessing`: a fastai ``learn.export()``'s own
  transforms, for ``--trust-pickle`` only. That module is the only one on the inference side that
  imports fastai; nothing here does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import torch

from flowerfast.data.imagecache import decode, load_size

VALID_EXTRA = 0.14  # fastai RandomResizedCrop's val_xtra: the border cropped away in validation


def resize_size(size: int) -> int:
    """The square size fastai's RandomResizedCrop squashes a validation image to before cropping."""
    return size + math.ceil(size * VALID_EXTRA / 8) * 8


def preprocess(path: Path | str, size: int) -> torch.Tensor:
    """One image file to a ``uint8`` tensor ``(3, size, size)``, exactly as fastai validates it.

    The file is decoded as training decodes it (:func:`flowerfast.data.imagecache.decode`: PIL, RGB,
    the shorter side reduced to at most ``2 * size``). fastai's ``RandomResizedCrop`` on the
    validation set then takes the whole image, *squashes* it (aspect ratio not kept) to
    ``size + ceil(size * 0.14 / 8) * 8`` square with PIL bilinear, and crops the centre ``size``
    square.
    """
    import numpy as np
    from PIL import Image

    img = decode(path, load_size(size))
    big = resize_size(size)
    img = img.resize((big, big), Image.BILINEAR)
    off = (big - size) // 2
    img = img.crop((off, off, off + size, off + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``NCHW`` to float, /255, then ``(x - mean) / std`` (fastai's IntToFloatTensor, Normalize)."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def colour_mode(channels: int) -> str:
    """The colour mode of an input with ``channels`` channels, as the preprocessing JSON names it."""
    return "RGB" if channels == 3 else "L (grayscale)"


class Preprocessing(ABC):
    """A model's preprocessing: file to ``uint8`` image, ``uint8`` batch to network input.

    ``size`` is the network input's side, ``mean`` and ``std`` its per-channel normalisation (one
    value per input channel). Implementations must pickle (``load`` runs in worker processes).
    """

    size: int
    mean: list[float]
    std: list[float]

    @property
    def channels(self) -> int:
        return len(self.mean)

    @abstractmethod
    def load(self, path: Path) -> torch.Tensor:
        """One image file (a path, or a binary file object such as an upload) to a ``uint8`` tensor
        ``(channels, height, width)``; raises if unreadable."""

    @abstractmethod
    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """A ``uint8`` batch ``(N, C, H, W)``, already on the device, to the network's float input."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The recipe for the preprocessing JSON written beside an export: ``color``, ``scale``,
        ``mean``, ``std``, ``steps`` (plain-language, in order) and whatever else pins it down."""


class FlowerfastPreprocessing(Preprocessing):
    """fastai's validation pipeline for flowerfast's training transforms: decode and reduce as
    training does, squash to :func:`resize_size`, crop the centre ``size`` square
    (:func:`preprocess`), then scale and normalise (:func:`normalise`)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = int(size)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def __repr__(self) -> str:
        return f"FlowerfastPreprocessing(size={self.size}, mean={self.mean}, std={self.std})"

    def load(self, path: Path) -> torch.Tensor:
        return preprocess(path, self.size)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images, self.mean, self.std)

    def describe(self) -> dict[str, Any]:
        big = resize_size(self.size)
        bound = load_size(self.size)
        return {
            "reduce": {
                "shorter_side": bound,
                "only_if_larger": True,
                "keep_aspect_ratio": True,
                "longer_side": f"round(longer * {bound} / shorter), Python's round",
                "jpeg_draft": "PIL's Image.draft(None, reduced_size) before decoding",
                "interpolation": "bilinear (PIL)",
            },
            "resize": {"width": big, "height": big, "keep_aspect_ratio": False, "interpolation": "bilinear (PIL)"},
            "center_crop": {"width": self.size, "height": self.size},
            "color": colour_mode(self.channels),
            "scale": 1 / 255,
            "mean": list(self.mean),
            "std": list(self.std),
            "steps": [
                "open the image with PIL",
                f"if its shorter side is longer than {bound}: reduced size = shorter side {bound}, longer side "
                f"round(longer * {bound} / shorter); PIL's draft(None, reduced size) (JPEG only: decodes at "
                f"1/2, 1/4 or 1/8 scale), convert to RGB, resize to the reduced size (bilinear); otherwise "
                f"only convert to RGB",
                f"resize to {big}x{big} ignoring aspect ratio (bilinear)",
                f"crop the centre {self.size}x{self.size}",
                "HWC uint8 -> CHW float32, divide by 255",
                "subtract mean and divide by std per channel",
            ],
        }
