"""Training batches cut from photos kept as tensors (``--batch-crop``): each training photo is
held once as a small square of bytes (its *canvas*), and the random resized crops of a whole batch
are one bilinear resampling of those canvases, instead of a PIL crop, resize and tensor conversion
per photo.

Why: with a small network on a CPU the per-photo work of fastai's item transforms costs about as
much as the training step itself (a millisecond a photo against about 1.6 for resnet10t_050 at
64 pixels); cutting the crops of a batch at once, from photos already in memory, gives most of
that time back to training. The crops follow fastai's ``RandomResizedCrop`` (an area between
``min_scale`` and all of the photo, a width/height ratio from 3/4 to 4/3, both in the photo's own
pixels, resized to a square); the batch transforms after them (flips, warps, lighting,
normalisation, erasing) are the usual ones, and validation photos take the usual path.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import TfmdDL
from fastai.data.load import SkipItemException, fa_collate
from fastai.torch_core import TensorImage
from fastai.vision.augment import AffineCoordTfm, find_coeffs
from PIL import Image

from flowerfast.data.memory import PhotoMemory

CROP_RATIO = (3 / 4, 4 / 3)  # fastai's RandomResizedCrop: width over height of a crop
ATTEMPTS = 10  # draws per crop before falling back to the photo's centre, as fastai does


def canvas_side(size: int, min_scale: float) -> int:
    """The side of a photo's canvas: large enough that the smallest crop (``min_scale`` of the
    area at the most extreme ratio) is not enlarged to ``size``, so at most ``2 * size`` (the image
    loader's own bound). The largest crops are then reduced by at most ``side / size``."""
    smallest = math.sqrt(min_scale * CROP_RATIO[0])
    return min(2 * int(size), math.ceil(size / smallest))


def to_canvas(img: Image.Image, side: int) -> tuple[torch.Tensor, float]:
    """A photo as a ``(3, side, side)`` uint8 tensor (squashed: the crops undo it) and its width
    over height."""
    square = img.convert("RGB").resize((side, side), Image.BILINEAR)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).contiguous(), img.width / img.height


