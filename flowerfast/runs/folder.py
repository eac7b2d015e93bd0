"""The run folder: every file a training run writes, its name, and typed reading and writing.

Training, lr-find, reporting, predict and evaluate all reach a run's files through
:class:`RunFolder`, so each file's name and format is decided here once, and a value read back is
parsed the same way everywhere (``is_valid`` in ``split.csv``, the columns of ``history.csv``).
Writes go through :mod:`flowerfast.core.files`, so each file appears whole or not at all.

    config.json            the resolved configuration (:class:`flowerfast.runs.resolved.ResolvedConfig`)
    split.csv              file,label,is_valid: the exact split (:class:`SplitRow`)
    history.csv            one row per epoch, rewritten as each epoch ends (:class:`EpochRecord`)
    best.safetensors/.json the model with the best validation accuracy (:mod:`flowerfast.models.classifier`)
    final.safetensors/.json the model after the last epoch
    valid_predictions.csv  the best model on each validation image (:class:`ValidPrediction`)
    summary.json           the run's figures (:class:`RunSummary`)
    latency.json           inference speed, measured once for a report (:mod:`flowerfast.infer.latency`)
    lr_find.png/.csv/.json the learning-rate finder's plot, curve and suggestions
    checkpoint.pt          the resumable state while the run goes on (:mod:`flowerfast.training.checkpoint`)
    checkpoints/epoch-NNN.safetensors/.json  the model every save_every epochs
    curves.png, confusion.png, mistakes.png, batch.png  the run's pictures (:mod:`flowerfast.training.pictures`)
    calibration.png        the best model's reliability before and after its temperature
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import check_output_dir, create_run_dir, read_csv, read_json, write_csv, write_json
from flowerfast.runs.resolved import ResolvedConfig

CONFIG = "config.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
SUMMARY = "summary.json"
VALID_PREDICTIONS = "valid_predictions.csv"
BEST = "best"
FINAL = "final"
LATENCY = "latency.json"
LR_FIND_PLOT = "lr_find.png"
LR_FIND_CSV = "lr_find.csv"
LR_FIND_JSON = "lr_find.json"
SNAPSHOTS = "checkpoints"
CHECKPOINT = "checkpoint.pt"
CURVES = "curves.png"
CONFUSION = "confusion.png"
MISTAKES = "mistakes.png"
BATCH = "batch.png"
CALIBRATION = "calibration.png"
MODEL_SUFFIXES = (".safetensors", ".json")

FINISHED_FILES = (SPLIT, HISTORY, SUMMARY, VALID_PREDICTIONS, BEST + ".safetensors", BEST + ".json")


def parse_bool(text: str) -> bool:
    """``is_valid`` as written by any flowerfast version (``1``/``0``) or by hand (``True``/``false``)."""
    value = str(text).strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(f"is_valid must be 1 or 0, not {text!r}")


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
    ``lr`` is the head's learning rate at the end of the epoch.
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
    )

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
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}


@dataclass
class RunSummary:
    """``summary.json``: the figures of a finished run.

    ``seconds`` is the training time, from the first epoch to the last (data scanning, building the
    model and lr-find are not in it); ``best_valid_accuracy_rescored`` is the saved best model's
    accuracy on the validation images, recomputed after training from ``best.safetensors``.
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


