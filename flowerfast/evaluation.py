"""Scoring a trained classifier on a labelled folder: accuracy, per-class metrics, confusion, mistakes.

The folder is scanned like training data (one folder per class, unreadable files skipped and
reported), predicted with :mod:`flowerfast.inference`, and scored from the predictions alone with
scikit-learn's metrics (a well-tested standard, not a hand-written count), so every figure can be
checked by hand from ``predictions.csv``. The plots come from :mod:`flowerfast.plots`, so the
confusion matrix looks exactly like the comparison report's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from .data import SkippedFile, scan_image_folder
from .errors import FlowerfastError
from .inference import LoadedModel, as_loaded_model
from .plots import confusion_png, mistakes_png
from .runfolder import relative_path
from .runs import atomic_write_bytes, create_run_dir, write_csv, write_json


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

    @property
    def macro_f1(self) -> float:
        present = [m for m in self.per_class if m.support > 0]
        return sum(m.f1 for m in present) / len(present) if present else 0.0

    def to_dict(self) -> dict:
        return {
            "data_dir": str(self.data_dir), "classes": self.classes, "n_images": self.n_images,
            "accuracy": self.accuracy, "macro_f1": self.macro_f1,
            "per_class": [asdict(m) for m in self.per_class], "confusion": self.confusion,
            "mistakes": [{**asdict(m), "path": str(m.path)} for m in self.mistakes],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
        }


def count_confusion(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[list[int]]:
    """``[i][j]``: images of ``classes[i]`` predicted as ``classes[j]`` (scikit-learn's count, as plain ints)."""
    return [[int(v) for v in row] for row in confusion_matrix(labels, predicted, labels=list(classes))]


def score_classes(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of each class (scikit-learn's; 0 where undefined)."""
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=list(classes),
                                                                     zero_division=0)
    return [ClassMetrics(name, float(p), float(r), float(f), int(n))
            for name, p, r, f, n in zip(classes, precision, recall, f1, support)]


def evaluate(model_or_path, data_dir: Path | str, mistakes: int = 9, bs: int = 64,
             device: Optional[str] = None, workers: Optional[int] = None,
             trust_pickle: bool = False, precision: str = "fp32") -> EvaluationResult:
    """Predict every image of a labelled folder and score the predictions.

    Class folders the model does not know are an error (their images could never be right);
    classes the model knows but the folder lacks are fine (they simply have no support).
    """
    if mistakes < 0:
        raise FlowerfastError(f"--mistakes must be 0 or more, not {mistakes}")
    folder = scan_image_folder(data_dir)
    model: LoadedModel = as_loaded_model(model_or_path, device=device, trust_pickle=trust_pickle, precision=precision)
    unknown = [c for c in folder.classes if c not in model.classes]
    if unknown:
        raise FlowerfastError(f"{folder.root} has class folder(s) the model does not know: {', '.join(unknown)} "
                              f"(model classes: {', '.join(model.classes)})")
    paths, probs, errors = model.probabilities(folder.files, bs=bs, workers=workers)
    skipped = list(folder.skipped) + [SkippedFile(paths[i], reason) for i, reason in sorted(errors.items())]
    keep = [i for i in range(len(paths)) if i not in errors]
    files = [paths[i] for i in keep]
    labels = [folder.labels[i] for i in keep]
    if not files:
        raise FlowerfastError(f"no readable images in {folder.root}")
    conf, idx = probs.max(dim=1)
    predicted = [model.classes[int(j)] for j in idx]
    confidence = [float(c) for c in conf]
    confusion = count_confusion(labels, predicted, model.classes)
    correct = sum(t == p for t, p in zip(labels, predicted))
    wrong = sorted((i for i in range(len(files)) if labels[i] != predicted[i]), key=lambda i: -confidence[i])
    return EvaluationResult(
        data_dir=folder.root, classes=model.classes, n_images=len(files), accuracy=correct / len(files),
        per_class=score_classes(labels, predicted, model.classes), confusion=confusion,
        mistakes=[Mistake(files[i], labels[i], predicted[i], confidence[i]) for i in wrong[:mistakes]],
        files=files, labels=labels, predicted=predicted, confidence=confidence, skipped=skipped)


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


def save_report(result: EvaluationResult, out_dir: Path) -> EvaluationFiles:
    """Write ``metrics.json``, ``predictions.csv``, ``confusion.png`` and ``mistakes.png`` into a new folder."""
    out_dir = create_run_dir(out_dir)
    metrics = write_json(out_dir / "metrics.json", result.to_dict())
    predictions = write_csv(out_dir / "predictions.csv", ["file", "label", "predicted", "confidence"],
                            [[relative_path(f, result.data_dir), t, p, round(c, 6)] for f, t, p, c in
                             zip(result.files, result.labels, result.predicted, result.confidence)])
    confusion = atomic_write_bytes(out_dir / "confusion.png",
                                   confusion_png(confusion_title(result), result.classes, result.confusion))
    mistakes = (atomic_write_bytes(out_dir / "mistakes.png", mistakes_png(result.mistakes))
                if result.mistakes else None)
    return EvaluationFiles(out_dir, metrics, predictions, confusion, mistakes)
