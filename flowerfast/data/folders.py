"""Finding the photos of a data folder: one folder per class (or ``train``/``valid`` folders
holding them), scanned and checked before anything starts, and the image size they suggest.

Why scanning is done here and not by fastai's ``get_image_files``: a real photo folder holds hidden
files, stray text files and the odd broken JPEG. Each would crash training half an hour in; here
they are ignored (hidden, non-image) or skipped and reported (unreadable) before anything starts.
The split (:mod:`flowerfast.data.split`) is computed from the scan once, up front, and the
DataLoaders (:mod:`flowerfast.data.loaders`) open the photos through the image cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import Reporter
from flowerfast.data.imagefiles import check_image, find_images, is_hidden, is_inside

VALID_FOLDER_NAMES = ("valid", "val")


def default_data_dir() -> Path:
    """The embedded sample set (200 photos, 5 classes) that ships inside the package."""
    return Path(__file__).resolve().parents[1] / "sample" / "flowers"


@dataclass(frozen=True)
class SkippedFile:
    """An image file that could not be read, and why."""

    path: Path
    reason: str


@dataclass
class ImageFolder:
    """The result of scanning a data folder: classes, readable images and skipped files.

    ``preset_split`` holds each file's ``is_valid`` when the folder has train/ and valid/ (or val/)
    subfolders; otherwise it is ``None`` and the split is made at random. With ``multi_label``
    (labels read from a table, :mod:`flowerfast.data.labelfiles`) a label is the photo's classes
    joined by ``;`` (:func:`flowerfast.runs.folder.label_set` splits it), possibly none.
    """

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    preset_split: Optional[list[bool]] = None
    multi_label: bool = False


def _class_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not is_hidden(p.name))


def _class_images(parent: Path, skipped: list, seen: set, data_root: Path) -> list[tuple[Path, list[Path]]]:
    """Each class folder under ``parent`` with the image files found in it (not yet opened).

    Each class folder is walked by :func:`~flowerfast.data.imagefiles.find_images`: links are followed
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
                skipped.append(
                    SkippedFile(
                        folder,
                        f"class folder is a link to {real}, inside the data folder or "
                        f"holding it: not followed, so no photo is taken twice",
                    )
                )
                continue
        images, problems = find_images(folder, seen=seen, data_root=data_root)
        skipped.extend(SkippedFile(path, reason) for path, reason in problems)
        groups.append((folder, images))
    return groups


def _check_classes(
    groups: list[tuple[Path, list[Path]]],
    files: list,
    labels: list,
    skipped: list,
    check: bool,
    reporter: Optional[Reporter] = None,
) -> list[str]:
    """Open every image's header (:func:`~flowerfast.data.imagefiles.check_image`), one progress step
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
    (:data:`~flowerfast.data.imagefiles.MAX_PIXELS`) are in ``skipped`` with their reasons. ``reporter``
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
        classes, valid_classes = all_classes[: len(train_groups)], all_classes[len(train_groups) :]
        train_files = {path for _, images in train_groups for path in images}
        n_train = sum(f in train_files for f in files)  # train files come first, in order
        unknown = sorted(set(valid_classes) - set(classes))
        if unknown:
            raise FlowerfastError(f"{valid_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
        preset = [False] * n_train + [True] * (len(files) - n_train)
    if not classes:
        raise FlowerfastError(
            f"no class folders found in {root} (expected one folder per class, e.g. {root}/daisy/1.jpg)"
        )
    if len(classes) < 2:
        raise FlowerfastError(
            f"only one class found in {root} ({classes[0]}): classification needs at least two class folders"
        )
    return ImageFolder(root=root, classes=classes, files=files, labels=labels, skipped=skipped, preset_split=preset)


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
    from flowerfast.data.imagefiles import open_image

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
