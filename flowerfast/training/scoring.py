"""Scoring on the run's own photos: the fixed sample of training images the clean train accuracy
is measured on, and the best model rescored on the validation set (``valid_predictions.csv``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowerfast.core.calibration import Calibration, calibrate, rescaled
from flowerfast.core.errors import FlowerfastError
from flowerfast.hardware import distributed
from flowerfast.models.classifier import save_model
from flowerfast.runs.folder import BEST, ValidPrediction, relative_path
from flowerfast.training.pictures import draw_calibration

if TYPE_CHECKING:
    from flowerfast.training.session import RunSetup


def clean_train_dl(setup: RunSetup, n: int, seed: int):
    """A DataLoader over a fixed random sample of up to ``n`` training images, with validation
    transforms (no augmentation); ``None`` when ``n`` is 0. In a job of several processes each
    takes its share of the sample (``None`` when that is empty); their counts are summed."""
    import random

    from flowerfast.hardware.distributed import shard_bounds

    if n <= 0:
        return None
    train_rows = [r for r in setup.data.rows if not r.is_valid]
    sample = random.Random(seed).sample(train_rows, min(n, len(train_rows)))
    procs = distributed.current()
    start, stop = shard_bounds(len(sample), procs.world_size, procs.rank, even=False)
    if start == stop:
        return None
    return setup.data.dls.test_dl([(str(r.file), r.label) for r in sample[start:stop]], with_labels=True)


def best_model_predictions(setup: RunSetup):
    """The saved best model's probabilities (temperature 1), targets and pooled features on the
    validation images, with their split rows: every image once, in every process of a job (rank 0
    reads the model and hands it on, each scores its share, the shares are gathered)."""
    from safetensors.torch import load_file

    from flowerfast.hardware.distributed import shard_bounds
    from flowerfast.training.learner import predict_batches

    learn, run, procs = setup.bundle.learn, setup.run, distributed.current()
    model = distributed.unwrapped(learn.model)
    if procs.is_main:
        model.load_state_dict(load_file(str(run.best_model), device=str(setup.bundle.device)))
    distributed.broadcast_module(model)
    valid_rows = [r for r in setup.data.rows if r.is_valid]
    if procs.distributed:
        start, stop = shard_bounds(len(valid_rows), procs.world_size, procs.rank, even=False)
        valid_rows = valid_rows[start:stop]
        dl = setup.data.dls.test_dl([(str(r.file), r.label) for r in valid_rows], with_labels=True)
    else:
        dl = setup.data.dls.valid
    probs, targets, feats = predict_batches(model, dl, setup.bundle.precision, features=True)
    if len(targets) != len(valid_rows):  # photos became unreadable during the run: score the others
        valid_rows = [r for r in valid_rows if setup.data.loader.readable(r.file)]
        dl = setup.data.dls.test_dl([(str(r.file), r.label) for r in valid_rows], with_labels=True)
        probs, targets, feats = predict_batches(model, dl, setup.bundle.precision, features=True)
        if not valid_rows or len(targets) != len(valid_rows):
            raise FlowerfastError(
                "the validation photos changed while the best model was being scored; "
                "score it later with flowerfast evaluate"
            )
    if procs.distributed:
        import torch

        parts = distributed.gather_objects((valid_rows, probs, targets, feats))
        valid_rows = [row for part in parts for row in part[0]]
        probs, targets, feats = (torch.cat([part[k] for part in parts]) for k in (1, 2, 3))
    return model, valid_rows, probs, targets, feats


def training_features(setup: RunSetup, model):
    """Pooled features and targets of a fixed sample of training photos (at most
    :data:`~flowerfast.models.familiarity.PHOTOS_PER_CLASS` a class, validation transforms), for
    the class prototypes; shared among the processes of a job like the validation photos."""
    import torch

    from flowerfast.hardware.distributed import shard_bounds
    from flowerfast.models.familiarity import training_sample
    from flowerfast.training.learner import predict_batches

    train_rows = [r for r in setup.data.rows if not r.is_valid]  # an unreadable photo drops out of its batch
    rows = [train_rows[i] for i in training_sample([r.label for r in train_rows])]
    procs = distributed.current()
    start, stop = shard_bounds(len(rows), procs.world_size, procs.rank, even=False)
    feats, targets = torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    if start < stop:
        dl = setup.data.dls.test_dl([(str(r.file), r.label) for r in rows[start:stop]], with_labels=True)
        _, targets, feats = predict_batches(model, dl, setup.bundle.precision, features=True)
    if procs.distributed:
        parts = [p for p in distributed.gather_objects((feats, targets)) if len(p[1])]
        feats, targets = torch.cat([f for f, _ in parts]), torch.cat([t for _, t in parts])
    return feats, targets


def score_best_model(setup: RunSetup) -> tuple[float, Calibration]:
    """Score the saved best model on the validation images, calibrate it there and write
    ``valid_predictions.csv`` (one row per image, each class's calibrated probability): what a
    comparison of two models on the same split is computed from. Returns the accuracy and the
    calibration.

    The temperature fitted here (:mod:`flowerfast.core.calibration`) is saved into the best
    model's files, so predict, evaluate, serve and export answer with it; ``calibration.png``
    shows the reliability before and after. It changes no answer, only the confidence: the
    accuracy is the same at any temperature. The familiarity prototypes and threshold
    (:mod:`flowerfast.models.familiarity`) are fitted and saved with it."""
    import dataclasses

    import torch

    from flowerfast.models.familiarity import fit_familiarity

    model, valid_rows, probs, targets, valid_feats = best_model_predictions(setup)
    train_feats, train_targets = training_features(setup, model)
    calibration = calibrate(probs.numpy(), targets.numpy())
    calibrated = torch.from_numpy(rescaled(probs.numpy(), calibration.temperature)).float()
    preds = calibrated.argmax(dim=-1)
    if distributed.current().is_main:
        prototypes, familiar = fit_familiarity(
            train_feats, train_targets.tolist(), valid_feats, len(setup.data.classes)
        )
        spec = dataclasses.replace(
            setup.bundle.spec, temperature=calibration.temperature, familiarity=familiar.to_dict()
        )
        save_model(model, spec, setup.run.model_stem(BEST), prototypes=prototypes)
        write_valid_predictions(setup, valid_rows, preds, calibrated)
        draw_calibration(setup.run, probs.numpy(), targets.numpy(), calibration)
    return int((preds == targets).sum()) / len(targets), calibration


def score_multi_label_model(setup: RunSetup):
    """A multi-label run's best model on the validation images: each class's threshold tuned for
    F1 there and saved into ``best.*`` (so predict, evaluate, serve and export answer with it),
    ``valid_predictions.csv`` (the labels above the thresholds, every class's probability), and
    the scores at 0.5 and at the tuned thresholds (:mod:`flowerfast.core.multilabel`). Returns the
    per-label accuracy at the thresholds and the scores. The thresholds are tuned on the photos
    they are scored on, so the tuned F1 is optimistic; the one at 0.5 is not, and both are kept."""
    import dataclasses

    from flowerfast.core.multilabel import score_multi_label, tune_thresholds

    model, valid_rows, probs, targets, _ = best_model_predictions(setup)
    probs, targets = probs.numpy(), targets.numpy()
    thresholds = tune_thresholds(probs, targets)
    scores = score_multi_label(probs, targets, setup.data.classes, thresholds)
    scores.extra["macro_f1_at_0.5"] = score_multi_label(probs, targets, setup.data.classes).macro_f1
    if distributed.current().is_main:
        spec = dataclasses.replace(setup.bundle.spec, thresholds=thresholds)
        save_model(model, spec, setup.run.model_stem(BEST))
        write_multi_label_predictions(setup, valid_rows, probs, thresholds)
    return scores.label_accuracy, scores


def write_multi_label_predictions(setup: RunSetup, valid_rows, probs, thresholds) -> None:
    """``valid_predictions.csv`` of a multi-label run: ``predicted`` the classes at or above their
    thresholds joined by ``;`` (as ``label`` is), ``confidence`` the most likely class's probability."""
    from flowerfast.runs.records import LABEL_SEPARATOR

    classes = setup.data.classes
    rows = [
        ValidPrediction(
            file=relative_path(row.file, setup.data.root),
            label=row.label,
            predicted=LABEL_SEPARATOR.join(c for c, p, t in zip(classes, pr, thresholds) if p >= t),
            confidence=float(max(pr)),
            probabilities=dict(zip(classes, (float(p) for p in pr))),
        )
        for row, pr in zip(valid_rows, probs.tolist())
    ]
    setup.run.write_valid_predictions(rows, classes)


def write_valid_predictions(setup: RunSetup, valid_rows, preds, probs) -> None:
    """``valid_predictions.csv``: one row per validation image, with every class's probability."""
    classes = setup.data.classes
    rows = [
        ValidPrediction(
            file=relative_path(row.file, setup.data.root),
            label=row.label,
            predicted=classes[p],
            confidence=pr[p],
            probabilities=dict(zip(classes, pr)),
        )
        for row, p, pr in zip(valid_rows, preds.tolist(), probs.tolist())
    ]
    setup.run.write_valid_predictions(rows, classes)
