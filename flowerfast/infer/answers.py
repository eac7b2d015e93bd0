"""A model's answers from its probabilities: :class:`Prediction`, the one rule for an unknown
answer, and a multi-label model's every class at or above its threshold. ``predict``, ``evaluate``
and the web server all turn probabilities into answers here, so they answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.selective import check_probability, is_answered
from flowerfast.runs.records import LABEL_SEPARATOR


@dataclass
class Prediction:
    """The model's answer for one file: ``predicted`` is the class it chose (flowerfast says
    ``label`` only for a true class), ``top_k`` the most likely classes with their probabilities.
    ``familiarity`` is how much the photo looks like the training photos
    (:mod:`flowerfast.models.familiarity`; ``None`` for a model without it), ``unfamiliar`` when
    below the model's threshold: likely not one of its classes at all. ``unknown`` when a minimum
    confidence was asked for and the top probability is below it or the photo is unfamiliar:
    then ``predicted`` is ``None`` and ``probability`` and ``top_k`` still say what the best guess
    was. ``error`` is set (and the rest empty) for unreadable files.

    A multi-label model answers every class whose probability reaches its threshold (and the
    minimum confidence, when one is asked for): ``labels`` with their probabilities, most likely
    first, and ``predicted`` those classes joined by ``;``; with none, the answer is unknown.
    ``labels`` is ``None`` for a single-label model."""

    path: Path
    predicted: Optional[str] = None
    probability: Optional[float] = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: Optional[str] = None
    unknown: bool = False
    familiarity: Optional[float] = None
    unfamiliar: bool = False
    labels: Optional[list[tuple[str, float]]] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        out = {
            "path": str(self.path),
            "predicted": self.predicted,
            "unknown": self.unknown,
            "unfamiliar": self.unfamiliar,
            "familiarity": self.familiarity,
            "probability": self.probability,
            "top_k": [{"class": name, "probability": p} for name, p in self.top_k],
            "error": self.error,
        }
        if self.labels is not None:
            out["labels"] = [{"class": name, "probability": p} for name, p in self.labels]
        return out


def check_top_k(top_k: int, n_classes: int) -> int:
    if top_k < 1 or top_k > n_classes:
        raise FlowerfastError(
            f"$top_k must be between 1 and {n_classes} (the model's classes), not {top_k}", parameters=("top_k",)
        )
    return top_k


def check_min_confidence(min_confidence: Optional[float]) -> Optional[float]:
    return None if min_confidence is None else check_probability(min_confidence, "min_confidence")


def predictions_from(
    paths: Sequence[Path],
    probs: torch.Tensor,
    errors: dict[int, str],
    classes: Sequence[str],
    top_k: int,
    min_confidence: Optional[float] = None,
    familiarity: Optional[torch.Tensor] = None,
    familiar_threshold: Optional[float] = None,
    thresholds: Optional[Sequence[float]] = None,
) -> list[Prediction]:
    """:class:`Prediction` of each path from the rows of ``probs`` (and ``familiarity``), one
    per readable path in order; the paths in ``errors`` carry their reason. ``thresholds`` (one
    per class) make the answers multi-label."""
    values, indices = probs.topk(min(top_k, len(classes)), dim=1) if len(probs) else (probs, probs.long())
    out, row = [], 0
    for i, path in enumerate(paths):
        if i in errors:
            out.append(Prediction(path=path, error=errors[i]))
            continue
        top = [(classes[int(j)], float(v)) for v, j in zip(values[row], indices[row])]
        if thresholds is not None:
            out.append(multi_label_prediction(path, probs[row], classes, thresholds, min_confidence, top))
            row += 1
            continue
        fam = float(familiarity[row]) if familiarity is not None else None
        unfamiliar = fam is not None and familiar_threshold is not None and fam < familiar_threshold
        answered = is_answered(top[0][1], min_confidence, unfamiliar)
        out.append(
            Prediction(
                path=path,
                predicted=top[0][0] if answered else None,
                probability=top[0][1],
                top_k=top,
                unknown=not answered,
                familiarity=fam,
                unfamiliar=unfamiliar,
            )
        )
        row += 1
    return out


def multi_label_prediction(
    path: Path, probs: torch.Tensor, classes: Sequence[str], thresholds: Sequence[float], min_confidence, top
) -> Prediction:
    """Every class at or above its threshold (and ``min_confidence``), most likely first."""
    floor = min_confidence if min_confidence is not None else 0.0
    labels = sorted(
        ((c, float(p)) for c, p, t in zip(classes, probs.tolist(), thresholds) if p >= max(t, floor)),
        key=lambda item: -item[1],
    )
    return Prediction(
        path=path,
        predicted=LABEL_SEPARATOR.join(c for c, _ in labels) or None,
        probability=top[0][1],
        top_k=top,
        unknown=not labels,
        labels=labels,
    )
