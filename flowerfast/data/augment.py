"""The training photos' augmentation: the random crop (at a size that may grow during training,
for progressive resizing), fastai's flips and warps, an optional TrivialAugment or RandAugment
policy, the normalisation and random erasing. Validation photos get only the resize and centre
crop, always at the model's own size.
"""

from __future__ import annotations

from typing import Optional, Sequence

from fastai.vision.augment import RandomResizedCrop, RandTransform
from fastai.vision.core import PILImage
from PIL import Image

from flowerfast.models.archs import IMAGENET_MEAN, IMAGENET_STD
from flowerfast.runs.config import AUGMENT_POLICIES, MIN_SCALE_SCRATCH


class GrowingCrop(RandomResizedCrop):
    """fastai's ``RandomResizedCrop`` whose training crops are resized to ``train_size`` (which
    :class:`~flowerfast.training.schedule.ResizeProgressively` raises epoch by epoch), while
    validation crops stay at ``size``, the model's own.

    Why a subclass: fastai's training and validation loaders share one transform object, so
    changing its ``size`` would change the validation photos too (and the accuracy the best
    model is chosen by).
    """

    def __init__(self, size: int, min_scale: float):
        super().__init__(size, min_scale=min_scale)
        self.train_size: Optional[tuple[int, int]] = None

    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)
        self.validating = bool(split_idx)
        if not split_idx and self.train_size is not None:
            self.final_size = self.train_size

    def encodes(self, x: Image.Image):
        res = x.crop_pad(self.cp_size, self.tl, orig_sz=self.orig_sz, resize_mode=self.mode, resize_to=self.final_size)
        return res.crop_pad(self.size) if self.validating and self.final_size != self.size else res

    def set_train_size(self, size: int) -> None:
        self.train_size = (size, size)


class PolicyAugment(RandTransform):
    """torchvision's TrivialAugmentWide or RandAugment (default magnitudes) on each training crop,
    before it becomes a tensor. Random draws come from torch's generator, which a checkpoint keeps."""

    split_idx, order = 0, 2  # training only; after the crop (1), before ToTensor (5)

    def __init__(self, policy: str):
        from torchvision import transforms

        super().__init__(p=1.0)
        self.policy = policy
        self.augment = transforms.TrivialAugmentWide() if policy == "trivial" else transforms.RandAugment()

    def encodes(self, x: PILImage):
        return PILImage.create(self.augment(x))


def train_transforms(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float = MIN_SCALE_SCRATCH,
    policy: str = "standard",
):
    """Item and batch transforms: random resized crop, the ``policy`` (``standard``: none beyond
    fastai's), flips and fastai's augmentations, the normalisation of the pretrained weights
    (``mean``, ``std``: ImageNet's for torchvision's), then random erasing (which expects
    normalised input). On the validation set fastai applies only the resize and centre crop;
    the rest is train-only. They run on the photo as the image loader gives it (shorter side at
    most ``2 * size``)."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import RandomErasing, aug_transforms

    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}")
    item_tfms = [GrowingCrop(size, min_scale=min_scale), *([PolicyAugment(policy)] if policy != "standard" else [])]
    batch_tfms = [
        *aug_transforms(),
        Normalize.from_stats(list(mean), list(std)),
        RandomErasing(p=0.25, max_count=1),
    ]
    return item_tfms, batch_tfms


def growing_crop(dls):
    """What resizes the training crops, for progressive resizing: the training loader itself when
    it cuts its own crops (:class:`~flowerfast.data.batchcrop.BatchCropDL`), else its
    :class:`GrowingCrop`; ``None`` if neither."""
    if hasattr(dls.train, "set_train_size"):
        return dls.train
    return next((t for t in dls.train.after_item.fs if isinstance(t, GrowingCrop)), None)
