"""The split's photos as fastai DataLoaders: decoding through the image cache, the training
transforms, and ``load_data``, which scans, splits and builds them in one call.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import Reporter
from flowerfast.data.folders import SkippedFile, default_data_dir, natural_size
from flowerfast.data.imagecache import ImageCache, decode, load_size
from flowerfast.data.imagefiles import describe_error
from flowerfast.data.labelfiles import scan_data
from flowerfast.data.memory import MEMORY_BYTES, PhotoMemory
from flowerfast.data.split import rows_from_split_file, split_rows
from flowerfast.models.archs import IMAGENET_MEAN, IMAGENET_STD
from flowerfast.runs.config import DEFAULTS, MIN_SCALE_SCRATCH
from flowerfast.runs.folder import SplitRow
from flowerfast.runs.records import label_set


@dataclass
class FlowerData:
    """Everything a run needs from its data: fastai DataLoaders plus what they were built from."""

    dls: object
    classes: list[str]
    rows: list[SplitRow]
    skipped: list[SkippedFile]
    root: Path
    preset_split: bool
    bs: int
    cache: Optional[ImageCache] = None
    files: list[Path] = field(default_factory=list)
    loader: Optional["ImageLoader"] = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    size: int = 224
    min_scale: float = MIN_SCALE_SCRATCH
    multi_label: bool = False

    @property
    def n_train(self) -> int:
        return sum(not r.is_valid for r in self.rows)

    @property
    def n_valid(self) -> int:
        return sum(r.is_valid for r in self.rows)


class ImageLoader:
    """An image file's path to a fastai ``PILImage``, decoded and reduced by
    :func:`~flowerfast.data.imagecache.decode` to a shorter side of
    :func:`~flowerfast.data.imagecache.load_size`, through ``cache`` when there is one (and then
    kept in this process's :class:`PhotoMemory`, up to ``memory_bytes``).

    The DataBlock's ``get_x`` after ``ItemGetter(0)``; fastai's ``PILImage.create`` then passes the
    opened image through unchanged. Picklable: DataLoader workers get a copy, with their own cache
    counters.
    """

    def __init__(self, size: int, cache_dir: Optional[Path | str] = None, memory_bytes: int = MEMORY_BYTES):
        self.__name__ = "ImageLoader"  # fastai wraps a callable without a name in a closure, which cannot pickle
        self.max_side = load_size(size)
        self.cache = ImageCache(cache_dir, self.max_side) if cache_dir is not None else None
        self.memory = PhotoMemory(memory_bytes if self.cache is not None else 0)
        self.skipped: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ImageLoader(max_side={self.max_side}, cache={self.cache!r})"

    def read(self, path):
        """The photo decoded and reduced, from the cache when there is one; never kept."""
        return decode(path, self.max_side) if self.cache is None else self.cache.load(path)

    def load(self, path):
        """The photo as :meth:`read` gives it, kept in this process's memory when the cache is on."""
        if self.cache is None:
            return self.read(path)
        img = self.memory.remember(path, self.read, lambda im: im.width * im.height * len(im.getbands()))
        return img.copy()  # transforms get their own image, never the kept one

    def __call__(self, path):
        """The photo as a fastai ``PILImage`` (see :meth:`guarded`)."""
        from fastai.vision.core import PILImage

        return PILImage.create(self.guarded(self.load, path))

    def guarded(self, load, path):
        """``load(path)``, or fastai's ``SkipItemException`` when the photo cannot be read any more:
        a photo deleted, truncated or locked after the scan drops out of its batch with a warning
        (once per file) instead of ending a long run."""
        from fastai.data.load import SkipItemException

        try:
            return load(path)
        except Exception as exc:
            reason = describe_error(exc)
            if str(path) not in self.skipped:
                self.skipped[str(path)] = reason
                warnings.warn(
                    f"{path} could not be read after the scan ({reason}): skipped", UnreadablePhotoWarning, stacklevel=2
                )
            raise SkipItemException() from None

    def readable(self, path) -> bool:
        """Whether the photo can be read now (it is decoded, or read from the cache)."""
        try:
            self.load(path)
            return True
        except Exception:
            return False


class UnreadablePhotoWarning(UserWarning):
    """A photo that was readable when the folder was scanned could not be read during the run."""


def augmentation_description(
    size: int, min_scale: float = MIN_SCALE_SCRATCH, policy: str = "standard", batch_crop: bool = False
) -> str:
    """:func:`flowerfast.data.augment.train_transforms` in words, for reports."""
    extra = {"trivial": "; TrivialAugmentWide", "randaugment": "; RandAugment"}.get(policy, "")
    together = " (cut per batch, with the flips and warps, in one resampling)" if batch_crop else ""
    return (
        f"RandomResizedCrop({size}, min_scale={min_scale:g}){together}{extra}; fastai aug_transforms (flips, "
        "rotation up to 10 degrees, zoom up to 1.1, warp 0.2, lighting 0.2); the weights' normalisation; "
        "RandomErasing(p=0.25)"
    )


def classes_of(label):  # no annotations: fastai's transforms cast to them, and list[str] cannot be
    """A multi-label item's classes from its label (fastai's ``MultiCategoryBlock`` takes a list)."""
    return label_set(label)


def build_dataloaders(
    rows: Sequence[SplitRow],
    classes: Sequence[str],
    size: int,
    bs: int,
    workers: int = 0,
    device=None,
    seed: int = DEFAULTS.seed,
    cache_dir: Optional[Path | str] = None,
    loader: Optional[ImageLoader] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float = MIN_SCALE_SCRATCH,
    multi_label: bool = False,
    augment: str = "standard",
    batch_crop: bool = False,
):
    """fastai DataBlock over the split rows: one DataLoaders with train and valid, normalised
    with ``mean`` and ``std`` (those of the network's pretrained weights). ``multi_label``: the
    targets are fastai's ``MultiCategoryBlock`` (one 0/1 per class), else a ``CategoryBlock``.

    Photos are decoded and reduced through the image cache in ``cache_dir`` (``None``: no cache,
    decoded every time; the pixels are the same either way). ``loader`` gives the
    :class:`ImageLoader` to use instead (``cache_dir`` is then ignored). ``batch_crop``: the
    training batches are cut from photos kept as tensors (:mod:`flowerfast.data.batchcrop`).
    """
    from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock
    from fastai.data.core import Pipeline
    from fastai.data.transforms import IndexSplitter, ItemGetter
    from fastai.torch_core import set_seed
    from fastai.vision.data import ImageBlock

    from flowerfast.data.augment import train_transforms

    item_tfms, batch_tfms = train_transforms(size, mean, std, min_scale, augment)
    items = [(str(r.file), r.label) for r in rows]
    valid_idx = [i for i, r in enumerate(rows) if r.is_valid]
    loader = loader if loader is not None else ImageLoader(size, cache_dir)
    block = DataBlock(
        blocks=(ImageBlock, (MultiCategoryBlock if multi_label else CategoryBlock)(vocab=list(classes))),
        get_x=Pipeline([ItemGetter(0), loader]),
        get_y=Pipeline([ItemGetter(1), classes_of]) if multi_label else ItemGetter(1),
        splitter=IndexSplitter(valid_idx),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    set_seed(seed)
    dls = block.dataloaders(items, bs=bs, num_workers=workers, device=device)
    if batch_crop:
        from flowerfast.data.batchcrop import batch_crop_dataloaders

        dls = batch_crop_dataloaders(dls, loader, size, min_scale)
    return dls


def training_batch_size(rows: Sequence[SplitRow], bs: int, shards: int = 1) -> int:
    """``bs``, capped at each process's share of the training images, and at least 2.

    fastai drops the last partial training batch, so a batch larger than the training set (or a
    process's share of it) would leave no batch at all; BatchNorm needs two images to train."""
    share = sum(not r.is_valid for r in rows) // max(shards, 1)
    if share < 2:
        each = f" for each of {shards} processes" if shards > 1 else ""
        raise FlowerfastError(
            f"the training set needs at least 2 images{each}: add images or lower $valid_pct", parameters=("valid_pct",)
        )
    return max(2, min(bs, share))


def load_data(
    data: Optional[Path | str] = None,
    labels: Optional[Path | str] = None,
    multi_label: bool = False,
    size: Optional[int] = DEFAULTS.size,
    bs: int = DEFAULTS.bs,
    valid_pct: float = DEFAULTS.valid_pct,
    seed: int = DEFAULTS.seed,
    workers: int = 0,
    device=None,
    split_file: Optional[Path] = None,
    cache_dir: Optional[Path | str] = None,
    check_folder=None,
    stratify: bool = DEFAULTS.stratify,
    reporter: Optional[Reporter] = None,
    shards: int = 1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float = MIN_SCALE_SCRATCH,
    augment: str = "standard",
    batch_crop: bool = False,
) -> FlowerData:
    """Scan a data folder, split it and build DataLoaders. ``data=None`` uses the embedded sample.
    ``labels``: a label file naming the photos under ``data`` (:func:`flowerfast.data.labelfiles.scan_data`);
    ``multi_label``: photos with several labels (or none).

    ``split_file`` reuses an earlier run's ``split.csv`` instead of splitting anew; otherwise the
    split is stratified by class unless ``stratify`` is false (see :func:`split_rows`). ``cache_dir``
    keeps decoded, reduced photos there (:class:`~flowerfast.data.imagecache.ImageCache`); ``None``
    decodes every photo every epoch. ``check_folder`` is called with the scanned
    :class:`ImageFolder` before anything else (a resumed run checks its photos are unchanged).
    ``shards``: a distributed job's processes, each training on its share with batches of ``bs``.
    ``mean`` and ``std`` normalise the images as the network's pretrained weights expect
    (:func:`flowerfast.models.archs.normalisation`). ``size=None`` takes the photos' own
    (:func:`natural_size`); the result's ``size`` says which. ``augment`` and ``batch_crop``: as
    :func:`build_dataloaders` takes them.
    """
    root = Path(os.path.abspath(Path(data).expanduser())) if data is not None else default_data_dir()
    folder = scan_data(root, labels=labels, multi_label=multi_label, reporter=reporter)
    if check_folder is not None:
        check_folder(folder)
    if split_file is not None:
        rows = rows_from_split_file(folder, Path(split_file))
    else:
        rows = split_rows(folder, valid_pct=valid_pct, seed=seed, stratify=stratify)
    eff_bs = training_batch_size(rows, bs, shards)
    if size is None:
        size = natural_size(folder.files)
    loader = ImageLoader(size, cache_dir)
    dls = build_dataloaders(
        rows,
        folder.classes,
        size=size,
        bs=eff_bs,
        workers=workers,
        device=device,
        seed=seed,
        loader=loader,
        mean=mean,
        std=std,
        min_scale=min_scale,
        multi_label=folder.multi_label,
        augment=augment,
        batch_crop=batch_crop,
    )
    return FlowerData(
        dls=dls,
        classes=list(folder.classes),
        rows=rows,
        skipped=folder.skipped,
        root=folder.root,
        preset_split=folder.preset_split is not None,
        bs=eff_bs,
        cache=loader.cache,
        files=list(folder.files),
        loader=loader,
        mean=list(mean),
        std=list(std),
        size=size,
        min_scale=min_scale,
        multi_label=folder.multi_label,
    )
