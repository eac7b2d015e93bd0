"""Photos on disk to fastai DataLoaders: folder scanning, the train/valid split, and transforms.

Why scanning is done here and not by fastai's ``get_image_files``: a real photo folder holds hidden
files, stray text files and the odd broken JPEG. Each would crash training half an hour in; here
they are ignored (hidden, non-image) or skipped and reported (unreadable) before anything starts.
The split is computed once, up front, so it can be written to ``split.csv`` and reused exactly.

Why flowerfast opens the photos itself (:class:`ImageLoader`) instead of letting fastai: every
photo goes through :func:`flowerfast.imagecache.decode`, reduced to a shorter side of
``2 * size``, the step prediction uses too; with the cache on, that decode happens once per photo
and size, and later epochs read the stored pixels. The random transforms after it are fastai's.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .archs import IMAGENET_MEAN, IMAGENET_STD
from .config import DEFAULTS, MIN_SCALE_SCRATCH
from .errors import FlowerfastError
from .imagecache import ImageCache, decode, load_size
from .imagefiles import check_image, describe_error, find_images, is_hidden, is_inside
from .progress import Reporter
from .runfolder import SplitRow, read_split_csv

VALID_FOLDER_NAMES = ("valid", "val")


def default_data_dir() -> Path:
    """The embedded sample set (200 photos, 5 classes) that ships inside the package."""
    return Path(__file__).resolve().parent / "sample" / "flowers"


@dataclass(frozen=True)
class SkippedFile:
    """An image file that could not be read, and why."""

    path: Path
    reason: str


@dataclass
class ImageFolder:
    """The result of scanning a data folder: classes, readable images and skipped files.

    ``preset_split`` holds each file's ``is_valid`` when the folder has train/ and valid/ (or val/)
    subfolders; otherwise it is ``None`` and the split is made at random.
    """

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    preset_split: Optional[list[bool]] = None


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

    @property
    def n_train(self) -> int:
        return sum(not r.is_valid for r in self.rows)

    @property
    def n_valid(self) -> int:
        return sum(r.is_valid for r in self.rows)


def _class_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not is_hidden(p.name))


def _class_images(parent: Path, skipped: list, seen: set, data_root: Path) -> list[tuple[Path, list[Path]]]:
    """Each class folder under ``parent`` with the image files found in it (not yet opened).

    Each class folder is walked by :func:`~flowerfast.imagefiles.find_images`: links are followed
    once per real folder, never out of the class folder, and each real file is taken once across
    the whole scan (``seen`` is shared by every call of one scan); links leading out and special
    files are reported in ``skipped``.
    """
    data_real = os.path.realpath(data_root)
    groups = []
    for folder in _class_folders(parent):
        if folder.is_symlink():
            real = os.path.realpath(folder)
            if is_inside(real, data_real) or is_inside(data_real, real):
                skipped.append(SkippedFile(folder, f"class folder is a link to {real}, inside the data folder or "
                                                   f"holding it: not followed, so no photo is taken twice"))
                continue
        images, problems = find_images(folder, seen=seen, data_root=data_root)
        skipped.extend(SkippedFile(path, reason) for path, reason in problems)
        groups.append((folder, images))
    return groups


def _check_classes(groups: list[tuple[Path, list[Path]]], files: list, labels: list, skipped: list, check: bool,
                   reporter: Optional[Reporter] = None) -> list[str]:
    """Open every image's header (:func:`~flowerfast.imagefiles.check_image`), one progress step
    per image; readable ones go to ``files`` and ``labels``, the rest to ``skipped``. Returns the
    class names in order."""
    if reporter is not None:
        reporter.batches_started("scan", sum(len(images) for _, images in groups))
    classes = []
    for folder, images in groups:
        good = []
        for path in images:
            reason = check_image(path) if check else None
            if reason is None:
                good.append(path)
            else:
                skipped.append(SkippedFile(path, reason))
            if reporter is not None:
                reporter.batch_done("scan")
        if not good:
            what = "holds no readable images" if images else "holds no images"
            raise FlowerfastError(f"class folder {folder} {what}: remove it or add photos")
        classes.append(folder.name)
        files.extend(good)
        labels.extend([folder.name] * len(good))
    if reporter is not None:
        reporter.finished()
    return classes


def _presplit_folders(root: Path) -> Optional[tuple[Path, Path]]:
    train = root / "train"
    if not train.is_dir():
        return None
    for name in VALID_FOLDER_NAMES:
        if (root / name).is_dir():
            return train, root / name
    return None


def scan_image_folder(root: Path | str, check: bool = True, reporter: Optional[Reporter] = None) -> ImageFolder:
    """Find the classes and images of a data folder, skipping unreadable files.

    Layouts: ``root/<class>/*.jpg`` (split at random later) or ``root/train/<class>/...`` with
    ``root/valid/<class>/...`` (or ``val/``), used as given.

    A class folder may itself be a link to a folder elsewhere (not to one inside the data folder
    or holding it). Inside a class folder, links are followed once per real folder and never out
    of it, each real file is taken once, and special files (FIFOs, sockets, devices) are never
    opened; links leading out, special files and unreadable or oversized images
    (:data:`~flowerfast.imagefiles.MAX_PIXELS`) are in ``skipped`` with their reasons. ``reporter``
    hears of each image checked (``"scan"``), for big folders.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FlowerfastError(f"data folder not found: {root}")
    if not root.is_dir():
        raise FlowerfastError(f"data path is not a folder: {root} (expected one folder per class)")
    files: list[Path] = []
    labels: list[str] = []
    skipped: list[SkippedFile] = []
    seen: set = set()  # real paths taken: each real folder and file once in the whole scan
    presplit = _presplit_folders(root)
    if presplit is None:
        if not find_images(root)[0] and not any(find_images(f)[0] for f in _class_folders(root)):
            raise FlowerfastError(f"no images found in {root} (expected one folder per class, e.g. {root}/daisy/1.jpg)")
        classes = _check_classes(_class_images(root, skipped, seen, root), files, labels, skipped, check, reporter)
        preset = None
    else:
        train_dir, valid_dir = presplit
        train_groups = _class_images(train_dir, skipped, seen, root)
        valid_groups = _class_images(valid_dir, skipped, seen, root)
        all_classes = _check_classes(train_groups + valid_groups, files, labels, skipped, check, reporter)
        classes, valid_classes = all_classes[:len(train_groups)], all_classes[len(train_groups):]
        train_files = {path for _, images in train_groups for path in images}
        n_train = sum(f in train_files for f in files)  # train files come first, in order
        unknown = sorted(set(valid_classes) - set(classes))
        if unknown:
            raise FlowerfastError(f"{valid_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
        preset = [False] * n_train + [True] * (len(files) - n_train)
    if not classes:
        raise FlowerfastError(f"no class folders found in {root} (expected one folder per class, e.g. {root}/daisy/1.jpg)")
    if len(classes) < 2:
        raise FlowerfastError(f"only one class found in {root} ({classes[0]}): classification needs at least two class folders")
    return ImageFolder(root=root, classes=classes, files=files, labels=labels, skipped=skipped, preset_split=preset)


def split_rows(folder: ImageFolder, valid_pct: float = DEFAULTS.valid_pct, seed: int = DEFAULTS.seed,
               stratify: bool = DEFAULTS.stratify) -> list[SplitRow]:
    """Assign each image to train or valid: the folder's own split; else, by default, a random
    split stratified by class (:func:`stratified_valid_indices`); with ``stratify=False``,
    fastai's plain ``RandomSplitter``, as the flower report did."""
    if folder.preset_split is not None:
        is_valid = folder.preset_split
    else:
        if stratify:
            valid_set = stratified_valid_indices(folder.labels, valid_pct, seed)
        else:
            from fastai.data.transforms import RandomSplitter

            _, valid_idx = RandomSplitter(valid_pct=valid_pct, seed=seed)(folder.files)
            valid_set = set(int(i) for i in valid_idx)
        is_valid = [i in valid_set for i in range(len(folder.files))]
    rows = [SplitRow(f, lbl, v) for f, lbl, v in zip(folder.files, folder.labels, is_valid)]
    if not any(r.is_valid for r in rows):
        raise FlowerfastError("the validation set is empty: add images or raise --valid-pct")
    if all(r.is_valid for r in rows):
        raise FlowerfastError("the training set is empty: add images or lower --valid-pct")
    return rows


def stratified_valid_indices(labels: Sequence[str], valid_pct: float, seed: int) -> set[int]:
    """The validation images of a split stratified by class: from each class, ``valid_pct`` of its
    images (rounded), chosen by a shuffle seeded with the seed and the class name.

    Why: a plain random split of a small or imbalanced folder can leave a class with no validation
    image (never measured) or no training image (never learnt). Here every class with at least two
    images has at least one on each side, and a class's draw depends only on its own photos, so
    adding photos to one class leaves the other classes' split as it was.
    """
    import random

    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    valid: set[int] = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n = len(indices)
        k = min(max(round(valid_pct * n), 1), n - 1) if n >= 2 else 0
        valid.update(random.Random(f"{seed}:{label}").sample(indices, n)[:k])
    return valid


class ImageLoader:
    """An image file's path to a fastai ``PILImage``, decoded and reduced by
    :func:`~flowerfast.imagecache.decode` to a shorter side of
    :func:`~flowerfast.imagecache.load_size`, through ``cache`` when there is one.

    The DataBlock's ``get_x`` after ``ItemGetter(0)``; fastai's ``PILImage.create`` then passes the
    opened image through unchanged. Picklable: DataLoader workers get a copy, with their own cache
    counters.
    """

    def __init__(self, size: int, cache_dir: Optional[Path | str] = None):
        self.__name__ = "ImageLoader"  # fastai wraps a callable without a name in a closure, which cannot pickle
        self.max_side = load_size(size)
        self.cache = ImageCache(cache_dir, self.max_side) if cache_dir is not None else None
        self.skipped: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ImageLoader(max_side={self.max_side}, cache={self.cache!r})"

    def load(self, path):
        return self.cache.load(path) if self.cache is not None else decode(path, self.max_side)

    def __call__(self, path):
        """The photo, or fastai's ``SkipItemException`` when it cannot be read any more: a photo
        deleted, truncated or locked after the scan drops out of its batch with a warning (once
        per file) instead of ending a long run."""
        from fastai.data.load import SkipItemException
        from fastai.vision.core import PILImage

        try:
            img = self.load(path)
        except Exception as exc:
            reason = describe_error(exc)
            if str(path) not in self.skipped:
                self.skipped[str(path)] = reason
                warnings.warn(f"{path} could not be read after the scan ({reason}): skipped",
                              UnreadablePhotoWarning, stacklevel=2)
            raise SkipItemException() from None
        return PILImage.create(img)

    def readable(self, path) -> bool:
        """Whether the photo can be read now (it is decoded, or read from the cache)."""
        try:
            self.load(path)
            return True
        except Exception:
            return False


class UnreadablePhotoWarning(UserWarning):
    """A photo that was readable when the folder was scanned could not be read during the run."""


def train_transforms(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     min_scale: float = MIN_SCALE_SCRATCH):
    """Item and batch transforms: random resized crop, flips and fastai's augmentations, the
    normalisation of the pretrained weights (``mean``, ``std``: ImageNet's for torchvision's),
    then random erasing (which expects normalised input). On the validation set
    fastai applies only the resize and centre crop of ``RandomResizedCrop``; the rest is train-only.
    They run on the photo as :class:`ImageLoader` gives it (shorter side at most ``2 * size``).
    """
    from fastai.vision.augment import RandomErasing, RandomResizedCrop, aug_transforms
    from fastai.data.transforms import Normalize

    item_tfms = [RandomResizedCrop(size, min_scale=min_scale)]
    batch_tfms = [
        *aug_transforms(),
        Normalize.from_stats(list(mean), list(std)),
        RandomErasing(p=0.25, max_count=1),
    ]
    return item_tfms, batch_tfms


def augmentation_description(size: int, min_scale: float = MIN_SCALE_SCRATCH) -> str:
    """:func:`train_transforms` in words, for reports."""
    return (f"RandomResizedCrop({size}, min_scale={min_scale:g}); fastai aug_transforms (flips, rotation up to 10 degrees, "
            "zoom up to 1.1, warp 0.2, lighting 0.2); the weights' normalisation; RandomErasing(p=0.25)")


def build_dataloaders(rows: Sequence[SplitRow], classes: Sequence[str], size: int, bs: int,
                      workers: int = 0, device=None, seed: int = DEFAULTS.seed,
                      cache_dir: Optional[Path | str] = None, loader: Optional[ImageLoader] = None,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      min_scale: float = MIN_SCALE_SCRATCH):
    """fastai DataBlock over the split rows: one DataLoaders with train and valid, normalised
    with ``mean`` and ``std`` (those of the network's pretrained weights).

    Photos are decoded and reduced through the image cache in ``cache_dir`` (``None``: no cache,
    decoded every time; the pixels are the same either way). ``loader`` gives the
    :class:`ImageLoader` to use instead (``cache_dir`` is then ignored).
    """
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.core import Pipeline
    from fastai.data.transforms import IndexSplitter, ItemGetter
    from fastai.vision.data import ImageBlock
    from fastai.torch_core import set_seed

    item_tfms, batch_tfms = train_transforms(size, mean, std, min_scale)
    items = [(str(r.file), r.label) for r in rows]
    valid_idx = [i for i, r in enumerate(rows) if r.is_valid]
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(classes))),
        get_x=Pipeline([ItemGetter(0), loader if loader is not None else ImageLoader(size, cache_dir)]),
        get_y=ItemGetter(1),
        splitter=IndexSplitter(valid_idx),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    set_seed(seed)
    return block.dataloaders(items, bs=bs, num_workers=workers, device=device)


def rows_from_split_file(folder: ImageFolder, split_file: Path) -> list[SplitRow]:
    """The rows of an earlier run's ``split.csv``, checked against the scanned folder."""
    rows = read_split_csv(split_file, folder.root)
    known = set(folder.files)
    missing = [r.file for r in rows if r.file not in known]
    if missing:
        raise FlowerfastError(f"{len(missing)} file(s) of {split_file} are not readable images of {folder.root} "
                              f"(e.g. {missing[0]}): the split does not belong to this data folder")
    unknown = sorted({r.label for r in rows} - set(folder.classes))
    if unknown:
        raise FlowerfastError(f"{split_file} names classes that {folder.root} lacks: {', '.join(unknown)}")
    return rows


def load_data(data: Optional[Path | str] = None, size: Optional[int] = DEFAULTS.size, bs: int = DEFAULTS.bs,
              valid_pct: float = DEFAULTS.valid_pct, seed: int = DEFAULTS.seed, workers: int = 0, device=None,
              split_file: Optional[Path] = None, cache_dir: Optional[Path | str] = None,
              check_folder=None, stratify: bool = DEFAULTS.stratify, reporter: Optional[Reporter] = None,
              shards: int = 1, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD, min_scale: float = MIN_SCALE_SCRATCH) -> FlowerData:
    """Scan a data folder, split it and build DataLoaders. ``data=None`` uses the embedded sample.

    ``split_file`` reuses an earlier run's ``split.csv`` instead of splitting anew; otherwise the
    split is stratified by class unless ``stratify`` is false (see :func:`split_rows`). ``cache_dir``
    keeps decoded, reduced photos there (:class:`~flowerfast.imagecache.ImageCache`); ``None``
    decodes every photo every epoch. ``check_folder`` is called with the scanned
    :class:`ImageFolder` before anything else (a resumed run checks its photos are unchanged).
    ``shards``: the processes of a distributed job, each training on its own share of the
    training images with ``bs`` images per batch (so the batch is capped at that share).
    ``mean`` and ``std`` normalise the images as the network's pretrained weights expect
    (:func:`flowerfast.archs.normalisation`). ``size=None`` takes the photos' own
    (:func:`natural_size`); the result's ``size`` says which.
    """
    root = Path(os.path.abspath(Path(data).expanduser())) if data is not None else default_data_dir()
    folder = scan_image_folder(root, reporter=reporter)
    if check_folder is not None:
        check_folder(folder)
    if split_file is not None:
        rows = rows_from_split_file(folder, Path(split_file))
    else:
        rows = split_rows(folder, valid_pct=valid_pct, seed=seed, stratify=stratify)
    n_train = sum(not r.is_valid for r in rows)
    # fastai drops the last partial training batch; a batch larger than the training set (or a
    # process's share of it) would leave no batch at all, so cap it (and keep at least 2 so
    # BatchNorm can train).
    share = n_train // max(shards, 1)
    eff_bs = max(2, min(bs, share))
    if share < 2:
        each = f" for each of {shards} processes" if shards > 1 else ""
        raise FlowerfastError(f"the training set needs at least 2 images{each}: add images or lower --valid-pct")
    if size is None:
        size = natural_size(folder.files)
    loader = ImageLoader(size, cache_dir)
    dls = build_dataloaders(rows, folder.classes, size=size, bs=eff_bs, workers=workers, device=device, seed=seed,
                            loader=loader, mean=mean, std=std, min_scale=min_scale)
    return FlowerData(dls=dls, classes=list(folder.classes), rows=rows, skipped=folder.skipped,
                      root=folder.root, preset_split=folder.preset_split is not None, bs=eff_bs, cache=loader.cache,
                      files=list(folder.files), loader=loader, mean=list(mean), std=list(std), size=size,
                      min_scale=min_scale)


NATURAL_SIZE_RANGE = (64, 224)
NATURAL_SIZE_SAMPLE = 64


def natural_size(files: Sequence[Path]) -> int:
    """The image size a folder of photos suggests: the median shorter side of up to 64 of them
    (spread over the list), rounded down to a multiple of 32, between 64 and 224 pixels.

    Why not always 224, ImageNet's size: most photos are larger, and then it is 224; but a folder
    of thumbnails (the embedded sample and the shared flowers are 128 px) would be upscaled, which
    adds no detail and costs compute with the square of the side (about 3x from 128 to 224 px).
    ``--size`` overrides it.
    """
    from .imagefiles import open_image

    step = max(1, len(files) // NATURAL_SIZE_SAMPLE)
    sides = []
    for path in list(files)[::step][:NATURAL_SIZE_SAMPLE]:
        try:
            with open_image(path) as img:
                sides.append(min(img.size))
        except Exception:  # unreadable now: the scan reports such files; the size needs only a few
            continue
    if not sides:
        return NATURAL_SIZE_RANGE[1]
    median = sorted(sides)[len(sides) // 2]
    return max(NATURAL_SIZE_RANGE[0], min(NATURAL_SIZE_RANGE[1], median // 32 * 32))


FEW_TRAINING_IMAGES = 5
IMBALANCE_RATIO = 10


class ThinClassWarning(UserWarning):
    """A class has no training image, too few to learn it, or far fewer than another class."""


def thin_class_warnings(rows: Iterable[SplitRow], classes: Iterable[str]) -> list[str]:
    """One sentence per class the model can hardly learn: none, or fewer than a handful, of its
    images on the training side of the split (a small class can land wholly in validation); and
    one when the largest class has over ten times the training images of the smallest, where
    plain training learns to favour the large class."""
    counts = class_counts(rows)
    notes = []
    train = {c: counts.get(c, {}).get("train", 0) for c in classes}
    for c, n in train.items():
        if n == 0:
            notes.append(f"class {c} has no training image (all its images are in validation): "
                         f"the model cannot learn it; add photos or lower --valid-pct")
        elif n < FEW_TRAINING_IMAGES:
            notes.append(f"class {c} has only {n} training image(s): expect it to be learnt poorly")
    present = {c: n for c, n in train.items() if n > 0}
    if present:
        big, small = max(present, key=present.get), min(present, key=present.get)
        if present[big] > IMBALANCE_RATIO * present[small]:
            notes.append(f"classes are imbalanced: {big} has {present[big]} training images, {small} "
                         f"{present[small]} ({present[big] / present[small]:.0f}:1); consider --class-weights balanced")
    return notes


def balanced_class_weights(rows: Iterable[SplitRow], classes: Sequence[str]) -> list[float]:
    """scikit-learn's "balanced" weights, ``n_train / (n_classes * n_train_of_class)``: each class
    weighs as much in the loss as if the classes were the same size."""
    counts = class_counts(rows)
    train = [counts.get(c, {}).get("train", 0) for c in classes]
    total, k = sum(train), len(classes)
    return [total / (k * n) if n else 0.0 for n in train]


def class_counts(rows: Iterable[SplitRow]) -> dict[str, dict[str, int]]:
    """Images per class on each side of the split, for summaries."""
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        side = "valid" if r.is_valid else "train"
        counts.setdefault(r.label, {"train": 0, "valid": 0})[side] += 1
    return counts
