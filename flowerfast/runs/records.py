"""The records of a run's tables and JSON files, one dataclass each: a split row, an epoch of
``history.csv``, ``summary.json``, a row of ``valid_predictions.csv``; and how labels and paths
are written in them. :class:`~flowerfast.runs.folder.RunFolder` reads and writes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


def parse_bool(text: str) -> bool:
    """``is_valid`` as written by any flowerfast version (``1``/``0``) or by hand (``True``/``false``)."""
    value = str(text).strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(f"is_valid must be 1 or 0, not {text!r}")


LABEL_SEPARATOR = ";"
"""Between the classes of a multi-label photo in ``split.csv`` and every table flowerfast writes."""


def label_set(label: str) -> list[str]:
    """A multi-label photo's classes from its label (``"rose;tulip"``); a single label is itself."""
    return [c for c in label.split(LABEL_SEPARATOR) if c]


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (portable across machines), else as given."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _float(text: Optional[str]) -> Optional[float]:
    return None if text in ("", None) else float(text)


def _round(value):
    return float(f"{value:.6g}") if isinstance(value, float) else ("" if value is None else value)


@dataclass(frozen=True)
class SplitRow:
    """One image of a run: its file, its class and which side of the split it is on."""

    file: Path
    label: str
    is_valid: bool


@dataclass
class EpochRecord:
    """One row of ``history.csv``: what one epoch did.

    ``train_accuracy_aug`` is measured on the augmented training batches as the model saw them
    (in training mode, dropout on), so it is not comparable with ``valid_accuracy`` one to one.
    ``train_accuracy_clean`` is measured after the epoch in eval mode on a fixed, un-augmented
    sample of the training images: the honest figure to set against ``valid_accuracy``.
    ``lr`` is the head's learning rate at the end of the epoch. A multi-label run's accuracies are
    per label at 0.5 (fastai's ``accuracy_multi``), and it adds the validation split's macro F1 at
    0.5 and mAP (:mod:`flowerfast.core.multilabel`); its best epoch is the one with the best mAP.
    ``ema_valid_score`` (``--ema``) is the same validation score (accuracy, or mAP) of the moving
    average of the weights; the best model is the better of the two. ``seconds`` is the epoch from
    its first training batch to its validation's end, ``train_seconds`` the training batches' part
    (a ``--time`` plan scales that part alone by the training size).
    """

    epoch: int
    phase: str
    train_loss: float
    train_accuracy_aug: float
    valid_loss: float
    valid_accuracy: float
    lr: float
    seconds: float
    train_accuracy_clean: Optional[float] = None
    valid_f1: Optional[float] = None
    valid_map: Optional[float] = None
    ema_valid_score: Optional[float] = None
    train_seconds: Optional[float] = None

    FIELDS = (
        "epoch",
        "phase",
        "train_loss",
        "train_accuracy_aug",
        "train_accuracy_clean",
        "valid_loss",
        "valid_accuracy",
        "lr",
        "seconds",
        "valid_f1",
        "valid_map",
        "ema_valid_score",
        "train_seconds",
    )

    @property
    def score(self) -> float:
        """What the best epoch is chosen by: validation mAP for a multi-label run, else accuracy."""
        return self.valid_map if self.valid_map is not None else self.valid_accuracy

    @property
    def ema_is_better(self) -> bool:
        """Whether the moving average of the weights (``--ema``) validated better than the weights."""
        return self.ema_valid_score is not None and self.ema_valid_score > self.score

    @property
    def best_score(self) -> float:
        """The better of :attr:`score` and the moving average's: what the best model is chosen by."""
        return self.ema_valid_score if self.ema_is_better else self.score

    def as_row(self) -> list:
        """Values for ``history.csv``, floats to 6 significant digits."""
        return [_round(getattr(self, f)) for f in self.FIELDS]

    @classmethod
    def from_row(cls, row: dict[str, str]) -> "EpochRecord":
        return cls(
            epoch=int(row["epoch"]),
            phase=row["phase"],
            train_loss=_float(row["train_loss"]),
            train_accuracy_aug=_float(row["train_accuracy_aug"]),
            valid_loss=_float(row["valid_loss"]),
            valid_accuracy=_float(row["valid_accuracy"]),
            lr=_float(row["lr"]),
            seconds=_float(row["seconds"]),
            train_accuracy_clean=_float(row.get("train_accuracy_clean")),
            valid_f1=_float(row.get("valid_f1")),
            valid_map=_float(row.get("valid_map")),
            ema_valid_score=_float(row.get("ema_valid_score")),
            train_seconds=_float(row.get("train_seconds")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}


@dataclass
class RunSummary:
    """``summary.json``: the figures of a finished run.

    ``seconds`` is the training time, from the first epoch to the last (data scanning, building the
    model and lr-find are not in it); ``best_valid_accuracy_rescored`` is the saved best model's
    accuracy on the validation images, recomputed after training from ``best.safetensors``. A
    multi-label run's accuracies are per label (its best epoch is chosen by mAP); its F1, mAP and
    tuned thresholds are in ``multi_label``.
    """

    arch: str
    classes: list[str]
    class_counts: dict[str, dict[str, int]]
    pretrained: bool
    weights_source: str
    epochs: int
    best_epoch: int
    best_valid_accuracy: float
    best_valid_accuracy_rescored: Optional[float]
    final_valid_accuracy: float
    final_train_loss: float
    lr: float
    lr_find: Optional[dict[str, float]]
    seconds: float
    seconds_per_epoch: float
    train_images_per_second: Optional[float]
    parameters: int
    device: str
    skipped_files: int
    best_model: str
    final_model: str
    stopped_early_at: Optional[int] = None
    planned_epochs: Optional[int] = None
    calibration: Optional[dict[str, float]] = None  # the best model's temperature, ECE and NLL before and after
    multi_label: Optional[dict[str, Any]] = None  # a multi-label run's best model: F1, mAP, thresholds per class
    best_model_is_average: Optional[bool] = None  # --ema: whether best.safetensors holds the moving average
    time_budget: Optional[float] = None  # --time: the seconds the epochs were planned to

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSummary":
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise KeyError(", ".join(missing))
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})


@dataclass
class ValidPrediction:
    """One row of ``valid_predictions.csv``: the best model's answer for one validation image."""

    file: str
    label: str
    predicted: str
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.label == self.predicted
