"""Likely label errors: photos whose out-of-sample probabilities disagree with their label,
ranked by cleanlab (the ``cleanlab`` extra), for ``flowerfast check --model RUN`` and ``--folds K``.

Why out-of-sample: a model scores the photos it trained on as it was taught, wrong labels
included, so only probabilities of photos it never trained on can accuse a label. A run's own
``valid_predictions.csv`` holds them for its validation split, for free (``--model``); for every
photo, ``--folds K`` trains K models with the run's options, each on K-1 folds of a split
stratified by class, and takes each photo's probabilities from the model that held it out.

Why cleanlab's ``find_label_issues``: it flags a photo when its given class gets less probability
than that class's photos typically get (per-class thresholds from the confident joint), so a
model that is merely unsure of a hard class accuses fewer of its photos; the flagged ones are
ranked by self-confidence, the probability of the given label, lowest first.

Why here, in the reporting layer: ``--folds`` trains (``training``) and the matching of a run's
photos reads its files; the checks themselves (:mod:`flowerfast.data.checks`) need neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.data.checks import DataCheck, Photo
from flowerfast.runs.folder import VALID_PREDICTIONS, RunFolder, SplitRow, relative_path, write_split_csv

DEFAULT_TOP = 20
"""Suspects listed on the page and in ``check.json`` (cleanlab's whole count is reported too)."""


@dataclass(frozen=True)
class Suspect:
    """A photo whose label the model doubts: its given label, the model's answer and that answer's
    probability, and the probability the model gives the given label (lowest first)."""

    photo: Photo
    predicted: str
    probability: float
    label_probability: float

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {
            **self.photo.to_dict(root),
            "predicted": self.predicted,
            "probability": round(self.probability, 6),
            "label_probability": round(self.label_probability, 6),
        }


@dataclass
class LabelIssues:
    """What cleanlab found: ``ranked`` photos had out-of-sample probabilities (``source`` says
    whose), ``found`` of them were flagged, and ``suspects`` are the first ``top`` of those."""

    method: str
    source: str
    ranked: int
    found: int
    suspects: list[Suspect]
    seconds: float

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {
            "method": self.method,
            "source": self.source,
            "ranked": self.ranked,
            "found": self.found,
            "seconds": round(self.seconds, 3),
            "suspects": [s.to_dict(root) for s in self.suspects],
        }


def require_cleanlab() -> None:
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise FlowerfastError('finding label errors needs cleanlab: pip install "flowerfast[cleanlab]"')


def find_label_issues(
    check: DataCheck,
    model: Optional[Path | str] = None,
    folds: Optional[int] = None,
    top: int = DEFAULT_TOP,
    work_dir: Optional[Path] = None,
    reporter: Optional[Reporter] = None,
    **train_options,
) -> LabelIssues:
    """The likely label errors of the checked photos, from ``model``'s validation predictions or,
    with ``folds``, from K models trained on ``check``'s folder with ``model``'s options (or
    ``flowerfast train``'s defaults without one). The fold runs are written under ``work_dir``
    (a temporary folder, removed afterwards, when ``None``); ``train_options`` override the
    options they train with (``threads``, ``device``)."""
    run = check_label_options(model, folds, top)
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    if folds is not None:
        with _work_folder(work_dir) as work:
            photos, classes, probs = fold_probabilities(check, run, folds, work, reporter, **train_options)
        method, source = (
            "folds",
            f"{folds}-fold models trained "
            + (f"with the options of {run.path}" if run else "with flowerfast train's defaults"),
        )
    else:
        photos, classes, probs = run_probabilities(check, run)
        method, source = "validation split", f"{run.path / VALID_PREDICTIONS}"
    found, suspects = rank_suspects(photos, classes, probs, top)
    return LabelIssues(method, source, len(photos), found, suspects, time.perf_counter() - started)


def check_label_options(model: Optional[Path | str], folds: Optional[int], top: int) -> Optional[RunFolder]:
    """The run folder ``model`` names (``None`` without one), once cleanlab, ``folds`` and ``top``
    are known to be usable: a one-line error before any photo is read otherwise."""
    require_cleanlab()
    if top < 1:
        raise FlowerfastError(f"$top must be at least 1 (got {top})", parameters=("top",))
    if folds is not None and folds < 2:
        raise FlowerfastError(f"$folds must be at least 2 (got {folds})", parameters=("folds",))
    if model is None:
        if folds is None:
            raise FlowerfastError(
                "give $model (a run folder) or $folds to find label errors", parameters=("model", "folds")
            )
        return None
    run = RunFolder.open(model)
    if run.read_config() is None:
        raise FlowerfastError(f"{run.path} is not a run folder: it has no config.json")
    return run


@contextlib.contextmanager
def _work_folder(work_dir: Optional[Path]) -> Iterator[Path]:
    if work_dir is not None:
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="flowerfast-folds-") as tmp:
        yield Path(tmp)


def rank_suspects(photos: Sequence[Photo], classes: Sequence[str], probs, top: int) -> tuple[int, list[Suspect]]:
    """cleanlab's count of label issues among ``photos`` (rows of ``probs``, columns ``classes``)
    and the first ``top`` of them by self-confidence."""
    import numpy as np
    from cleanlab.filter import find_label_issues as cleanlab_issues

    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # the CSV's 6 decimals need not sum to 1
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[p.label] for p in photos])
    if len(photos) < 2 or len(set(labels.tolist())) < 2:
        raise FlowerfastError(
            f"only {len(photos)} photo(s) of {len(set(labels.tolist()))} class(es) have out-of-sample "
            "probabilities: too few to find label errors in"
        )
    ranked = cleanlab_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)  # no fork
    suspects = [
        Suspect(
            photos[i],
            classes[int(probs[i].argmax())],
            float(probs[i].max()),
            float(probs[i, labels[i]]),
        )
        for i in ranked[:top].tolist()
    ]
    return len(ranked), suspects