class RunFolder:
    """A run's folder on disk. Construct it on an existing folder, or :meth:`create` a new one."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def check_new(cls, path: Path | str) -> Path:
        """Fail before any work if ``path`` cannot become a fresh run folder (see :func:`check_output_dir`)."""
        return check_output_dir(Path(path))

    @classmethod
    def create(cls, path: Path | str, unique: bool = False) -> "RunFolder":
        """Create a new, empty run folder; an existing non-empty folder is refused, never reused.
        ``unique``: a default name moves on to the next free one if another run just took it."""
        return cls(create_run_dir(Path(path), unique=unique))

    @classmethod
    def open(cls, path: Path | str) -> "RunFolder":
        """An existing run folder (absolute path); a clear error when it is not there."""
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise FlowerfastError(f"run folder not found: {path}")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def best_model(self) -> Path:
        """The best model's weights file (``best.safetensors``; its ``.json`` sits beside it)."""
        return self.path / f"{BEST}.safetensors"

    @property
    def final_model(self) -> Path:
        return self.path / f"{FINAL}.safetensors"

    def model_stem(self, name: str) -> Path:
        """Where :func:`flowerfast.models.classifier.save_model` writes ``name`` (``best`` or ``final``)."""
        return self.path / name

    def snapshot_stem(self, epoch: int) -> Path:
        """Where the model of ``epoch`` is kept with ``--save-every`` (``checkpoints/epoch-NNN``)."""
        return self.path / SNAPSHOTS / f"epoch-{epoch:03d}"

    def snapshots(self) -> list[Path]:
        """The kept epoch models' weights files, oldest first."""
        return sorted((self.path / SNAPSHOTS).glob("epoch-*.safetensors"))

    def check_finished(self) -> None:
        """Raise, naming the first missing file, unless every file a report needs is there."""
        for name in FINISHED_FILES:
            if not (self.path / name).is_file():
                raise FlowerfastError(f"{self.path} is not a finished run folder: {name} is missing")

    # --- config.json --------------------------------------------------------------------------

    def write_config(self, config) -> Path:
        """``config`` is a :class:`flowerfast.runs.resolved.ResolvedConfig` (or its dict)."""
        return write_json(self.path / CONFIG, config if isinstance(config, dict) else config.to_dict())

    def read_config(self) -> Optional[ResolvedConfig]:
        """The resolved configuration as written (:meth:`ResolvedConfig.from_dict`); ``None`` for
        a folder without one."""
        path = self.path / CONFIG
        return ResolvedConfig.from_dict(read_json(path)) if path.is_file() else None

    # --- split.csv ----------------------------------------------------------------------------

    def write_split(self, rows: Sequence[SplitRow], root: Path) -> Path:
        return write_split_csv(rows, self.path / SPLIT, root)

    def read_split(self, root: Optional[Path] = None) -> list[SplitRow]:
        return read_split_csv(self.path / SPLIT, root)

    # --- history.csv --------------------------------------------------------------------------

    def write_history(self, records: Iterable[EpochRecord]) -> Path:
        """The whole history so far; called after every epoch so the file is always current."""
        return write_csv(self.path / HISTORY, EpochRecord.FIELDS, (r.as_row() for r in records))

    def read_history(self) -> list[EpochRecord]:
        return [EpochRecord.from_row(r) for r in read_csv(self.path / HISTORY)]

    # --- summary.json -------------------------------------------------------------------------

    def write_summary(self, summary: RunSummary) -> Path:
        return write_json(self.path / SUMMARY, summary.to_dict())

    def read_summary(self) -> RunSummary:
        return RunSummary.from_dict(read_json(self.path / SUMMARY))

    # --- valid_predictions.csv ----------------------------------------------------------------

    def write_valid_predictions(self, predictions: Sequence[ValidPrediction], classes: Sequence[str]) -> Path:
        """One row per validation image: ``file,label,predicted,confidence`` and ``p_<class>`` for each
        class, probabilities to 6 decimals."""
        rows = [
            [p.file, p.label, p.predicted, round(p.confidence, 6), *[round(p.probabilities[c], 6) for c in classes]]
            for p in predictions
        ]
        return write_csv(
            self.path / VALID_PREDICTIONS,
            ["file", "label", "predicted", "confidence", *[f"p_{c}" for c in classes]],
            rows,
        )

    def read_valid_predictions(self) -> list[ValidPrediction]:
        out = []
        for r in read_csv(self.path / VALID_PREDICTIONS):
            probs = {
                k[2:]: float(v)
                for k, v in r.items()
                if isinstance(k, str) and k.startswith("p_") and v not in ("", None)
            }
            out.append(
                ValidPrediction(
                    file=r["file"],
                    label=r["label"],
                    predicted=r["predicted"],
                    confidence=float(r["confidence"]),
                    probabilities=probs,
                )
            )
        return out

    # --- latency.json -------------------------------------------------------------------------

    def read_latency(self) -> Optional[dict[str, Any]]:
        path = self.path / LATENCY
        try:
            return read_json(path) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def write_latency(self, figures: dict[str, Any]) -> Optional[Path]:
        """Best effort: a read-only run folder still gives a report, just without the cache."""
        try:
            return write_json(self.path / LATENCY, figures)
        except OSError:
            return None

    # --- lr_find.* ----------------------------------------------------------------------------

    def write_lr_find(
        self, lrs: Sequence[float], losses: Sequence[float], suggestions: dict[str, float]
    ) -> tuple[Path, Path]:
        """The curve (``lr_find.csv``) and the suggestions (``lr_find.json``); the plot is drawn by
        :mod:`flowerfast.core.plots` into :attr:`lr_find_plot`."""
        csv_path = write_csv(self.path / LR_FIND_CSV, ["lr", "loss"], zip(lrs, losses))
        json_path = write_json(self.path / LR_FIND_JSON, {"suggestions": suggestions})
        return csv_path, json_path

    @property
    def lr_find_plot(self) -> Path:
        return self.path / LR_FIND_PLOT


def write_split_csv(rows: Sequence[SplitRow], path: Path, root: Path) -> Path:
    """Write ``file,label,is_valid`` with files relative to the data root (portable across machines)."""
    return write_csv(
        path, ["file", "label", "is_valid"], ([relative_path(r.file, root), r.label, int(r.is_valid)] for r in rows)
    )


def read_split_csv(path: Path, root: Optional[Path] = None) -> list[SplitRow]:
    """Read a ``split.csv`` back; relative files are resolved against ``root`` when given."""
    rows = []
    try:
        for line, rec in enumerate(read_csv(path), start=2):
            f = Path(rec["file"])
            if root is not None and not f.is_absolute():
                f = Path(root) / f
            try:
                rows.append(SplitRow(f, rec["label"], parse_bool(rec["is_valid"])))
            except ValueError as exc:
                raise FlowerfastError(f"{path}, line {line}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise FlowerfastError(f"{path} is not a split file (file,label,is_valid): missing {exc}") from None
    except OSError as exc:
        raise FlowerfastError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    return rows
