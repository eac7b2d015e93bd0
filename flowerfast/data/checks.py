"""What is wrong with a data folder before anything trains on it: unreadable files, copies of one
photo (byte-identical or near-identical), photos too small to train on, and thin or imbalanced
classes; and, for ``flowerfast train``, the copies that make its validation accuracy a lie.

Why copies matter: a photo in training with its copy in validation is scored on what the model
has seen (leakage: the validation accuracy is optimistic), and a photo under two labels is a
label error in one of the two folders, which the model can never get right. Photo collections
gathered from the web hold both (the shared flowers do, see the README).

Every check takes an :class:`~flowerfast.data.folders.ImageFolder` and its split rows, not a path,
so a folder read from a labels file is checked the same way. Each photo is hashed once
(:mod:`flowerfast.data.hashes`). Nothing here prints; long loops report through a
:class:`~flowerfast.core.progress.Reporter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import Reporter
from flowerfast.data.folders import NATURAL_SIZE_RANGE, ImageFolder, SkippedFile
from flowerfast.data.hashes import DEFAULT_MAX_DISTANCE, PhotoHash, close_pairs, hash_photos
from flowerfast.data.split import class_counts, rows_from_split_file, split_rows, thin_class_warnings
from flowerfast.runs.config import DEFAULTS
from flowerfast.runs.folder import SplitRow, relative_path

MIN_SIDE = NATURAL_SIZE_RANGE[0]
"""A photo whose shorter side is below this (64 px, the smallest size flowerfast trains at by
default) is tiny: training would upscale it, adding blur rather than detail."""
MAX_BITS = 64


@dataclass(frozen=True)
class Photo:
    """One photo as a finding lists it: file, label and side of the split (``"train"``,
    ``"valid"``, or ``None`` for a photo a split file leaves out)."""

    file: Path
    label: str
    side: Optional[str]

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {"file": relative_path(self.file, root), "label": self.label, "side": self.side}


@dataclass
class Copies:
    """Photos that are one photo: byte-identical (``kind="identical"``, a group of two or more,
    ``distance`` 0) or near-identical (``kind="near"``, a pair of different files whose difference
    hashes are ``distance`` bits apart)."""

    kind: str
    photos: list[Photo]
    distance: int = 0

    @property
    def labels(self) -> list[str]:
        return sorted({p.label for p in self.photos})

    @property
    def cross_class(self) -> bool:
        """One photo under two labels: one of them is wrong."""
        return len(self.labels) > 1

    @property
    def straddles_split(self) -> bool:
        """Copies in training and in validation: the validation copy is scored on a photo trained on."""
        sides = {p.side for p in self.photos}
        return "train" in sides and "valid" in sides

    @property
    def where(self) -> str:
        """``across classes``, ``across the split``, both, or ``within one class``."""
        kinds = [
            k for k, on in (("across classes", self.cross_class), ("across the split", self.straddles_split)) if on
        ]
        return " and ".join(kinds) or "within one class"

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "distance": self.distance,
            "cross_class": self.cross_class,
            "straddles_split": self.straddles_split,
            "photos": [p.to_dict(root) for p in self.photos],
        }


@dataclass(frozen=True)
class TinyPhoto:
    """A photo whose shorter side is below the check's minimum."""

    photo: Photo
    width: int
    height: int

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {**self.photo.to_dict(root), "width": self.width, "height": self.height}


