"""Fine-tuning, end to end: the flower report's recipe (random 80/20 split, random crop + random
erasing, Adam, one-cycle learning rate), made to work and written to a run folder.

Why it works where the report's run stalled at 80%: the normalisation the pretrained weights were
trained with, their batch-norm statistics kept, a new head trained first with the pretrained body
frozen, then the whole network with discriminative learning rates (the body at 1/40 of the
head's), all under one-cycle schedules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.data.split import class_counts
from flowerfast.hardware import distributed
from flowerfast.hardware.peers import peer_failures
from flowerfast.models.classifier import count_parameters, save_model
from flowerfast.runs.config import TrainConfig, make_config
from flowerfast.runs.folder import (
    CHECKPOINT,
    CONFIG,
    FINAL,
    SUMMARY,
    EpochRecord,
    RunFolder,
    RunSummary,
)
from flowerfast.runs.resolved import ResolvedConfig
from flowerfast.training.checkpoint import RESUME_MAY_CHANGE, Checkpoint, load_checkpoint
from flowerfast.training.phases import FitOutcome, fit_phases
from flowerfast.training.scoring import score_best_model, score_multi_label_model
from flowerfast.training.session import RunSetup, prepare_run


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


def train(
    config: Optional[TrainConfig] = None, reporter: Optional[Reporter] = None, callbacks: Sequence = (), **options
) -> TrainResult:
    """Fine-tune ``config.arch`` on ``config.data`` and write the run folder.

    The folder holds ``config.json`` (every resolved option), ``split.csv``, ``history.csv`` (one
    row per epoch, written as each epoch ends), ``best.safetensors``/``best.json`` (highest
    validation accuracy), ``final.safetensors``/``final.json``, ``valid_predictions.csv`` and
    ``summary.json``; while it runs, ``checkpoint.pt`` (see :func:`resume`). ``options`` override
    fields of ``config``: ``train(arch="resnet18", epochs=3)``. ``callbacks`` are extra fastai
    callbacks added to every fit (both phases).
    """
    from flowerfast.training.lr_find import find_and_save_lr

    reporter = distributed.main_only(reporter or NullReporter())
    options_ = make_config(config, **options)
    with prepare_run(options_, reporter, lr_finder=find_and_save_lr) as setup:
        return finish_training(setup, reporter, callbacks)


def resume(
    run_dir: Path | str, reporter: Optional[Reporter] = None, callbacks: Sequence = (), **changes
) -> TrainResult:
    """Continue an interrupted training run from its ``checkpoint.pt`` to its planned last epoch.

    The run keeps its options, split and learning-rate schedule; history and best model carry on,
    so the finished folder is what an uninterrupted run would have written. ``changes`` may give
    where and how to compute (``data`` for a moved data folder with the same photos, ``device``,
    ``workers``, ``threads``, ``cache``, ``cache_dir``); any other option that differs from the
    run's, a changed photo or a changed split is refused with a message naming it.
    """
    reporter = distributed.main_only(reporter or NullReporter())
    run = RunFolder.open(run_dir)
    checkpoint = load_resumable(run)
    options_ = resumed_options(run, checkpoint, changes)
    with prepare_run(
        options_, reporter, lr_finder=lambda *a: checkpoint.config["lr_find"], resume=(run, checkpoint)
    ) as setup:
        return finish_training(setup, reporter, callbacks)


def load_resumable(run: RunFolder) -> Checkpoint:
    """The run's checkpoint, or a one-line reason why the run cannot be resumed."""
    path = run.file(CHECKPOINT)
    if not path.is_file():
        if run.file(SUMMARY).is_file():
            raise FlowerfastError(f"{run.path} is a finished run (summary.json is there): nothing to resume")
        if not run.file(CONFIG).is_file():
            raise FlowerfastError(f"{run.path} is not a flowerfast run folder (no config.json)")
        raise FlowerfastError(
            f"{run.path} has no checkpoint: it stopped before its first epoch began "
            "(or is an lr-find run); start it again"
        )
    return load_checkpoint(path)


def resumed_options(run: RunFolder, checkpoint: Checkpoint, changes: dict) -> TrainConfig:
    """The run's own options, with the allowed ``changes``; a one-line refusal naming every other
    option that differs."""
    from dataclasses import fields

    stored = {f.name: checkpoint.options[f.name] for f in fields(TrainConfig) if f.name in checkpoint.options}
    resumed_options_check(run.path, stored, changes)
    allowed = {k: v for k, v in changes.items() if k in RESUME_MAY_CHANGE}
    # the split comes from the run folder and the weights from the checkpoint: neither file is
    # needed again (a --weights file may have been deleted since)
    stored.update(split_file=None, weights=None, out=str(run.path))
    return make_config(TrainConfig(), **{**stored, **allowed})


