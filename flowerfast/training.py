"""Fine-tuning, end to end: the flower report's recipe (random 80/20 split, random crop + random
erasing, Adam, one-cycle learning rate), made to work and written to a run folder.

Why it works where the report's run stalled at 80%: ImageNet normalisation matching the pretrained
weights, a new head trained first with the pretrained body frozen, then the whole network with
discriminative learning rates (the body from 1/100 of the head's), all under one-cycle schedules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .config import ResolvedConfig, TrainConfig, make_config
from .errors import FlowerfastError
from .data import class_counts
from .model import count_parameters, save_model
from .progress import NullReporter, Reporter
from .runfolder import BEST, FINAL, EpochRecord, RunSummary, ValidPrediction, relative_path
from .session import RunSetup, prepare_run


@dataclass
class TrainResult:
    """What a training run produced: its folder, per-epoch history, resolved configuration and
    summary (the content of ``config.json``, ``history.csv`` and ``summary.json``)."""

    run_dir: Path
    history: list[EpochRecord]
    config: ResolvedConfig
    summary: RunSummary

    @property
    def best_epoch(self) -> int:
        return self.summary.best_epoch

    @property
    def best_valid_accuracy(self) -> float:
        return self.summary.best_valid_accuracy

    @property
    def final_valid_accuracy(self) -> float:
        return self.summary.final_valid_accuracy

    @property
    def best_model(self) -> Path:
        return Path(self.summary.best_model)

    @property
    def final_model(self) -> Path:
        return Path(self.summary.final_model)

    @property
    def classes(self) -> list[str]:
        return list(self.summary.classes)

    @property
    def pretrained(self) -> bool:
        return self.summary.pretrained

    @property
    def lr(self) -> float:
        return self.summary.lr

    @property
    def seconds(self) -> float:
        return self.summary.seconds


def clean_train_dl(setup: RunSetup, n: int, seed: int):
    """A DataLoader over a fixed random sample of up to ``n`` training images, with validation
    transforms (no augmentation); ``None`` when ``n`` is 0."""
    import random

    if n <= 0:
        return None
    train_rows = [r for r in setup.data.rows if not r.is_valid]
    sample = random.Random(seed).sample(train_rows, min(n, len(train_rows)))
    return setup.data.dls.test_dl([(str(r.file), r.label) for r in sample], with_labels=True)


def score_best_model(setup: RunSetup) -> float:
    """Score the saved best model on the validation images and write ``valid_predictions.csv``
    (one row per image, each class's probability): what a comparison of two models on the same
    split is computed from. Returns the accuracy."""
    from safetensors.torch import load_file

    from .learner import predict_batches

    learn, run = setup.bundle.learn, setup.run
    learn.model.load_state_dict(load_file(str(run.best_model), device=str(setup.bundle.device)))
    probs, targets = predict_batches(learn.model, setup.data.dls.valid, setup.bundle.precision)
    classes = setup.data.classes
    valid_rows = [r for r in setup.data.rows if r.is_valid]
    preds = probs.argmax(dim=-1)
    rows = [ValidPrediction(file=relative_path(row.file, setup.data.root), label=row.label, predicted=classes[p],
                            confidence=pr[p], probabilities=dict(zip(classes, pr)))
            for row, p, pr in zip(valid_rows, preds.tolist(), probs.tolist())]
    run.write_valid_predictions(rows, classes)
    return int((preds == targets).sum()) / len(targets)


def fit_phases(setup: RunSetup, reporter: Reporter, callbacks: Sequence = ()) -> tuple[list[EpochRecord], object]:
    """Run the frozen and full one-cycle phases; ``history.csv`` is rewritten after every epoch and
    the best model saved whenever validation accuracy improves. Returns the history and the saver."""
    from fastai.torch_core import set_seed

    from .callbacks import CleanTrainAccuracy, EpochStats, ReportProgress, SaveBestModel

    config, learn, run = setup.config, setup.bundle.learn, setup.run
    history: list[EpochRecord] = []

    def record(epoch: EpochRecord) -> None:
        history.append(epoch)
        run.write_history(history)

    saver = SaveBestModel(lambda: save_model(learn.model, setup.bundle.spec, run.model_stem(BEST)), reporter)
    reporter.epochs_started(sum(n for _, n in config.phases))
    clean_dl = clean_train_dl(setup, config.clean_train_images, config.options.seed)
    set_seed(config.options.seed)
    offset = 0
    try:
        for phase, n_epochs in config.phases:
            stats = EpochStats(phase=phase, epoch_offset=offset)
            stats.listeners += [record, saver]
            cbs = [stats, ReportProgress(reporter, epoch_offset=offset), *callbacks]
            if clean_dl is not None:
                cbs.append(CleanTrainAccuracy(clean_dl, setup.bundle.precision))
            if phase == "frozen":
                learn.freeze()
                learn.fit_one_cycle(n_epochs, config.lr, pct_start=0.99, cbs=cbs)
            else:
                learn.unfreeze()
                lr_max = slice(config.body_lr, config.lr) if config.pretrained else config.lr
                learn.fit_one_cycle(n_epochs, lr_max, cbs=cbs)
            offset += n_epochs
            diverged_at = getattr(learn, "diverged_at", None)
            if diverged_at is not None:
                kept = (f"best.safetensors holds epoch {saver.best_epoch}, the best before it"
                        if saver.best_epoch else "no model was saved")
                raise FlowerfastError(f"training diverged: the loss became NaN or infinite in epoch {diverged_at}; "
                                      f"{kept}. Lower the learning rate (--lr) or train in fp32 (--precision fp32)")
    finally:
        reporter.finished()
    return history, saver


def train(config: Optional[TrainConfig] = None, reporter: Optional[Reporter] = None, callbacks: Sequence = (),
          **options) -> TrainResult:
    """Fine-tune ``config.arch`` on ``config.data`` and write the run folder.

    The folder holds ``config.json`` (every resolved option), ``split.csv``, ``history.csv`` (one
    row per epoch, written as each epoch ends), ``best.safetensors``/``best.json`` (highest
    validation accuracy), ``final.safetensors``/``final.json``, ``valid_predictions.csv`` and
    ``summary.json``. ``options`` override fields of ``config``: ``train(arch="resnet18", epochs=3)``.
    ``callbacks`` are extra fastai callbacks added to every fit (both phases).
    """
    from .lr_find import find_and_save_lr

    reporter = reporter or NullReporter()
    options_ = make_config(config, **options)
    with prepare_run(options_, reporter, lr_finder=find_and_save_lr) as setup:
        started = time.perf_counter()
        history, saver = fit_phases(setup, reporter, callbacks)
        seconds = time.perf_counter() - started
        final_paths = save_model(setup.bundle.learn.model, setup.bundle.spec, setup.run.model_stem(FINAL))
        reporter.stage("scoring the best model on the validation set")
        rescored = score_best_model(setup)
        summary = summarise(setup, history, saver, rescored, seconds, final_paths[0])
        setup.run.write_summary(summary)
    return TrainResult(run_dir=setup.run.path, history=history, config=setup.config, summary=summary)


def summarise(setup: RunSetup, history: list[EpochRecord], saver, rescored: float, seconds: float,
              final_model: Path) -> RunSummary:
    config = setup.config
    train_seconds = sum(r.seconds for r in history)
    return RunSummary(
        arch=config.options.arch, classes=list(setup.data.classes), class_counts=class_counts(setup.data.rows),
        pretrained=config.pretrained, weights_source=config.weights_source, epochs=len(history),
        best_epoch=saver.best_epoch, best_valid_accuracy=saver.best_accuracy, best_valid_accuracy_rescored=rescored,
        final_valid_accuracy=history[-1].valid_accuracy, final_train_loss=history[-1].train_loss, lr=config.lr,
        lr_find=config.lr_find, seconds=seconds, seconds_per_epoch=train_seconds / len(history),
        train_images_per_second=setup.data.n_train * len(history) / train_seconds if train_seconds else None,
        parameters=count_parameters(setup.bundle.learn.model), device=config.device,
        skipped_files=len(setup.data.skipped), best_model=str(setup.run.best_model), final_model=str(final_model),
    )
