"""MLflow: a run on MLflow's tracking URI; the ``mlflow`` extra.

This module is ``flowerfast.training.trackers.mlflow``; its imports are absolute, so ``mlflow``
below is the real MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from flowerfast.runs.folder import EpochRecord
from flowerfast.training.trackers._base import Tracker, epoch_metrics, flat_params


class MlflowTracker(Tracker):
    """An MLflow run (experiment ``$MLFLOW_EXPERIMENT_NAME``, default ``flowerfast``) on MLflow's
    tracking URI (``$MLFLOW_TRACKING_URI``, MLflow's default otherwise): parameters, metrics per
    epoch, and the pictures and best model as artifacts."""

    requires = ("mlflow",)
    extra = "mlflow"

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


TRACKER = MlflowTracker
