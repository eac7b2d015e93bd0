"""Scoring a trained classifier on a labelled folder: accuracy, per-class metrics, confusion, mistakes.

The folder is scanned like training data (one folder per class, unreadable files skipped and
reported), predicted with :mod:`flowerfast.infer.predict`, and scored from the predictions alone with
scikit-learn's metrics (a well-tested standard, not a hand-written count), so every figure can be
checked by hand from ``predictions.csv``. The plots come from :mod:`flowerfast.core.plots`, so the
confusion matrix looks exactly like the comparison report's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from sklearn.metrics import precision_recall_fscore_support

from flowerfast.core.calibration import Calibration, measure, reliability_bins, rescaled
from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_bytes, create_run_dir, write_csv, write_json
from flowerfast.core.plots import confusion_png, mistakes_png, reliability_png, risk_coverage_png
from flowerfast.core.selective import (
    Coverage,
    check_probability,
    coverage_at,
    gated,
    is_answered,
    lowest_confidence_for,
    risk_coverage,
)
from flowerfast.core.stats import confusion_counts
from flowerfast.data.folders import SkippedFile
from flowerfast.infer.answers import check_min_confidence
from flowerfast.infer.photosets import images_to_score, run_of, warn_of_training_overlap
from flowerfast.infer.predict import LoadedModel, as_loaded_model
from flowerfast.runs.config import DEFAULT_TARGET_ACCURACY, INFERENCE_BATCH_SIZE
from flowerfast.runs.folder import relative_path


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
    unfamiliar: list[bool] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = "folder"
    trained_on: int = 0
    calibration: Optional[Calibration] = None
    reliability: dict = field(default_factory=dict)  # name -> reliability bins, for calibration.png
    tta: bool = False
    familiar_threshold: Optional[float] = None
    selective: Optional["Selective"] = None
    mistake_pictures: list = field(default_factory=list)  # Grad-CAM overlays of the mistakes, with cam=True

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
            "tta": self.tta,
            "unfamiliar": sum(self.unfamiliar),
            "familiar_threshold": self.familiar_threshold,
            **(self.selective.to_dict() if self.selective else {}),
        }

    @property
    def correct(self) -> list[bool]:
        return [t == p for t, p in zip(self.labels, self.predicted)]


@dataclass
class Selective:
    """Answering only above a minimum confidence, on these photos: ``answered`` at the one asked
    for (``min_confidence``, if any), and ``suggested``: the lowest that reaches ``target_accuracy``
    (``None`` when none does). ``source`` says which photos: the suggestion is meant to be chosen
    on a run's validation split."""

    target_accuracy: float
    suggested: Optional[Coverage]
    min_confidence: Optional[float] = None
    answered: Optional[Coverage] = None

    def to_dict(self) -> dict:
        return {
            "min_confidence": self.min_confidence,
            "answered": self.answered.to_dict() if self.answered else None,
            "target_accuracy": self.target_accuracy,
            "suggested_min_confidence": self.suggested.to_dict() if self.suggested else None,
        }


def selective_of(result: EvaluationResult, min_confidence: Optional[float], target_accuracy: float) -> Selective:
    """What answering only when sure gives on the scored photos (:mod:`flowerfast.core.selective`),
    unfamiliar photos never answered, as predict decides."""
    correct = result.correct
    confidence = gated(result.confidence, result.unfamiliar or [False] * len(correct))
    answered = coverage_at(confidence, correct, min_confidence) if min_confidence is not None else None
    suggested = lowest_confidence_for(confidence, correct, target_accuracy)
    return Selective(target_accuracy, suggested, min_confidence, answered)