def resumed_options_check(where: Path, stored: dict, changes: dict) -> None:
    """Refuse, naming each one, ``changes`` to options a resume must keep (see
    :data:`~flowerfast.training.checkpoint.RESUME_MAY_CHANGE` for those it may change)."""
    from dataclasses import fields

    unknown = set(changes) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    from flowerfast.runs.config import parse_lr

    refused = []
    for name, value in changes.items():
        was = stored.get(name)
        value = parse_lr(value) if name == "lr" else value
        if name in RESUME_MAY_CHANGE or value == was or str(value) == str(was) and value is not None:
            continue
        refused.append((name, f"${name}={value} (the run has {'the default' if was is None else was})"))
    if refused:
        raise FlowerfastError(
            f"cannot resume {where} with different options: {', '.join(r for _, r in refused)}. "
            "A run resumes as it started; start a new run to change them",
            parameters=[name for name, _ in refused],
        )


def finish_training(setup: RunSetup, reporter: Reporter, callbacks: Sequence = ()) -> TrainResult:
    """Train (or go on training), then save the final model, score the best one and write the
    summary; the checkpoint is removed once the run is complete."""
    from flowerfast.runs.folder import BATCH, CALIBRATION, CONFUSION, CURVES, MISTAKES
    from flowerfast.training.pictures import draw_batch
    from flowerfast.training.trackers import close_trackers, open_trackers

    run, main = setup.run, distributed.current().is_main  # in a job of several processes, rank 0 alone writes
    if setup.checkpoint is None and main:  # the augmentation can be checked while the run goes on
        draw_batch(run.file(BATCH), setup.data, setup.config.size)
    trackers = (
        open_trackers(
            setup.config.options.trackers,
            run.path,
            setup.config.to_dict(),
            history=setup.checkpoint.records() if setup.checkpoint else (),
        )
        if main
        else []
    )
    try:
        started = time.perf_counter()
        with peer_failures():
            outcome = fit_phases(setup, reporter, callbacks, trackers=trackers)
            seconds = (setup.checkpoint.seconds if setup.checkpoint else 0.0) + time.perf_counter() - started
            if distributed.active():
                from flowerfast.training.sharding import check_same_weights

                check_same_weights(setup.bundle.learn.model)
            final_paths = (
                save_model(setup.bundle.learn.model, setup.bundle.spec, run.model_stem(FINAL))
                if main
                else (run.final_model,)
            )
            reporter.stage("scoring the best model on the validation set")
            if setup.data.multi_label:
                rescored, scores = score_multi_label_model(setup)
            else:
                rescored, calibration = score_best_model(setup)
        summary = summarise(setup, outcome, rescored, seconds, final_paths[0])
        if setup.data.multi_label:
            summary.multi_label = scores.to_dict()
        else:
            summary.calibration = calibration.to_dict()
        if main:
            draw_run_pictures(setup, outcome.history)
            setup.run.write_summary(summary)
    except BaseException:
        close_trackers(trackers, None)
        raise
    close_trackers(
        trackers,
        [run.file(n) for n in (CURVES, CONFUSION, MISTAKES, BATCH, CALIBRATION)]
        + [run.best_model, run.best_model.with_suffix(".json")],
    )
    if main:
        setup.run.file(CHECKPOINT).unlink(missing_ok=True)
    return TrainResult(run_dir=setup.run.path, history=outcome.history, config=setup.config, summary=summary)


def draw_run_pictures(setup: RunSetup, history: Sequence[EpochRecord]) -> None:
    """``curves.png``, ``confusion.png`` and ``mistakes.png`` of the finished run."""
    from flowerfast.training.pictures import draw_confusion, draw_curves, draw_mistakes

    run = setup.run
    predictions = run.read_valid_predictions()
    draw_curves(run, setup.config.options.arch, history)
    if not setup.data.multi_label:  # a confusion matrix and top-1 mistakes need one label per photo
        draw_confusion(run, setup.data.classes, predictions)
        draw_mistakes(run, setup.data.root, predictions)


def summarise(setup: RunSetup, outcome: FitOutcome, rescored: float, seconds: float, final_model: Path) -> RunSummary:
    config, history = setup.config, outcome.history
    train_seconds = sum(r.seconds for r in history)
    return RunSummary(
        arch=config.options.arch,
        classes=list(setup.data.classes),
        class_counts=class_counts(setup.data.rows, setup.data.multi_label),
        pretrained=config.pretrained,
        weights_source=config.weights_source,
        epochs=len(history),
        best_epoch=outcome.best_epoch,
        best_valid_accuracy=next((r.valid_accuracy for r in history if r.epoch == outcome.best_epoch), None)
        if setup.data.multi_label
        else outcome.best_accuracy,
        best_valid_accuracy_rescored=rescored,
        final_valid_accuracy=history[-1].valid_accuracy,
        final_train_loss=history[-1].train_loss,
        lr=config.lr,
        lr_find=config.lr_find,
        seconds=seconds,
        seconds_per_epoch=train_seconds / len(history),
        train_images_per_second=setup.data.n_train * len(history) / train_seconds if train_seconds else None,
        parameters=count_parameters(setup.bundle.learn.model),
        device=config.device,
        skipped_files=len(setup.data.skipped) + len(setup.data.loader.skipped if setup.data.loader else ()),
        best_model=str(setup.run.best_model),
        final_model=str(final_model),
        stopped_early_at=outcome.stopped_early_at,
        planned_epochs=outcome.planned_epochs or sum(n for _, n in config.phases),
        best_model_is_average=outcome.best_is_average if config.options.ema else None,
        time_budget=config.options.time_budget,
    )
