"""Which photos an evaluation scores: a labelled folder, or a run's own validation split; and
how many of them the run trained on.

Why a module of its own: scoring photos a model was trained on gives an optimistic accuracy, and
the run folder (``split.csv``, ``config.json``) is what says which photos those are. Evaluate and
calibrate read the same split the same way from here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.folders import SkippedFile, scan_image_folder
from flowerfast.runs.folder import CONFIG, SPLIT, RunFolder


class TrainingOverlapWarning(UserWarning):
    """Some evaluated images are images the model was trained on: the accuracy is optimistic."""


def run_of(model_or_path) -> Optional[RunFolder]:
    """The run folder a model came from (a run folder itself, or a model file inside one), if any."""
    if not isinstance(model_or_path, (str, Path)):
        return None
    path = Path(model_or_path).expanduser()
    folder = path if path.is_dir() else path.parent
    run = RunFolder(folder)
    return run if run.file(CONFIG).is_file() and run.file(SPLIT).is_file() else None


def validation_split(run: RunFolder) -> tuple[Path, list[Path], list[str], list[SkippedFile]]:
    """The run's own validation images and labels, from ``split.csv`` and the data folder in
    ``config.json``; a photo no longer there is skipped with the reason."""
    root = Path(run.read_config().data)
    files, labels, skipped = [], [], []
    for row in run.read_split(root):
        if row.is_valid:
            if row.file.is_file():
                files.append(row.file)
                labels.append(row.label)
            else:
                skipped.append(SkippedFile(row.file, "no longer there"))
    return root, files, labels, skipped


def training_overlap(run: RunFolder, files: Sequence[Path]) -> int:
    """How many of ``files`` the run trained on: the same file (by real path) or the same bytes
    (a copy under another name). Only files whose size equals a training image's are hashed, so
    checking a big folder costs a stat per file, not a read."""
    import hashlib
    import os

    root = Path(run.read_config().data)
    train = [r.file for r in run.read_split(root) if not r.is_valid]
    real = {os.path.realpath(f) for f in train}
    by_size: dict[int, list[Path]] = {}
    for f in train:
        try:
            by_size.setdefault(os.stat(f).st_size, []).append(f)
        except OSError:
            pass
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> Optional[str]:
        if path not in hashes:
            try:
                hashes[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                hashes[path] = None
        return hashes[path]

    count = 0
    for f in files:
        if os.path.realpath(f) in real:
            count += 1
            continue
        try:
            candidates = by_size.get(os.stat(f).st_size, [])
        except OSError:
            continue
        if candidates and digest(f) in {digest(c) for c in candidates}:
            count += 1
    return count


def images_to_score(
    run: Optional[RunFolder], data_dir: Optional[Path | str], labels: Optional[Path | str] = None, multi_label=False
):
    """``(root, files, labels, skipped, source)``: the labelled folder's images (labelled by its
    class folders or by the ``labels`` table), or without one the run's own validation split."""
    if data_dir is None:
        if run is None:
            raise FlowerfastError(
                "give a folder of labelled images to evaluate on; only a run folder (or a model "
                "in one) can be scored on its own validation split without one"
            )
        root, files, labels, skipped = validation_split(run)
        return root, files, labels, skipped, f"validation split of {run.path}"
    if labels is not None or multi_label:
        from flowerfast.data.labelfiles import scan_data

        folder = scan_data(data_dir, labels=labels, multi_label=multi_label)
    else:
        folder = scan_image_folder(data_dir)
    return folder.root, folder.files, folder.labels, folder.skipped, "folder"


def warn_of_training_overlap(run: RunFolder, files: Sequence[Path]) -> int:
    """How many of ``files`` the run trained on (:func:`training_overlap`), warned about when
    any: they make the accuracy optimistic."""
    trained_on = training_overlap(run, files)
    if trained_on:
        warnings.warn(
            f"{trained_on} of {len(files)} images ({trained_on / len(files):.0%}) were in the "
            f"model's training set (same file or same content): the accuracy is optimistic. "
            f"`flowerfast evaluate {run.path}` scores its validation split",
            TrainingOverlapWarning,
            stacklevel=3,
        )
    return trained_on