def score_classes(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of each class (scikit-learn's; 0 where undefined)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(classes), zero_division=0
    )
    return [
        ClassMetrics(name, float(p), float(r), float(f), int(n))
        for name, p, r, f, n in zip(classes, precision, recall, f1, support)
    ]


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
    min_confidence: Optional[float] = None,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    tta: bool = False,
    cam: bool = False,
    labels: Optional[Path | str] = None,
):
    """Predict every image of a labelled folder and score the predictions: an
    :class:`EvaluationResult`, or for a multi-label model a
    :class:`~flowerfast.infer.multilabel_eval.MultiLabelEvaluation` (F1 and mAP at its thresholds).

    Without ``data_dir``, a run's model is scored on the run's own validation split (the images
    it never trained on). Given a folder, images the run trained on (same path, or same content
    under another name) are counted in ``trained_on`` and warned about: they make the accuracy
    optimistic. Class folders the model does not know are an error (their images could never be
    right); classes the model knows but the folder lacks are fine (they simply have no support).
    ``labels`` names the folder's photos and their labels in a table
    (:func:`flowerfast.data.labelfiles.scan_data`) instead of class folders.

    ``min_confidence`` adds the coverage and accuracy of answering only at that confidence;
    ``target_accuracy`` names the lowest minimum confidence that reaches it on these photos;
    ``tta`` averages flipped and zoomed views (:mod:`flowerfast.infer.tta`); ``cam`` draws
    Grad-CAM heatmaps on the mistakes (:mod:`flowerfast.infer.cam`, the cam extra).
    """
    if mistakes < 0:
        raise FlowerfastError(f"$mistakes must be 0 or more, not {mistakes}", parameters=("mistakes",))
    check_min_confidence(min_confidence)
    check_probability(target_accuracy, "target_accuracy")
    if cam:
        from flowerfast.infer.cam import require_cam_extra

        require_cam_extra()
    run = run_of(model_or_path)
    model: LoadedModel = as_loaded_model(model_or_path, device=device, trust_pickle=trust_pickle, precision=precision)
    root, all_files, all_labels, scan_skipped, source = images_to_score(run, data_dir, labels, model.spec.multi_label)
    unknown = sorted(set(all_labels) - set(model.classes))
    if unknown and not model.spec.multi_label:
        raise FlowerfastError(
            f"{root} has class folder(s) the model does not know: {', '.join(unknown)} "
            f"(model classes: {', '.join(model.classes)})"
        )
    trained_on = warn_of_training_overlap(run, all_files) if data_dir is not None and run is not None else 0
    paths, probs, fam, errors = model.scores(all_files, bs=bs, workers=workers, reporter=reporter, tta=tta)
    skipped = list(scan_skipped) + [SkippedFile(paths[i], reason) for i, reason in sorted(errors.items())]
    keep = [i for i in range(len(paths)) if i not in errors]
    files = [paths[i] for i in keep]
    labels = [all_labels[i] for i in keep]
    if not files:
        raise FlowerfastError(f"no readable images in {root}")
    if model.spec.multi_label:
        from flowerfast.infer.multilabel_eval import score_multi_label_photos

        result = score_multi_label_photos(model.classes, model.thresholds, files, labels, probs.numpy(), root)
        result.data_dir, result.skipped, result.source, result.trained_on = root, skipped, source, trained_on
        return result
    result = scored(model.classes, files, labels, probs, mistakes)
    result.data_dir, result.skipped, result.source, result.trained_on = root, skipped, source, trained_on
    result.calibration, result.reliability = calibration_of(model, probs.numpy(), labels)
    if fam is not None and model.familiar_threshold is not None:
        result.familiar_threshold = model.familiar_threshold
        result.unfamiliar = [float(f) < model.familiar_threshold for f in fam]
    result.tta, result.selective = tta, selective_of(result, min_confidence, target_accuracy)
    if cam and result.mistakes:
        result.mistake_pictures = cam_pictures(model, result.mistakes)
    return result


def cam_pictures(model: LoadedModel, mistakes: Sequence[Mistake]) -> list:
    """Grad-CAM overlays of the mistakes, each for the class the model wrongly chose: where it
    looked to say so."""
    import torch

    from flowerfast.infer.cam import heatmaps, overlay

    images = torch.stack([model.preprocessing.load(m.path) for m in mistakes])
    targets = [model.classes.index(m.predicted) for m in mistakes]
    return [overlay(image, heat) for image, heat in zip(images, heatmaps(model, images, targets))]


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
    risk_coverage: Optional[Path] = None


def save_report(result: EvaluationResult, out_dir: Path) -> EvaluationFiles:
    """Write ``metrics.json``, ``predictions.csv``, ``confusion.png``, ``mistakes.png`` (with
    Grad-CAM heatmaps when evaluated with ``cam``), ``calibration.png`` (the reliability diagram)
    and ``risk_coverage.png`` into a new folder."""
    out_dir = create_run_dir(out_dir)
    metrics = write_json(out_dir / "metrics.json", result.to_dict())
    threshold = result.selective.min_confidence if result.selective else None
    unfamiliar = result.unfamiliar or [False] * len(result.files)
    predictions = write_csv(
        out_dir / "predictions.csv",
        ["file", "label", "predicted", "confidence", "unfamiliar", "unknown"],
        [
            [
                relative_path(f, result.data_dir),
                t,
                p,
                round(c, 6),
                str(u).lower(),
                str(not is_answered(c, threshold, u)).lower(),
            ]
            for f, t, p, c, u in zip(result.files, result.labels, result.predicted, result.confidence, unfamiliar)
        ],
    )
    confusion = atomic_write_bytes(
        out_dir / "confusion.png", confusion_png(confusion_title(result), result.classes, result.confusion)
    )
    mistakes = None
    if result.mistakes:
        png = mistakes_png(result.mistakes, pictures=result.mistake_pictures or None)
        mistakes = atomic_write_bytes(out_dir / "mistakes.png", png)
    calibration = None
    if result.reliability:
        png = reliability_png(f"{result.n_images} images ({result.source})", result.reliability)
        calibration = atomic_write_bytes(out_dir / "calibration.png", png)
    risk = (
        atomic_write_bytes(out_dir / "risk_coverage.png", risk_coverage_picture(result)) if result.selective else None
    )
    return EvaluationFiles(out_dir, metrics, predictions, confusion, mistakes, calibration, risk)


def risk_coverage_picture(result: EvaluationResult) -> bytes:
    """``risk_coverage.png``: the curve of the scored photos, the target, and the suggested and
    given minimum confidences as points."""
    _, coverage, risk = risk_coverage(
        gated(result.confidence, result.unfamiliar or [False] * result.n_images), result.correct
    )
    chosen = []
    for name, point in (("suggested", result.selective.suggested), ("given", result.selective.answered)):
        if point is not None and point.accuracy is not None:
            chosen.append((f"{name}: min confidence {point.min_confidence:.2f}", point.coverage, 1 - point.accuracy))
    title = f"{result.n_images} images ({result.source})"
    return risk_coverage_png(title, coverage, risk, 1 - result.selective.target_accuracy, chosen)
