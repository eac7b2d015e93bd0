"""Scoring a multi-label model on labelled photos: per-class F1, precision, recall and average
precision at the model's own thresholds, macro F1 and mAP, the share of photos with every label
right, and the same F1 at 0.5 beside it (the thresholds were tuned on the run's validation split,
so on that split the tuned figure is optimistic; on new photos both are honest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import create_run_dir, write_csv, write_json
from flowerfast.core.multilabel import MultiLabelScores, answers_at, score_multi_label
from flowerfast.data.folders import SkippedFile
from flowerfast.runs.records import LABEL_SEPARATOR, label_set, relative_path


@dataclass
class MultiLabelEvaluation:
    """What ``evaluate`` finds for a multi-label model (see the module)."""

    classes: list[str]
    files: list[Path]
    labels: list[str]
    probs: np.ndarray
    scores: MultiLabelScores
    macro_f1_at_half: float
    data_dir: Optional[Path] = None
    source: str = "folder"
    skipped: list[SkippedFile] = field(default_factory=list)
    trained_on: int = 0

    multi_label = True

    @property
    def predicted(self) -> list[str]:
        answers = answers_at(self.probs, self.scores.thresholds)
        return [LABEL_SEPARATOR.join(c for c, on in zip(self.classes, row) if on) for row in answers]

    def to_dict(self) -> dict:
        return {
            "multi_label": True,
            "data": str(self.data_dir) if self.data_dir is not None else None,
            "source": self.source,
            "images": len(self.files),
            "skipped": [{"file": str(s.path), "reason": s.reason} for s in self.skipped],
            "trained_on": self.trained_on,
            **self.scores.to_dict(),
            "macro_f1_at_0.5": self.macro_f1_at_half,
        }


def multi_hot(labels: Sequence[str], classes: Sequence[str], root) -> np.ndarray:
    """Each photo's classes as 0/1 per model class; a class the model does not know is an error."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for label in labels for c in label_set(label)} - set(index))
    if unknown:
        raise FlowerfastError(
            f"{root} labels photos with class(es) the model does not know: {', '.join(unknown)} "
            f"(model classes: {', '.join(classes)})"
        )
    out = np.zeros((len(labels), len(classes)), dtype=bool)
    for row, label in enumerate(labels):
        for c in label_set(label):
            out[row, index[c]] = True
    return out


def score_multi_label_photos(
    classes: Sequence[str], thresholds: Sequence[float], files: list[Path], labels: list[str], probs, root
) -> MultiLabelEvaluation:
    probs = np.asarray(probs, dtype=np.float64)
    targets = multi_hot(labels, classes, root)
    return MultiLabelEvaluation(
        classes=list(classes),
        files=files,
        labels=labels,
        probs=probs,
        scores=score_multi_label(probs, targets, classes, thresholds),
        macro_f1_at_half=score_multi_label(probs, targets, classes).macro_f1,
    )


def save_multi_label_report(result: MultiLabelEvaluation, out_dir: Path) -> Path:
    """``metrics.json`` and ``predictions.csv`` (file, labels, predicted labels, every class's probability)."""
    out_dir = create_run_dir(out_dir)
    write_json(out_dir / "metrics.json", result.to_dict())
    root = result.data_dir or Path("/")
    write_csv(
        out_dir / "predictions.csv",
        ["file", "label", "predicted", *[f"p_{c}" for c in result.classes]],
        (
            [relative_path(f, root), label, predicted, *(f"{p:.6g}" for p in row)]
            for f, label, predicted, row in zip(result.files, result.labels, result.predicted, result.probs.tolist())
        ),
    )
    return out_dir
