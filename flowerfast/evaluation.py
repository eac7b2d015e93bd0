"""Scoring a trained classifier on a labelled folder: accuracy, per-class metrics, confusion, mistakes.

The folder is scanned like training data (one folder per class, unreadable files skipped and
reported), predicted with :mod:`flowerfast.inference`, and the metrics computed here from the
predictions alone, so they can be checked by hand from ``predictions.csv``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .data import SkippedFile, scan_image_folder
from .runfolder import relative_path
from .errors import FlowerfastError
from .inference import LoadedModel, as_loaded_model


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


def confusion_matrix(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for t, p in zip(labels, predicted):
        matrix[index[t]][index[p]] += 1
    return matrix


def class_metrics(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[ClassMetrics]:
    out = []
    for i, name in enumerate(classes):
        tp = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(ClassMetrics(name, precision, recall, f1, support))
    return out


def evaluate(model_or_path, data_dir: Path | str, mistakes: int = 9, bs: int = 64,
             device: Optional[str] = None, workers: Optional[int] = None,
             trust_pickle: bool = False) -> EvaluationResult:
    """Predict every image of a labelled folder and score the predictions.

    Class folders the model does not know are an error (their images could never be right);
    classes the model knows but the folder lacks are fine (they simply have no support).
    """
    if mistakes < 0:
        raise FlowerfastError(f"--mistakes must be 0 or more, not {mistakes}")
    folder = scan_image_folder(data_dir)
    model: LoadedModel = as_loaded_model(model_or_path, device=device, trust_pickle=trust_pickle)
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
    confusion = confusion_matrix(labels, predicted, model.classes)
    correct = sum(t == p for t, p in zip(labels, predicted))
    wrong = sorted((i for i in range(len(files)) if labels[i] != predicted[i]), key=lambda i: -confidence[i])
    return EvaluationResult(
        data_dir=folder.root, classes=model.classes, n_images=len(files), accuracy=correct / len(files),
        per_class=class_metrics(confusion, model.classes), confusion=confusion,
        mistakes=[Mistake(files[i], labels[i], predicted[i], confidence[i]) for i in wrong[:mistakes]],
        files=files, labels=labels, predicted=predicted, confidence=confidence, skipped=skipped)


def plot_confusion(result: EvaluationResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import atomic_write_bytes

    n = len(result.classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.7 * n))
    ax.imshow(result.confusion, cmap="Blues")
    ax.set_xticks(range(n), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), result.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = max(max(row) for row in result.confusion) or 1
    for i, row in enumerate(result.confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_title(f"accuracy {result.accuracy:.1%} ({result.n_images} images)")
    fig.tight_layout()
    return _save_figure(fig, path, atomic_write_bytes)


def plot_mistakes(result: EvaluationResult, path: Path) -> Optional[Path]:
    """A grid of the most confident mistakes (``None`` when there are none)."""
    if not result.mistakes:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from .runs import atomic_write_bytes

    n = len(result.mistakes)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, result.mistakes):
        with Image.open(m.path) as im:
            im.thumbnail((256, 256))
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{m.true} -> {m.predicted}\n{m.probability:.1%}  {m.path.name}", fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path, atomic_write_bytes)


def _save_figure(fig, path: Path, write) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write(path, buf.getvalue())


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
    from .runs import create_run_dir, write_csv, write_json

    out_dir = create_run_dir(out_dir)
    metrics = write_json(out_dir / "metrics.json", result.to_dict())
    predictions = write_csv(out_dir / "predictions.csv", ["file", "label", "predicted", "confidence"],
                            [[relative_path(f, result.data_dir), t, p, round(c, 6)] for f, t, p, c in
                             zip(result.files, result.labels, result.predicted, result.confidence)])
    confusion = plot_confusion(result, out_dir / "confusion.png")
    mistakes = plot_mistakes(result, out_dir / "mistakes.png")
    return EvaluationFiles(out_dir, metrics, predictions, confusion, mistakes)