def crop_boxes(aspects: torch.Tensor, min_scale: float) -> torch.Tensor:
    """One random crop per photo of width/height ``aspects``, as fastai's ``RandomResizedCrop``
    draws them: ``(n, 4)`` rows of the crop's width and height as fractions of the photo's and
    its centre in [-1, 1] coordinates. Up to :data:`ATTEMPTS` draws of area and ratio per photo;
    the first that fits is kept, else the largest centred crop whose ratio is in range."""
    n = len(aspects)
    a = aspects.float()[:, None]
    area = torch.empty(n, ATTEMPTS).uniform_(min_scale, 1.0)
    ratio = torch.empty(n, ATTEMPTS).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])).exp()
    fw, fh = (area * ratio / a).sqrt(), (area * a / ratio).sqrt()
    fits = (fw <= 1) & (fh <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    a = a[:, 0]
    fallback_w = torch.where(a > CROP_RATIO[1], CROP_RATIO[1] / a, torch.ones_like(a))
    fallback_h = torch.where(a < CROP_RATIO[0], a / CROP_RATIO[0], torch.ones_like(a))
    fw = torch.where(found, fw.gather(1, first)[:, 0], fallback_w)
    fh = torch.where(found, fh.gather(1, first)[:, 0], fallback_h)
    cx = torch.where(found, (torch.rand(n) * 2 - 1) * (1 - fw), torch.zeros(n))
    cy = torch.where(found, (torch.rand(n) * 2 - 1) * (1 - fh), torch.zeros(n))
    return torch.stack([fw, fh, cx, cy], dim=1)


def crop_grid(boxes: torch.Tensor, size: int, geometry=None) -> torch.Tensor:
    """Where in each canvas every pixel of a ``size`` by ``size`` training image is read from:
    ``(n, size, size, 2)`` coordinates for ``grid_sample`` (``align_corners=True``, fastai's).

    ``geometry``: fastai's merged ``AffineCoordTfm`` of ``aug_transforms`` (flip, rotation, zoom,
    perspective warp), its draws for this batch already made (``before_call``). Its matrix and
    warp act on the crop's coordinates exactly as fastai applies them to a cropped image; the
    crop's box then takes them into the canvas, so a rotated or zoomed-out crop shows the photo
    around it (only beyond the photo's edge is it reflected). Computed element by element: a
    grid this small is cheaper so than through the batched matrix products fastai uses.
    """
    n = len(boxes)
    u = torch.linspace(-1.0, 1.0, size)
    ux, uy = u.view(1, 1, size), u.view(1, size, 1)
    if geometry is None:
        gx, gy = ux.expand(n, size, size), uy.expand(n, size, size)
    else:
        m = geometry.mat.float().view(n, 6, 1, 1).unbind(1)
        gx, gy = m[0] * ux + m[1] * uy + m[2], m[3] * ux + m[4] * uy + m[5]
        for warp in geometry.coord_fs:
            gx, gy = perspective(gx, gy, find_coeffs(warp.orig_pts, warp.targ_pts))
    fw, fh, cx, cy = boxes.float().view(n, 4, 1, 1).unbind(1)
    return torch.stack([cx + fw * gx, cy + fh * gy], dim=-1)


def perspective(gx: torch.Tensor, gy: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fastai's ``apply_perspective`` element by element: the eight coefficients of each photo's
    homography (``find_coeffs``) applied to its coordinates; unchanged where a denominator is 0,
    as fastai leaves them."""
    c = coeffs.float().view(len(coeffs), 8, 1, 1).unbind(1)
    den = c[6] * gx + c[7] * gy + 1
    if bool((den == 0).any()):
        return gx, gy
    return (c[0] * gx + c[1] * gy + c[2]) / den, (c[3] * gx + c[4] * gy + c[5]) / den


def crop_batch(canvases: torch.Tensor, boxes: torch.Tensor, size: int, geometry=None) -> torch.Tensor:
    """Each canvas's box (:func:`crop_boxes`) and ``geometry`` (see :func:`crop_grid`) as one
    ``size`` by ``size`` image, by one bilinear ``grid_sample`` with reflection at the photo's
    edges: float pixels from 0 to 255, as fastai's ``IntToFloatTensor`` expects them."""
    grid = crop_grid(boxes, size, geometry)
    return F.grid_sample(canvases.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)


class CanvasStore:
    """The training photos' canvases by path: read through ``loader``, the run's
    :class:`~flowerfast.data.loaders.ImageLoader` (so through its cache and with its warning and
    skip for a photo that cannot be read any more), kept in a
    :class:`~flowerfast.data.memory.PhotoMemory` of the loader's budget (none without the cache,
    as photos are then decoded every epoch), each checked against its file's stamp."""

    def __init__(self, loader, side: int):
        self.loader, self.side = loader, side
        self.memory = PhotoMemory(loader.memory.budget)
        self.reads = 0

    def __getstate__(self):
        return {**self.__dict__, "reads": 0}

    def canvas(self, path) -> tuple[torch.Tensor, float]:
        """The photo's canvas and width/height; fastai's ``SkipItemException`` if it cannot be read."""
        return self.loader.guarded(self.load, path)

    def load(self, path) -> tuple[torch.Tensor, float]:
        return self.memory.remember(path, self.read, lambda kept: kept[0].numel())

    def read(self, path) -> tuple[torch.Tensor, float]:
        canvas = to_canvas(self.loader.read(path), self.side)
        self.reads += 1  # photos read, not attempts
        return canvas


class BatchCropDL(TfmdDL):
    """fastai's training DataLoader whose batches are cut by :func:`crop_batch` from a
    :class:`CanvasStore` (its item transforms are not run), then passed through the usual batch
    transforms. Shuffling, batching, devices, workers and fastai's distributed wrapper are
    fastai's own. Built by :func:`batch_crop_dataloaders`; a copy made by fastai's ``new``
    without a store is an ordinary ``TfmdDL``'s behaviour."""

    def __init__(
        self,
        dataset=None,
        store: Optional[CanvasStore] = None,
        size: int = 224,
        min_scale: float = 1.0,
        geometry: Optional[AffineCoordTfm] = None,
        **kwargs,
    ):
        super().__init__(dataset, **kwargs)
        self.store, self.crop_size, self.min_scale, self.geometry = store, int(size), float(min_scale), geometry

    def set_train_size(self, size: int) -> None:
        """The size the crops are resized to from now on (progressive resizing)."""
        self.crop_size = int(size)

    def create_batches(self, samps):
        if self.store is None:
            yield from super().create_batches(samps)
            return
        for idxs in self.chunkify(samps):
            batch = self.cut_batch(idxs)
            if batch is not None:
                yield batch

    def cut_batch(self, idxs: Sequence[int]):
        """The photos ``idxs`` of the dataset as one batch of crops and their targets; photos that
        cannot be read are left out (``None`` if none can)."""
        images, aspects, targets = [], [], []
        paths, labels = self.dataset.tls[0].items, self.dataset.tls[1]
        for i in idxs:
            try:
                canvas, aspect = self.store.canvas(paths[i][0])
            except SkipItemException:
                continue
            images.append(canvas)
            aspects.append(aspect)
            targets.append(labels[i])
        if not images:
            return None
        boxes = crop_boxes(torch.tensor(aspects), self.min_scale)
        if self.geometry is not None:  # fastai's draws for this batch, as its transform makes them
            self.geometry.before_call(torch.zeros(1).expand(len(images), 3, self.crop_size, self.crop_size), 0)
        crops = crop_batch(torch.stack(images), boxes, self.crop_size, self.geometry)
        return TensorImage(crops), fa_collate(targets)


def batch_crop_dataloaders(dls, loader, size: int, min_scale: float):
    """``dls`` with its training loader replaced by a :class:`BatchCropDL` over the same photos,
    batch size and order, which resamples each photo once for its crop and fastai's flips and
    warps together; the other batch transforms follow as before. The validation loader is kept
    as it is."""
    from fastai.data.core import DataLoaders

    store = CanvasStore(loader, canvas_side(size, min_scale))
    fs = list(dls.train.after_batch.fs)
    geometry = next((f for f in fs if isinstance(f, AffineCoordTfm)), None)
    rest = [f for f in fs if f is not geometry]
    train = dls.train.new(
        cls=BatchCropDL, store=store, size=size, min_scale=min_scale, geometry=geometry, after_batch=rest
    )
    return DataLoaders(train, dls.valid, device=dls.device)