@dataclass
class DataCheck:
    """Everything ``flowerfast check`` found in a data folder; :meth:`to_dict` is ``check.json``.

    ``identical`` and ``near`` are ordered with the worst first (across classes, then across the
    split); a byte-identical pair is listed once, in ``identical``, never again in ``near``.
    ``label_issues`` is set by :func:`flowerfast.reporting.datacheck.check_data` when a model
    ranked the photos (a :class:`flowerfast.reporting.labelissues.LabelIssues`). ``checked`` lists
    the photos with their labels and sides, and ``hashes`` each one's
    :class:`~flowerfast.data.hashes.PhotoHash` (neither is written to ``check.json``).
    """

    root: Path
    classes: list[str]
    photos: int
    split: str
    max_distance: int
    min_side: int
    unreadable: list[SkippedFile]
    identical: list[Copies]
    near: list[Copies]
    tiny: list[TinyPhoto]
    class_counts: dict[str, dict[str, int]]
    balance_warnings: list[str]
    seconds: float
    label_issues: Optional[Any] = None
    checked: list[Photo] = field(default_factory=list, repr=False)
    hashes: dict[Path, PhotoHash] = field(default_factory=dict, repr=False)

    @property
    def leaked(self) -> list[Path]:
        """Validation photos with a byte-identical or near-identical copy in training."""
        return leaked_photos(self.identical + self.near)

    def counts(self) -> dict[str, int]:
        """How many of each finding: the summary line of the CLI and of ``check.json``."""
        groups = self.identical + self.near
        return {
            "unreadable": len(self.unreadable),
            "identical_groups": len(self.identical),
            "identical_photos": sum(len(g.photos) for g in self.identical),
            "identical_cross_class": sum(g.cross_class for g in self.identical),
            "identical_straddling_split": sum(g.straddles_split for g in self.identical),
            "near_pairs": len(self.near),
            "near_cross_class": sum(g.cross_class for g in self.near),
            "near_straddling_split": sum(g.straddles_split for g in self.near),
            "validation_photos_with_a_copy_in_training": len(leaked_photos(groups)),
            "tiny": len(self.tiny),
            "balance_warnings": len(self.balance_warnings),
        }

    def to_dict(self) -> dict[str, Any]:
        root = self.root
        return {
            "data": str(root),
            "classes": self.classes,
            "photos": self.photos,
            "split": self.split,
            "max_distance": self.max_distance,
            "min_side": self.min_side,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "unreadable": [{"file": relative_path(s.path, root), "reason": s.reason} for s in self.unreadable],
            "identical": [g.to_dict(root) for g in self.identical],
            "near": [g.to_dict(root) for g in self.near],
            "tiny": [t.to_dict(root) for t in self.tiny],
            "class_counts": self.class_counts,
            "balance_warnings": self.balance_warnings,
            "label_issues": self.label_issues.to_dict(root) if self.label_issues is not None else None,
        }


def check_max_distance(bits: int) -> int:
    if not 0 <= bits < MAX_BITS:
        raise FlowerfastError(
            f"$max_distance must be from 0 to {MAX_BITS - 1} bits of the 64-bit hash (got {bits})",
            parameters=("max_distance",),
        )
    return int(bits)


def check_split(
    folder: ImageFolder,
    valid_pct: float = DEFAULTS.valid_pct,
    seed: int = DEFAULTS.seed,
    stratify: bool = DEFAULTS.stratify,
    split_file: Optional[Path | str] = None,
) -> tuple[list[SplitRow], str]:
    """The split ``flowerfast train`` would use with these options, and how to say it: an earlier
    run's ``split.csv``, the folder's own train/valid folders, else the seeded random split."""
    if split_file is not None:
        if not Path(split_file).is_file():
            raise FlowerfastError(f"split file not found: {split_file}")
        return rows_from_split_file(folder, Path(split_file)), f"split from {split_file}"
    if not 0 < valid_pct < 1:
        raise FlowerfastError(
            f"$valid_pct must be between 0 and 1, exclusive (got {valid_pct})", parameters=("valid_pct",)
        )
    rows = split_rows(folder, valid_pct=valid_pct, seed=seed, stratify=stratify)
    if folder.preset_split is not None:
        return rows, "the folder's own train/valid split"
    kind = "stratified random split" if stratify else "random split"
    return rows, f"{kind}, seed {seed}, {valid_pct:.0%} validation"


def check_folder(
    folder: ImageFolder,
    rows: Sequence[SplitRow],
    split: str = "",
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_side: int = MIN_SIDE,
    reporter: Optional[Reporter] = None,
) -> DataCheck:
    """Check every photo of ``folder``: its scan's unreadable files, copies (each classified by
    the ``rows`` of the split), tiny photos, and class balance. ``split`` says which split the
    rows are, for the report. A photo the rows leave out is checked with no side."""
    started = time.perf_counter()
    max_distance = check_max_distance(max_distance)
    photos = photos_of(folder, rows)
    hashes, unhashable = hash_photos([p.file for p in photos], reporter)
    identical, near = find_copies(photos, hashes, max_distance)
    tiny = [
        TinyPhoto(p, hashes[p.file].width, hashes[p.file].height)
        for p in photos
        if p.file in hashes and min(hashes[p.file].width, hashes[p.file].height) < min_side
    ]
    return DataCheck(
        root=folder.root,
        classes=list(folder.classes),
        photos=len(photos),
        split=split,
        max_distance=max_distance,
        min_side=min_side,
        unreadable=list(folder.skipped) + unhashable,
        identical=identical,
        near=near,
        tiny=tiny,
        class_counts=class_counts(rows, folder.multi_label),
        balance_warnings=thin_class_warnings(rows, folder.classes, folder.multi_label),
        seconds=time.perf_counter() - started,
        checked=photos,
        hashes=hashes,
    )


