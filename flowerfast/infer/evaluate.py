"""Scoring a trained classifier on a labelled folder: accuracy, per-class metrics, confusion, mistakes.

The folder is scanned like training data (one folder per class, unreadable files skipped and
reported), predicted with :mod:`flowerfast.infer.predict`, and scored from the predictions alone with
scikit-learn's metrics (a well-tested standard, not a hand-written count), so every figure can be
checked by hand from ``predictions.csv``. The plots come from :mod:`flowerfast.core.plots`, so the
confusion matrix looks exactly like the comparison report's.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from sklearn.metrics import precision_recall_fscore_support

from flowerfast.core.calibration import Calibration, measure, reliability_bins, rescaled
from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_bytes, create_run_dir, write_csv, write_json
from flowerfast.core.plots import confusion_png, mistakes_png, reliability_png
from flowerfast.core.stats import confusion_counts
from flowerfast.data.folders import SkippedFile, scan_image_folder
from flowerfast.infer.predict import LoadedModel, as_loaded_model
from flowerfast.runs.config import INFERENCE_BATCH_SIZE
from flowerfast.runs.folder import CONFIG, SPLIT, RunFolder, relative_path


@dataclass
class ClassMetrics:
    """Precision, recall and F1 of one class; 0 where undefined (no predictions or no images)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Mistake:
    """A wrongly classified image and how sure the model was of its wrong answer."""

    path: Path
    true: str
    predicted: str
    probability: float


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` measured. ``confusion[i][j]`` counts images of ``classes[i]``
    predicted as ``classes[j]``; ``classes`` are the model's, in its order."""

    data_dir: Path
    classes: list[str]
    n_images: int
    accuracy: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]
    mistakes: list[Mistake]
    files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = "folder"
    trained_on: int = 0
    calibration: Optional[Calibration] = None
    reliability: dict = field(default_factory=dict)  # name -> reliability bins, for calibration.png

    @property
    def macro_f1(self) -> float:
        present = [m for m in self.per_class if m.support > 0]
        return sum(m.f1 for m in present) / len(present) if present else 0.0

    def to_dict(self) -> dict:
        return {
            "data_dir": str(self.data_dir),
            "classes": self.classes,
            "n_images": self.n_images,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": [asdict(m) for m in self.per_class],
            "confusion": self.confusion,
            "mistakes": [{**asdict(m), "path": str(m.path)} for m in self.mistakes],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
            "source": self.source,
            "trained_on": self.trained_on,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }


def score_classes(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of each class (scikit-learn's; 0 where undefined)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(classes), zero_division=0
    )
    return [
        ClassMetrics(name, float(p), float(r), float(f), int(n))
        for name, p, r, f, n in zip(classes, precision, recall, f1, support)
    ]


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


def images_to_score(run: Optional[RunFolder], data_dir: Optional[Path | str]):
    """``(root, files, labels, skipped, source)``: the labelled folder's images, or without one
    the run's own validation split."""
    if data_dir is None:
        if run is None:
            raise FlowerfastError(
                "give a folder of labelled images to evaluate on; only a run folder (or a model "
                "in one) can be scored on its own validation split without one"
            )
        root, files, labels, skipped = validation_split(run)
        return root, files, labels, skipped, f"validation split of {run.path}"
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


def evaluate(
    model_or_path,
    data_dir: Optional[Path | str] = None,
    mistakes: int = 9,
    bs: int = INFERENCE_BATCH_SIZE,
    device: Optional[str] = None,
    workers: Optional[int] = None,
    trust_pickle: bool = False,
    precision: str = "fp32",
    reporter=None,
) -> EvaluationResult:
    """Predict every image of a labelled folder and score the predictions.

    Without ``data_dir``, a run's model is scored on the run's own validation split (the images
    it never trained on). Given a folder, images the run trained on (same path, or same content
    under another name) are counted in ``trained_on`` and warned about: they make the accuracy
    optimistic. Class folders the model does not know are an error (their images could never be
    right); classes the model knows but the folder lacks are fine (they simply have no support).
    """
    if mistakes < 0:
        raise FlowerfastError(f"$mistakes must be 0 or more, not {mistakes}", parameters=("mistakes",))
    run = run_of(model_or_path)
    root, all_files, all_labels, scan_skipped, source = images_to_score(run, data_dir)
    model: LoadedModel = as_loaded_model(model_or_path, device=device, trust_pickle=trust_pickle, precision=precision)
    unknown = sorted(set(all_labels) - set(model.classes))
    if unknown:
        raise FlowerfastError(
            f"{root} has class folder(s) the model does not know: {', '.join(unknown)} "
            f"(model classes: {', '.join(model.classes)})"
        )
    trained_on = warn_of_training_overlap(run, all_files) if data_dir is not None and run is not None else 0
    paths, probs, errors = model.probabilities(all_files, bs=bs, workers=workers, reporter=reporter)
    skipped = list(scan_skipped) + [SkippedFile(paths[i], reason) for i, reason in sorted(errors.items())]
    keep = [i for i in range(len(paths)) if i not in errors]
    files = [paths[i] for i in keep]
    labels = [all_labels[i] for i in keep]
    if not files:
        raise FlowerfastError(f"no readable images in {root}")
    result = scored(model.classes, files, labels, probs, mistakes)
    result.data_dir, result.skipped, result.source, result.trained_on = root, skipped, source, trained_on
    result.calibration, result.reliability = calibration_of(model, probs.numpy(), labels)
    return result


def scored(classes: Sequence[str], files: list[Path], labels: list[str], probs, mistakes: int) -> EvaluationResult:
    """Accuracy, per-class figures, the confusion matrix and the ``mistakes`` most confident
    mistakes of the probabilities ``probs`` (a row per file)."""
    conf, idx = probs.max(dim=1)
    predicted = [classes[int(j)] for j in idx]
    confidence = [float(c) for c in conf]
    correct = sum(t == p for t, p in zip(labels, predicted))
    wrong = sorted((i for i in range(len(files)) if labels[i] != predicted[i]), key=lambda i: -confidence[i])
    return EvaluationResult(
        data_dir=Path(),
        classes=list(classes),
        n_images=len(files),
        accuracy=correct / len(files),
        per_class=score_classes(labels, predicted, classes),
        confusion=confusion_counts(labels, predicted, classes),
        mistakes=[Mistake(files[i], labels[i], predicted[i], confidence[i]) for i in wrong[:mistakes]],
        files=files,
        labels=labels,
        predicted=predicted,
        confidence=confidence,
    )


def calibration_of(model: LoadedModel, probs, labels: Sequence[str]) -> tuple[Calibration, dict]:
    """How well the model's confidence matches its accuracy on these photos, at temperature 1 and
    at its own temperature (the one it answers with), with the reliability bins of both."""
    targets = [model.classes.index(label) for label in labels]
    t = model.spec.temperature
    calibration = measure(probs, targets, t)
    bins = {
        f"T=1 (ECE {calibration.ece_before:.1%})": reliability_bins(rescaled(probs, 1 / t), targets),
        f"model's T={t:.2f} (ECE {calibration.ece_after:.1%})": reliability_bins(probs, targets),
    }
    return calibration, bins


def confusion_title(result: EvaluationResult) -> str:
    """The title of ``confusion.png``: what the matrix adds up to."""
    return f"accuracy {result.accuracy:.1%} ({result.n_images} images)"


@dataclass
class EvaluationFiles:
    """The report files ``save_report`` wrote."""

    out_dir: Path
    metrics: Path
    predictions: Path
    confusion: Path
    mistakes: Optional[Path]
    calibration: Optional[Path] = None


def save_report(result: EvaluationResult, out_dir: Path) -> EvaluationFiles:
    """Write ``metrics.json``, ``predictions.csv``, ``confusion.png``, ``mistakes.png`` and
    ``calibration.png`` (the reliability diagram) into a new folder."""
    out_dir = create_run_dir(out_dir)
    metrics = write_json(out_dir / "metrics.json", result.to_dict())
    predictions = write_csv(
        out_dir / "predictions.csv",
        ["file", "label", "predicted", "confidence"],
        [
            [relative_path(f, result.data_dir), t, p, round(c, 6)]
            for f, t, p, c in zip(result.files, result.labels, result.predicted, result.confidence)
        ],
    )
    confusion = atomic_write_bytes(
        out_dir / "confusion.png", confusion_png(confusion_title(result), result.classes, result.confusion)
    )
    mistakes = atomic_write_bytes(out_dir / "mistakes.png", mistakes_png(result.mistakes)) if result.mistakes else None
    calibration = None
    if result.reliability:
        png = reliability_png(f"{result.n_images} images ({result.source})", result.reliability)
        calibration = atomic_write_bytes(out_dir / "calibration.png", png)
    return EvaluationFiles(out_dir, metrics, predictions, confusion, mistakes, calibration)