def run_probabilities(check: DataCheck, run: RunFolder) -> tuple[list[Photo], list[str], Any]:
    """The checked photos that are in ``run``'s validation split, with the probabilities its best
    model gave them (``valid_predictions.csv``). A photo is matched by its bytes (the run's copy
    hashed where its data folder still holds it), else by its path under the data folder, so a
    photo moved to another class folder since keeps its probabilities and gets its new label.
    Photos whose class the model does not know are left out."""
    if not run.file(VALID_PREDICTIONS).is_file():
        raise FlowerfastError(f"{run.path} has no {VALID_PREDICTIONS}: is it a finished run folder?")
    config = run.read_config()
    run_root = Path(config.data)
    classes = list(config.classes)
    known = set(classes)
    by_path = {_real(p.file): p for p in checked_photos(check)}
    by_sha: dict[str, list[Photo]] = {}
    for p in by_path.values():
        if p.file in check.hashes:
            by_sha.setdefault(check.hashes[p.file].sha256, []).append(p)
    matched: dict[Path, Any] = {}
    for row in run.read_valid_predictions():
        probs = [row.probabilities.get(c, 0.0) for c in classes]
        for photo in _matches(row.file, run_root, check.root, by_path, by_sha):
            if photo.label in known:
                matched.setdefault(photo.file, (photo, probs))
    if not matched:
        raise FlowerfastError(
            f"none of the photos of {check.root} is in the validation split of {run.path} "
            f"(its data: {run_root}): check the run's own data folder, or train models for every photo with $folds",
            parameters=("folds",),
        )
    ordered = [matched[p.file] for p in checked_photos(check) if p.file in matched]
    return [p for p, _ in ordered], classes, [probs for _, probs in ordered]


def checked_photos(check: DataCheck) -> list[Photo]:
    """The checked photos, once each, in the check's order."""
    seen: dict[Path, Photo] = {}
    for p in check.checked:
        seen.setdefault(p.file, p)
    return list(seen.values())


def _real(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _matches(
    file: str, run_root: Path, data_root: Path, by_path: dict[Path, Photo], by_sha: dict[str, list[Photo]]
) -> list[Photo]:
    """The checked photos that are the run's validation photo ``file``: the same file, the same
    bytes, or the same path under the checked folder."""
    original = _real(run_root / file)
    if original in by_path:
        return [by_path[original]]
    try:
        sha = hashlib.sha256(original.read_bytes()).hexdigest()
    except OSError:
        sha = None
    if sha is not None and sha in by_sha:
        return by_sha[sha]
    here = _real(data_root / file)
    return [by_path[here]] if here in by_path else []


def stratified_folds(labels: Sequence[str], folds: int, seed: int) -> list[int]:
    """Each photo's fold (0 to ``folds - 1``): each class shuffled by a generator seeded with the
    seed and the class name (as :func:`flowerfast.data.split.stratified_valid_indices` draws),
    then dealt round, so every fold holds each class's photos within one of each other."""
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    fold = [0] * len(labels)
    for label in sorted(by_class):
        indices = by_class[label]
        for k, i in enumerate(random.Random(f"{seed}:{label}").sample(indices, len(indices))):
            fold[i] = k % folds
    return fold


def write_fold_split(photos: Sequence[Photo], fold: Sequence[int], k: int, path: Path, root: Path) -> Path:
    """A ``split.csv`` whose validation side is fold ``k`` and training side every other fold."""
    rows = [SplitRow(p.file, p.label, f == k) for p, f in zip(photos, fold)]
    return write_split_csv(rows, path, root)


def fold_probabilities(
    check: DataCheck, run: Optional[RunFolder], folds: int, work: Path, reporter: Reporter, **train_options
) -> tuple[list[Photo], list[str], Any]:
    """Out-of-sample probabilities for every readable checked photo: ``folds`` models trained
    through :func:`flowerfast.train` on the checked folder with ``run``'s options (or the
    defaults), each on a ``split.csv`` (``work/fold-N-split.csv``) that holds out one fold, into
    ``work/fold-N``; each photo's probabilities are those of the model that held it out."""
    from flowerfast.runs.config import TrainConfig
    from flowerfast.training.run import train

    photos = [p for p in checked_photos(check) if p.file in check.hashes]
    options = run.read_config().options if run is not None else TrainConfig()
    fold = stratified_folds([p.label for p in photos], folds, options.seed)
    work.mkdir(parents=True, exist_ok=True)
    probs: dict[str, dict[str, float]] = {}
    for k in range(folds):
        split = write_fold_split(photos, fold, k, work / f"fold-{k + 1}-split.csv", check.root)
        held_out = fold.count(k)
        reporter.stage(f"fold {k + 1} of {folds}: training on {len(photos) - held_out} photos, predicting {held_out}")
        result = train(
            options,
            reporter=reporter,
            **{"trackers": [], "save_every": 0, **train_options},
            data=check.root,
            split_file=split,
            out=work / f"fold-{k + 1}",
        )
        probs.update((row.file, row.probabilities) for row in RunFolder(result.run_dir).read_valid_predictions())
    classes = list(check.classes)
    scored = [(p, probs.get(relative_path(p.file, check.root))) for p in photos]
    scored = [(p, row) for p, row in scored if row is not None]  # a photo training could not read has none
    return [p for p, _ in scored], classes, [[row.get(c, 0.0) for c in classes] for _, row in scored]
