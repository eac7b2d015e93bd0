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

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import check_output_dir, create_run_dir, read_csv, read_json, write_csv, write_json
from flowerfast.runs.records import (
    EpochRecord,
    RunSummary,
    SplitRow,
    ValidPrediction,
    parse_bool,
    relative_path,
)
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
