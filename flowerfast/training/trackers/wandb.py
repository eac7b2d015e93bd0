"""Weights & Biases: a W&B run, its files under the run folder; the ``wandb`` extra.

This module is ``flowerfast.training.trackers.wandb``; its imports are absolute, so ``wandb``
below is the real W&B.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from flowerfast.runs.folder import EpochRecord
from flowerfast.training.trackers._base import Tracker, epoch_metrics


class WandbTracker(Tracker):
    """A W&B run (project ``$WANDB_PROJECT``, default ``flowerfast``; ``WANDB_MODE=offline``
    works with no network), its files under the run folder: the configuration, metrics per epoch,
    the pictures as images and the best model as a ``model`` artifact."""

    requires = ("wandb",)
    extra = "wandb"

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "flowerfast"),
            name=Path(run_dir).name,
            config=config,
            dir=str(run_dir),
            reinit="create_new",
        )

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


TRACKER = WandbTracker
