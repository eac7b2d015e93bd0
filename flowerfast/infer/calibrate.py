"""``flowerfast calibrate RUN``: fit the temperature and the familiarity of a run's best model on
its own photos, afterwards, and save them into the model's files.

Training does both when it ends; this does the same for a run trained before flowerfast did, or
again after its photos changed. The model is scored as ``predict`` scores it
(:func:`~flowerfast.infer.predict.load_model`), the temperature fitted by
:func:`flowerfast.core.calibration.calibrate` on the validation split, the class prototypes and
familiarity threshold by :func:`flowerfast.models.familiarity.fit_familiarity` (training photos,
then validation photos), and the network's weights stay byte for byte
(:func:`~flowerfast.models.classifier.rewrite_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from flowerfast.core.calibration import Calibration, before_and_after_bins, calibrate, rescaled
from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_bytes
from flowerfast.core.plots import reliability_png
from flowerfast.infer.photosets import validation_split
from flowerfast.infer.predict import load_model
from flowerfast.models.classifier import rewrite_model
from flowerfast.models.familiarity import fit_familiarity, training_sample
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
    valid_files = [paths[i] for i in range(len(paths)) if i not in errors]
    prototypes, familiar = familiarity_of(model, run, valid_files)
    rewrite_model(
        run.best_model, prototypes=prototypes, temperature=calibration.temperature, familiarity=familiar.to_dict()
    )
    curves = before_and_after_bins(at_one, targets, calibration)
    atomic_write_bytes(run.file(CALIBRATION), reliability_png("best model, validation set", curves))
    if run.file(SUMMARY).is_file():
        summary = run.read_summary()
        summary.calibration = calibration.to_dict()
        run.write_summary(summary)
    return calibration


def familiarity_of(model, run: RunFolder, valid_files: list[Path]) -> tuple:
    """The class prototypes of the run's training photos (a fixed sample, as training takes it)
    and the familiarity threshold of its validation photos."""
    root = Path(run.read_config().data)
    train = [r for r in run.read_split(root) if not r.is_valid]
    train = [train[i] for i in training_sample([r.label for r in train])]
    train_feats, readable = features_of(model, [r.file for r in train])
    if not len(train_feats):
        raise FlowerfastError(f"no readable training photos for {run.path}: the data folder has moved or changed")
    targets = [model.classes.index(train[i].label) for i in readable]
    valid_feats, _ = features_of(model, valid_files)
    return fit_familiarity(train_feats, targets, valid_feats, model.spec.n_classes)


def features_of(model, files: list[Path], bs: int = 64):
    """Pooled unit features of the readable ``files``, with their indices."""
    import torch

    from flowerfast.infer.batches import ImageFileDataset, collate_images

    loader = torch.utils.data.DataLoader(
        ImageFileDataset(files, model.preprocessing.load), batch_size=bs, collate_fn=collate_images
    )
    feats, readable = [], []
    for indices, images, _ in loader:
        if images is not None:
            feats.append(model.features_of(images))
            readable += indices
    return (torch.cat(feats) if feats else torch.zeros(0, 1)), readable
