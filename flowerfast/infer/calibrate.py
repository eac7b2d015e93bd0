"""``flowerfast calibrate RUN``: fit the temperature of a run's best model on its own validation
split, afterwards, and save it into the model's files.

Training calibrates its best model when it ends; this does the same for a run trained before
flowerfast calibrated, or again after its photos changed. The model is scored as ``predict``
scores it (:func:`~flowerfast.infer.predict.load_model`), the temperature fitted by
:func:`flowerfast.core.calibration.calibrate`, and only the model's description is rewritten
(:func:`~flowerfast.models.classifier.set_temperature`): the weights stay byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from flowerfast.core.calibration import Calibration, before_and_after_bins, calibrate, rescaled
from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_bytes
from flowerfast.core.plots import reliability_png
from flowerfast.infer.evaluate import validation_split
from flowerfast.infer.predict import load_model
from flowerfast.models.classifier import set_temperature
from flowerfast.runs.folder import CALIBRATION, SUMMARY, RunFolder


def calibrate_run(run_dir: Path | str, device: Optional[str] = None, reporter=None) -> Calibration:
    """Fit and save the temperature of ``run_dir``'s best model on its validation split; write
    ``calibration.png`` and the figures into ``summary.json``. Returns the calibration (its
    ``before`` figures are those at temperature 1, whatever temperature the model had)."""
    run = RunFolder.open(run_dir)
    if run.read_config() is None:
        raise FlowerfastError(f"{run.path} is not a flowerfast run folder (no config.json)")
    model = load_model(run.best_model, device=device, precision="fp32")
    _, files, labels, _ = validation_split(run)
    paths, probs, errors = model.probabilities(files, reporter=reporter)
    targets = [model.classes.index(labels[i]) for i in range(len(paths)) if i not in errors]
    if not targets:
        raise FlowerfastError(f"no readable validation photos for {run.path}: the data folder has moved or changed")
    at_one = rescaled(probs.numpy(), 1 / model.spec.temperature)
    calibration = calibrate(at_one, targets)
    set_temperature(run.best_model, calibration.temperature)
    curves = before_and_after_bins(at_one, targets, calibration)
    atomic_write_bytes(run.file(CALIBRATION), reliability_png("best model, validation set", curves))
    if run.file(SUMMARY).is_file():
        summary = run.read_summary()
        summary.calibration = calibration.to_dict()
        run.write_summary(summary)
    return calibration
