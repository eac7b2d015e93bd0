"""Fine-tuning, end to end: the flower report's recipe (random 80/20 split, random crop + random
erasing, Adam, one-cycle learning rate), made to work and written to a run folder.

Why it works where the report's run stalled at 80%: ImageNet normalisation matching the pretrained
weights, a new head trained first with the pretrained body frozen, then the whole network with
discriminative learning rates (the body at 1/100 of the head's), all under one-cycle schedules.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .archs import check_arch
from .config import LR_AUTO, TrainConfig
from .data import FlowerData, class_counts, load_data
from .runfolder import relative_path, write_split_csv
from .devices import resolve_device, resolve_workers
from .learner import LearnerBundle, create_learner
from .model import count_parameters, library_versions, save_model
from .progress import NullReporter, Reporter
from .runfolder import EpochRecord
from .runs import check_output_dir, create_run_dir, default_run_dir, write_csv, write_json

DEFAULT_LR_PRETRAINED = 2e-3
DEFAULT_LR_SCRATCH = 3e-3
BODY_LR_DIVISOR = 100


@dataclass
class RunSetup:
    """Data, learner and run folder, ready for lr-find or training."""

    config: TrainConfig
    data: FlowerData
    bundle: LearnerBundle
    run_dir: Path
    resolved: dict[str, Any]


@dataclass
class TrainResult:
    """What a training run produced. Paths point into ``run_dir``."""

    run_dir: Path
    history: list[EpochRecord]
    best_epoch: int
    best_valid_accuracy: float
    final_valid_accuracy: float
    best_model: Path
    final_model: Path
    classes: list[str]
    pretrained: bool
    lr: float
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _merge(config: Optional[TrainConfig], options: dict) -> TrainConfig:
    config = config or TrainConfig()
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    config = dataclasses.replace(config, **options)
    for name in ("data", "weights", "out", "split_file"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            setattr(config, name, Path(value))
    return config.validate()


def prepare_run(config: Optional[TrainConfig], options: dict, reporter: Reporter, prefix: str = "") -> RunSetup:
    """Validate options, scan and split the data, build the learner and create the run folder
    (default ``runs/<prefix><arch>-<timestamp>``).

    Every check that can fail on user input runs before the run folder is created, so a bad
    option leaves nothing behind.
    """
    config = _merge(config, options)
    check_arch(config.arch)
    run_dir = check_output_dir(config.out or default_run_dir(f"{prefix}{config.arch}"))
    device = resolve_device(config.device)
    workers = resolve_workers(config.workers, device)

    reporter.stage(f"scanning {config.data or 'the embedded sample photos'}")
    data = load_data(config.data, size=config.size, bs=config.bs, valid_pct=config.valid_pct,
                     seed=config.seed, workers=workers, device=device, split_file=config.split_file)
    reporter.stage(f"building {config.arch}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = create_learner(data, arch=config.arch, size=config.size, pretrained=config.pretrained,
                                weights=config.weights, device=device)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "pretrained" in str(w.message)]
    for w in caught:  # hand warnings on to the caller's filters (the CLI shows them loudly)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    run_dir = create_run_dir(run_dir)
    write_split_csv(data.rows, run_dir / "split.csv", data.root)
    resolved = config.to_dict()
    resolved.update({
        "data": str(data.root),
        "out": str(run_dir),
        "classes": data.classes,
        "n_train": data.n_train,
        "n_valid": data.n_valid,
        "preset_split": data.preset_split,
        "skipped": [{"file": str(s.path), "reason": s.reason} for s in data.skipped],
        "bs": data.bs,
        "device": str(device),
        "workers": workers,
        "mixed_precision": bundle.mixed_precision,
        "pretrained": bundle.weights.pretrained,
        "pretrained_requested": config.pretrained,
        "weights_source": bundle.weights.source,
        "warnings": notes,
        "versions": library_versions(),
    })
    reporter.run_ready(resolved)
    return RunSetup(config=config, data=data, bundle=bundle, run_dir=run_dir, resolved=resolved)


def clean_train_dl(data: FlowerData, n: int, seed: int):
    """A DataLoader over a fixed random sample of up to ``n`` training images, with validation
    transforms (no augmentation); ``None`` when ``n`` is 0."""
    import random

    if n <= 0:
        return None
    train_rows = [r for r in data.rows if not r.is_valid]
    sample = random.Random(seed).sample(train_rows, min(n, len(train_rows)))
    return data.dls.test_dl([(str(r.file), r.label) for r in sample], with_labels=True)


def write_valid_predictions(learn, setup: RunSetup, weights: Path, path: Path) -> float:
    """Score the saved best model on the validation images and write one row per image:
    ``file,label,predicted,confidence`` and each class's probability. These paired predictions are
    what a comparison of two models on the same split is computed from. Returns the accuracy.
    """
    from safetensors.torch import load_file

    from .learner import predict_batches

    learn.model.load_state_dict(load_file(str(weights), device=str(setup.bundle.device)))
    probs, targets = predict_batches(learn.model, setup.data.dls.valid, setup.bundle.mixed_precision)
    classes = setup.data.classes
    valid_rows = [r for r in setup.data.rows if r.is_valid]
    preds = probs.argmax(dim=-1)
    out_rows = []
    for row, p, pr in zip(valid_rows, preds.tolist(), probs.tolist()):
        out_rows.append([relative_path(row.file, setup.data.root), row.label, classes[p], round(pr[p], 6),
                         *[round(x, 6) for x in pr]])
    write_csv(path, ["file", "label", "predicted", "confidence", *[f"p_{c}" for c in classes]], out_rows)
    return float((preds == targets).float().mean())


def _history_writer(path: Path, records: list[EpochRecord]):
    def write(record: EpochRecord) -> None:
        records.append(record)
        write_csv(path, EpochRecord.FIELDS, (r.as_row() for r in records))
    return write


def train(config: Optional[TrainConfig] = None, reporter: Optional[Reporter] = None, **options) -> TrainResult:
    """Fine-tune ``config.arch`` on ``config.data`` and write the run folder.

    The folder holds ``config.json`` (every resolved option), ``split.csv``, ``history.csv`` (one
    row per epoch, written as each epoch ends), ``best.safetensors``/``best.json`` (highest
    validation accuracy), ``final.safetensors``/``final.json`` and ``summary.json``.
    ``options`` override fields of ``config``: ``train(arch="resnet18", epochs=3)``.
    """
    from fastai.torch_core import set_seed

    from .callbacks import CleanTrainAccuracy, EpochStats, ReportProgress, SaveBestModel
    from .lr_find import run_lr_find, save_lr_find

    reporter = reporter or NullReporter()
    setup = prepare_run(config, options, reporter)
    cfg, learn, run_dir, resolved = setup.config, setup.bundle.learn, setup.run_dir, setup.resolved
    pretrained = setup.bundle.weights.pretrained
    started = time.perf_counter()

    lr_find_suggestions = None
    if cfg.lr == LR_AUTO:
        reporter.stage("running the learning-rate finder (--lr auto)")
        found = save_lr_find(run_lr_find(learn, reporter), run_dir, title=f"lr-find: {cfg.arch}")
        lr_find_suggestions = found.suggestions
        lr = found.valley
    else:
        lr = float(cfg.lr) if cfg.lr is not None else (DEFAULT_LR_PRETRAINED if pretrained else DEFAULT_LR_SCRATCH)
    freeze_epochs = cfg.freeze_epochs if cfg.freeze_epochs is not None else (1 if pretrained else 0)
    resolved.update({"lr": lr, "lr_find": lr_find_suggestions, "freeze_epochs": freeze_epochs,
                     "body_lr": lr / BODY_LR_DIVISOR if pretrained else lr})
    write_json(run_dir / "config.json", resolved)

    history: list[EpochRecord] = []
    saver = SaveBestModel(lambda: save_model(learn.model, setup.bundle.spec, run_dir / "best"), reporter)
    phases = []
    if freeze_epochs:
        phases.append(("frozen", freeze_epochs))
    phases.append(("full", cfg.epochs))
    reporter.epochs_started(sum(n for _, n in phases))
    clean_dl = clean_train_dl(setup.data, cfg.clean_train_sample, cfg.seed)
    set_seed(cfg.seed)
    offset = 0
    try:
        for phase, n_epochs in phases:
            stats = EpochStats(phase=phase, epoch_offset=offset)
            stats.listeners += [_history_writer(run_dir / "history.csv", history), saver]
            cbs = [stats, ReportProgress(reporter, epoch_offset=offset)]
            if clean_dl is not None:
                cbs.append(CleanTrainAccuracy(clean_dl, setup.bundle.mixed_precision))
            if phase == "frozen":
                learn.freeze()
                learn.fit_one_cycle(n_epochs, lr, pct_start=0.99, cbs=cbs)
            else:
                learn.unfreeze()
                lr_max = slice(lr / BODY_LR_DIVISOR, lr) if pretrained else lr
                learn.fit_one_cycle(n_epochs, lr_max, cbs=cbs)
            offset += n_epochs
    finally:
        reporter.finished()
        shutil.rmtree(learn.path, ignore_errors=True)
    seconds = time.perf_counter() - started

    final_paths = save_model(learn.model, setup.bundle.spec, run_dir / "final")
    reporter.stage("scoring the best model on the validation set")
    best_valid = write_valid_predictions(learn, setup, run_dir / "best.safetensors", run_dir / "valid_predictions.csv")
    train_seconds = sum(r.seconds for r in history)
    summary = {
        "arch": cfg.arch,
        "classes": setup.data.classes,
        "class_counts": class_counts(setup.data.rows),
        "pretrained": pretrained,
        "weights_source": setup.bundle.weights.source,
        "epochs": len(history),
        "best_epoch": saver.best_epoch,
        "best_valid_accuracy": saver.best_accuracy,
        "best_valid_accuracy_rescored": best_valid,
        "final_valid_accuracy": history[-1].valid_accuracy,
        "final_train_loss": history[-1].train_loss,
        "lr": lr,
        "lr_find": lr_find_suggestions,
        "seconds": seconds,
        "seconds_per_epoch": train_seconds / len(history),
        "train_images_per_second": setup.data.n_train * len(history) / train_seconds if train_seconds else None,
        "parameters": count_parameters(learn.model),
        "device": resolved["device"],
        "skipped_files": len(setup.data.skipped),
        "best_model": str(run_dir / "best.safetensors"),
        "final_model": str(final_paths[0]),
    }
    write_json(run_dir / "summary.json", summary)
    return TrainResult(
        run_dir=run_dir, history=history, best_epoch=saver.best_epoch, best_valid_accuracy=saver.best_accuracy,
        final_valid_accuracy=history[-1].valid_accuracy, best_model=run_dir / "best.safetensors",
        final_model=final_paths[0], classes=setup.data.classes, pretrained=pretrained, lr=lr, seconds=seconds,
        summary=summary, config=resolved,
    )