def photos_of(folder: ImageFolder, rows: Sequence[SplitRow]) -> list[Photo]:
    """The rows' photos with their sides, then the folder's photos that the rows leave out."""
    photos = [Photo(r.file, r.label, "valid" if r.is_valid else "train") for r in rows]
    listed = {r.file for r in rows}
    photos += [Photo(f, label, None) for f, label in zip(folder.files, folder.labels) if f not in listed]
    return photos


def find_copies(
    photos: Sequence[Photo], hashes: dict[Path, PhotoHash], max_distance: int
) -> tuple[list[Copies], list[Copies]]:
    """Byte-identical groups (one SHA-256) and near-identical pairs of different files (difference
    hashes at most ``max_distance`` bits apart), worst first. The near search runs over one
    photo per SHA-256 and each pair found stands for every pair of the two groups' files, so
    byte-identical files are never a near pair of each other."""
    by_sha: dict[str, list[Photo]] = {}
    for p in photos:
        if p.file in hashes:
            by_sha.setdefault(hashes[p.file].sha256, []).append(p)
    groups = list(by_sha.values())
    identical = [Copies("identical", g) for g in groups if len(g) > 1]
    near = [
        Copies("near", [a, b], distance)
        for i, j, distance in close_pairs([hashes[g[0].file].dhash for g in groups], max_distance)
        for a in groups[i]
        for b in groups[j]
    ]
    return worst_first(identical), worst_first(near)


def worst_first(copies: list[Copies]) -> list[Copies]:
    """Across classes first, then across the split, then the closest; stable otherwise."""
    return sorted(copies, key=lambda c: (not c.cross_class, not c.straddles_split, c.distance))


def leaked_photos(copies: Sequence[Copies]) -> list[Path]:
    """The validation photos of ``copies`` with a copy in training, each once, in order."""
    leaked: dict[Path, None] = {}
    for c in copies:
        if c.straddles_split:
            for p in c.photos:
                if p.side == "valid":
                    leaked[p.file] = None
    return list(leaked)


class DuplicatePhotoWarning(UserWarning):
    """Copies of a photo lie on both sides of the split, or carry two labels."""


def duplicate_warnings(
    rows: Sequence[SplitRow],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    data: Optional[Path | str] = None,
    reporter: Optional[Reporter] = None,
) -> list[str]:
    """One sentence, with counts, for each way copies of a photo spoil a run: copies on both sides
    of the split (leakage), and copies under two labels. For ``flowerfast train`` to warn before
    training; ``data`` names the folder in the advice (``flowerfast check DATA``).

    Every photo is read and hashed (:func:`~flowerfast.data.hashes.hash_photos`): measured on
    this project's 2-core CPU, 1.6 s for the 2,985 shared flowers (128 px JPEGs) on one core,
    under 2% of one epoch of the default fine-tune on them on one thread (95 to 104 s) and under
    4% of one on two (46 s). Unreadable files are left to the scan's own report.
    """
    photos = [Photo(r.file, r.label, "valid" if r.is_valid else "train") for r in rows]
    hashes, _ = hash_photos([p.file for p in photos], reporter)
    identical, near = find_copies(photos, hashes, check_max_distance(max_distance))
    copies = identical + near
    advice = f"run flowerfast check {data if data is not None else 'DATA'}"
    notes = []
    leaked = leaked_photos(copies)
    if leaked:
        have = "photo in validation has" if len(leaked) == 1 else "photos in validation have"
        notes.append(
            f"{len(leaked)} {have} a byte-identical or near-identical copy in training "
            f"(leakage inflates validation accuracy): {advice}"
        )
    two_labels = {p.file for c in copies if c.cross_class for p in c.photos}
    if two_labels:
        notes.append(
            f"{len(two_labels)} photos are byte-identical or near-identical copies under another label "
            f"(one photo, two classes: one label is wrong): {advice}"
        )
    return notes
