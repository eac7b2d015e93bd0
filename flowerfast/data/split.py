"""The train/validation split, computed once and written to ``split.csv`` so it can be reused
exactly, and what it says about each class (counts, thin classes, balanced weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.folders import ImageFolder
from flowerfast.runs.config import DEFAULTS
from flowerfast.runs.folder import SplitRow, read_split_csv
from flowerfast.runs.records import label_set


def split_rows(
    folder: ImageFolder,
    valid_pct: float = DEFAULTS.valid_pct,
    seed: int = DEFAULTS.seed,
    stratify: bool = DEFAULTS.stratify,
) -> list[SplitRow]:
    """Assign each image to train or valid: the folder's own split; else, by default, a random
    split stratified by class (:func:`stratified_valid_indices`); with ``stratify=False``,
    fastai's plain ``RandomSplitter``, as the flower report did."""
    if folder.preset_split is not None:
        is_valid = folder.preset_split
    else:
        if stratify:
            strata = rarest_labels(folder.labels) if folder.multi_label else folder.labels
            valid_set = stratified_valid_indices(strata, valid_pct, seed)
        else:
            from fastai.data.transforms import RandomSplitter

            _, valid_idx = RandomSplitter(valid_pct=valid_pct, seed=seed)(folder.files)
            valid_set = set(int(i) for i in valid_idx)
        is_valid = [i in valid_set for i in range(len(folder.files))]
    rows = [SplitRow(f, lbl, v) for f, lbl, v in zip(folder.files, folder.labels, is_valid)]
    if not any(r.is_valid for r in rows):
        raise FlowerfastError("the validation set is empty: add images or raise $valid_pct", parameters=("valid_pct",))
    if all(r.is_valid for r in rows):
        raise FlowerfastError("the training set is empty: add images or lower $valid_pct", parameters=("valid_pct",))
    return rows


def rarest_labels(labels: Sequence[str]) -> list[str]:
    """Each multi-label photo's rarest class (by photos over the whole set; ``""`` for none), the
    stratum its split is drawn in: stratified by whole label sets, a combination only one photo has
    would always land in training, and a rare class could miss validation altogether."""
    from collections import Counter

    sets = [label_set(label) for label in labels]
    freq = Counter(c for s in sets for c in s)
    return [min(s, key=lambda c: (freq[c], c)) if s else "" for s in sets]


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


def rows_from_split_file(folder: ImageFolder, split_file: Path) -> list[SplitRow]:
    """The rows of an earlier run's ``split.csv``, checked against the scanned folder."""
    rows = read_split_csv(split_file, folder.root)
    known = set(folder.files)
    missing = [r.file for r in rows if r.file not in known]
    if missing:
        raise FlowerfastError(
            f"{len(missing)} file(s) of {split_file} are not readable images of {folder.root} "
            f"(e.g. {missing[0]}): the split does not belong to this data folder"
        )
    named = {c for r in rows for c in label_set(r.label)} if folder.multi_label else {r.label for r in rows}
    unknown = sorted(named - set(folder.classes))
    if unknown:
        raise FlowerfastError(f"{split_file} names classes that {folder.root} lacks: {', '.join(unknown)}")
    return rows


FEW_TRAINING_IMAGES = 5
IMBALANCE_RATIO = 10


class ThinClassWarning(UserWarning):
    """A class has no training image, too few to learn it, or far fewer than another class."""


def thin_class_warnings(rows: Iterable[SplitRow], classes: Iterable[str], multi_label: bool = False) -> list[str]:
    """One sentence per class the model can hardly learn: none, or fewer than a handful, of its
    images on the training side of the split (a small class can land wholly in validation); and
    one when the largest class has over ten times the training images of the smallest, where
    plain training learns to favour the large class."""
    counts = class_counts(rows, multi_label)
    notes = []
    train = {c: counts.get(c, {}).get("train", 0) for c in classes}
    for c, n in train.items():
        if n == 0:
            notes.append(
                f"class {c} has no training image (all its images are in validation): "
                f"the model cannot learn it; add photos or lower --valid-pct"
            )
        elif n < FEW_TRAINING_IMAGES:
            notes.append(f"class {c} has only {n} training image(s): expect it to be learnt poorly")
    present = {c: n for c, n in train.items() if n > 0}
    if present:
        big, small = max(present, key=present.get), min(present, key=present.get)
        if present[big] > IMBALANCE_RATIO * present[small]:
            notes.append(
                f"classes are imbalanced: {big} has {present[big]} training images, {small} "
                f"{present[small]} ({present[big] / present[small]:.0f}:1); consider --class-weights balanced"
            )
    return notes


def balanced_class_weights(rows: Iterable[SplitRow], classes: Sequence[str], multi_label: bool = False) -> list[float]:
    """scikit-learn's "balanced" weights, ``n_train / (n_classes * n_train_of_class)``: each class
    weighs as much in the loss as if the classes were the same size.

    Multi-label, each class is its own yes-or-no question, so its weight is the ``pos_weight`` of
    PyTorch's ``BCEWithLogitsLoss``: the training photos without the class over those with it."""
    rows = list(rows)
    counts = class_counts(rows, multi_label)
    train = [counts.get(c, {}).get("train", 0) for c in classes]
    if multi_label:
        total = sum(not r.is_valid for r in rows)
        return [(total - n) / n if n else 0.0 for n in train]
    total, k = sum(train), len(classes)
    return [total / (k * n) if n else 0.0 for n in train]


def class_counts(rows: Iterable[SplitRow], multi_label: bool = False) -> dict[str, dict[str, int]]:
    """Images per class on each side of the split, for summaries (multi-label: a photo counts for
    each of its classes)."""
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        side = "valid" if r.is_valid else "train"
        for label in label_set(r.label) if multi_label else [r.label]:
            counts.setdefault(label, {"train": 0, "valid": 0})[side] += 1
    return counts
