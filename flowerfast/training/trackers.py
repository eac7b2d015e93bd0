"""Experiment trackers people already run: TensorBoard, MLflow and Weights & Biases.

Each gets, for a training run: the resolved configuration as parameters, one point per epoch for
every figure of ``history.csv`` (step = epoch), and at the end the run's pictures and its best
model. Each is an optional extra (``pip install "flowerfast[mlflow]"``); asking for one that is
not installed is a one-line error before anything starts.

Why flowerfast logs its own epoch records rather than adding fastai's ``TensorBoardCallback`` or
``WandbCallback``: those log per batch with fastai's step counter, which starts again at every fit
(a run makes two, frozen then full) and at a resume, so one run's curves would overlap themselves;
the per-epoch records are the figures the run reports, identical in every tracker and in
``history.csv``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.runs.config import TRACKERS
from flowerfast.runs.folder import EpochRecord

MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
METRICS = ("train_loss", "train_accuracy_aug", "train_accuracy_clean", "valid_loss", "valid_accuracy", "lr",
           "seconds")


def check_trackers(names: Iterable[str]) -> list[str]:
    """The trackers asked for, each checked to be known and installed: a missing one is one line
    naming the extra that brings it."""
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in TRACKERS:
            raise FlowerfastError(f"--tracker must be one of {', '.join(TRACKERS)} (got {name!r})")
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise FlowerfastError(f"--tracker {name} needs the {name} extra: pip install "
                                  f"\"flowerfast[{name}]\"") from None
    return names


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """The resolved configuration as flat string parameters (``options.seed``, ``lr``, ...)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    walk("", config)
    return {k: v[:500] for k, v in out.items()}


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    return {name: float(getattr(record, name)) for name in METRICS if getattr(record, name) is not None}


class Tracker:
    """One tracker for one run: ``start`` with the configuration, ``log_epoch`` per epoch, then
    ``finish`` with the files to keep (pictures, best model), or ``fail``."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None: ...

    def log_epoch(self, record: EpochRecord) -> None: ...

    def finish(self, files: Sequence[Path]) -> None: ...

    def fail(self) -> None:
        self.finish([])


class TensorBoardTracker(Tracker):
    """Event files in ``<run>/tensorboard``: scalars per epoch, the configuration as text and the
    pictures as images (TensorBoard stores no other files; the model stays in the run folder)."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log_epoch(self, record: EpochRecord) -> None:
        for name, value in epoch_metrics(record).items():
            self.writer.add_scalar(name, value, record.epoch)
        self.writer.flush()

    def finish(self, files: Sequence[Path]) -> None:
        import numpy as np
        from PIL import Image

        for path in files:
            if path.suffix == ".png":
                with Image.open(path) as im:
                    self.writer.add_image(path.stem, np.asarray(im.convert("RGB")), dataformats="HWC")
        self.writer.close()


class MlflowTracker(Tracker):
    """An MLflow run (experiment ``$MLFLOW_EXPERIMENT_NAME``, default ``flowerfast``) on MLflow's
    tracking URI (``$MLFLOW_TRACKING_URI``, MLflow's default otherwise): parameters, metrics per
    epoch, and the pictures and best model as artifacts."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "flowerfast")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=Path(run_dir).name).info.run_id
        for key, value in flat_params(config).items():
            self.client.log_param(self.run_id, key, value)

    def log_epoch(self, record: EpochRecord) -> None:
        for name, value in epoch_metrics(record).items():
            self.client.log_metric(self.run_id, name, value, step=record.epoch)

    def finish(self, files: Sequence[Path]) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED" if files else "FAILED")


class WandbTracker(Tracker):
    """A W&B run (project ``$WANDB_PROJECT``, default ``flowerfast``; ``WANDB_MODE=offline``
    works with no network), its files under the run folder: the configuration, metrics per epoch,
    the pictures as images and the best model as a ``model`` artifact."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "flowerfast"), name=Path(run_dir).name,
                              config=config, dir=str(run_dir), reinit="create_new")

    def log_epoch(self, record: EpochRecord) -> None:
        self.run.log({**epoch_metrics(record), "epoch": record.epoch}, step=record.epoch)

    def finish(self, files: Sequence[Path]) -> None:
        import wandb

        pictures = {p.stem: wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        if pictures:
            self.run.log(pictures)
        models = [p for p in files if p.suffix in (".safetensors", ".json")]
        if models:
            artifact = wandb.Artifact(f"{self.run.name}-best".replace("/", "-"), type="model")
            for path in models:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if files else 1)


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def open_trackers(names: Sequence[str], run_dir: Path, config: dict[str, Any],
                  history: Sequence[EpochRecord] = ()) -> list[Tracker]:
    """Start each tracker named; a resumed run first logs the epochs it already has."""
    trackers = []
    for name in check_trackers(names):
        tracker = TRACKER_CLASSES[name]()
        try:
            tracker.start(Path(run_dir), config)
        except Exception as exc:  # the tracker's own configuration (URI, login, store) is wrong
            close_trackers(trackers, None)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FlowerfastError(f"--tracker {name} could not start: {reason}") from None
        for record in history:
            tracker.log_epoch(record)
        trackers.append(tracker)
    return trackers


def close_trackers(trackers: Sequence[Tracker], files: Optional[Sequence[Path]]) -> None:
    """Finish every tracker with ``files`` as artifacts; ``None``: the run failed."""
    for tracker in trackers:
        if files is None:
            tracker.fail()
        else:
            tracker.finish([Path(f) for f in files if Path(f).is_file()])
