"""The epochs of a run: a frozen one-cycle phase (pretrained weights only), then the full one,
each a fastai ``fit_one_cycle`` with flowerfast's callbacks, resumable at any epoch.

A resumed run (``setup.checkpoint``) restores the model, optimizer and random generators and
continues the schedule where it stopped: fastai's ``start_epoch`` skips the epochs already done,
so the one-cycle position is the same as in an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from flowerfast.core.progress import Reporter
from flowerfast.hardware import distributed
from flowerfast.runs.config import MAX_BUDGET_EPOCHS
from flowerfast.runs.folder import CHECKPOINT, EpochRecord
from flowerfast.training.callbacks import CleanTrainAccuracy, EpochStats, ReportProgress
from flowerfast.training.checkpoint import Checkpoint, capture_rng, data_files, restore_rng, split_sha256
from flowerfast.training.ema import WeightAverage
from flowerfast.training.keeping import (
    EarlyStopping,
    EpochClock,
    KeepEpochModels,
    ReportEpoch,
    SaveBestModel,
    SaveCheckpoint,
    WriteHistory,
)
from flowerfast.training.schedule import EpochCost, EpochPlan, FollowPlan

if TYPE_CHECKING:
    from flowerfast.training.session import RunSetup


@dataclass
class FitOutcome:
    """What the epochs gave: the history, the best epoch and its accuracy, and the epoch training
    stopped at early (``--patience``), if it did."""

    history: list[EpochRecord]
    best_epoch: Optional[int]
    best_accuracy: Optional[float]
    stopped_early_at: Optional[int] = None
    planned_epochs: Optional[int] = None
    best_is_average: bool = False


@dataclass
class RunCallbacks:
    """The callbacks of every fit of a run, the same objects for both phases (so the best model,
    the history and the early stop carry on from one phase to the next)."""

    history: WriteHistory
    best: SaveBestModel
    checkpoint: SaveCheckpoint
    stopper: EarlyStopping
    clock: EpochClock
    others: list = field(default_factory=list)
    average: Optional[WeightAverage] = None

    def all(self) -> list:
        return [
            self.history,
            self.best,
            self.checkpoint,
            *self.others,
            self.stopper,
            *([self.average] if self.average else []),
        ]


def run_callbacks(setup: RunSetup, reporter: Reporter, extra: Sequence = ()) -> RunCallbacks:
    """The epoch-end callbacks of ``setup``'s run; ``extra`` callbacks (the trackers) come with
    them, each running at its own ``order`` (the trackers after the run's files are saved and
    before the early stop)."""
    start, options = setup.checkpoint, setup.config.options
    history, best = WriteHistory(setup), SaveBestModel.for_run(setup)
    clock = EpochClock(start.seconds if start else 0.0)
    average = (
        WeightAverage(options.ema_decay, setup.bundle.precision, setup.data.multi_label, start.ema if start else None)
        if options.ema
        else None
    )
    checkpoint = SaveCheckpoint(
        lambda epoch: snapshot(setup, epoch, history.records, best, clock.seconds(), average),
        setup.run.file(CHECKPOINT),
        reporter,
    )
    others = [ReportEpoch(reporter, best), *([KeepEpochModels(setup)] if options.save_every else []), *extra]
    return RunCallbacks(
        history=history,
        best=best,
        checkpoint=checkpoint,
        stopper=EarlyStopping(options.patience, best),
        clock=clock,
        others=others,
        average=average,
    )


@dataclass
class Phase:
    """One ``fit_one_cycle`` of a run: ``frozen`` or ``full``, its epochs, the run's epochs before
    it, and those of it a resumed run has done already (fastai's ``start_epoch``)."""

    name: str
    epochs: int
    offset: int
    skip: int


def fit_phases(setup: RunSetup, reporter: Reporter, callbacks: Sequence = (), trackers: Sequence = ()) -> FitOutcome:
    """Run the frozen and full one-cycle phases; ``history.csv`` is rewritten after every epoch,
    the best model saved whenever validation accuracy improves, and ``checkpoint.pt`` written
    after every epoch (and once before the first). ``callbacks`` are added to every fit;
    ``trackers`` hear of each epoch once it is saved."""
    from flowerfast.training.keeping import LogToTrackers
    from flowerfast.training.scoring import clean_train_dl
    from flowerfast.training.sharding import data_parallel

    config, start = setup.config, setup.checkpoint
    done = start.epoch if start else 0
    keep = run_callbacks(setup, reporter, extra=[LogToTrackers(trackers)] if trackers else ())
    clean_dl = clean_train_dl(setup, config.clean_train_images, config.options.seed)
    plan = epoch_plan(setup, keep.clock)
    reporter.epochs_started(plan.total)
    begin_or_continue(setup, keep, reporter, plan.total)
    keep.clock.start()
    if keep.stopper.due(done):  # a resumed run that had stopped early: nothing left to train
        keep.stopper.stopped_at = done
    try:
        with data_parallel(setup.bundle.learn, setup.bundle.device, sync_bn=config.options.sync_bn):
            offset = 0
            for name, n_epochs in fit_lengths(setup):
                if keep.stopper.stopped_at is not None:
                    break
                if offset + n_epochs > done:
                    phase = Phase(name, n_epochs, offset, skip=max(0, done - offset))
                    fit_phase(setup, phase, keep, [*keep.all(), *callbacks], clean_dl, reporter, plan)
                offset += n_epochs
    finally:
        reporter.finished()
    return FitOutcome(
        history=keep.history.records,
        best_epoch=keep.best.best_epoch,
        best_accuracy=keep.best.best_accuracy,
        stopped_early_at=keep.stopper.stopped_at,
        planned_epochs=plan.total,
        best_is_average=next((r.ema_is_better for r in keep.history.records if r.epoch == keep.best.best_epoch), False),
    )


def fit_lengths(setup: RunSetup) -> list[tuple[str, int]]:
    """The epochs each ``fit_one_cycle`` is started with: the run's phases, except that a budgeted
    full phase is given room for :data:`MAX_BUDGET_EPOCHS` and stops where its plan ends."""
    budget = setup.config.options.time_budget
    return [(name, MAX_BUDGET_EPOCHS if budget and name == "full" else n) for name, n in setup.config.phases]


def epoch_plan(setup: RunSetup, clock: EpochClock) -> EpochPlan:
    """The run's :class:`EpochPlan`; a resumed budgeted run plans what is left of its budget from
    the cost of its last epoch before the interruption."""
    options, frozen = setup.config.options, setup.config.freeze_epochs or 0
    plan = EpochPlan(
        full_epochs=options.epochs,
        frozen_epochs=frozen,
        budget=options.time_budget,
        sizes=options.progressive,
        clock=clock,
    )
    history = setup.checkpoint.records() if setup.checkpoint else []
    full = [r for r in history if r.phase == "full"]
    if plan.budget is not None and history:
        if full:
            plan.full_epoch_timed(EpochCost.of_record(full[-1], plan.train_size(len(full) - 1)))
        else:
            plan.frozen_cost = EpochCost.of_record(history[-1], plan.train_size(None))
        plan.replan(len(full), resumed=True)
    return plan


def begin_or_continue(setup: RunSetup, keep: RunCallbacks, reporter: Reporter, total: int) -> None:
    """A new run seeds this process's augmentations and writes its epoch-0 checkpoint; a resumed
    one loads its model."""
    from fastai.torch_core import set_seed

    start = setup.checkpoint
    if start is None:
        set_seed(setup.config.options.seed + distributed.current().rank)  # each process its own augmentations
        keep.checkpoint.write(0)
    else:
        reporter.stage(f"resuming after epoch {start.epoch} of {total}")
        reporter.checkpoint_saved(start.epoch, setup.run.file(CHECKPOINT))
        setup.bundle.learn.model.load_state_dict(start.model)


def fit_phase(
    setup: RunSetup,
    phase: Phase,
    keep: RunCallbacks,
    callbacks: Sequence,
    clean_dl,
    reporter: Reporter,
    plan: Optional[EpochPlan] = None,
) -> None:
    """One phase's ``fit_one_cycle``: the frozen one trains the head alone at ``lr`` (the peak
    almost at once), the full one the body at ``body_lr`` and the head at ``lr``. The phase a
    resumed run stopped in gets its optimizer state and random generators back."""
    config, learn, start = setup.config, setup.bundle.learn, setup.checkpoint
    stats = EpochStats(
        phase=phase.name, epoch_offset=phase.offset, start_epoch=phase.skip, multi_label=setup.data.multi_label
    )
    cbs = [
        stats,
        ReportProgress(reporter, epoch_offset=phase.offset),
        *callbacks,
        *recipe_callbacks(setup, phase, plan, reporter),
    ]
    if config.clean_train_images > 0:  # a process whose share is empty still adds its zeros
        cbs.append(CleanTrainAccuracy(clean_dl, setup.bundle.precision, start_epoch=phase.skip, reporter=reporter))
    if phase.name == "frozen":  # either call resets Adam's state, as between an uninterrupted run's phases
        learn.freeze()
    else:
        learn.unfreeze()
    if start is not None and phase.offset <= start.epoch < phase.offset + phase.epochs:
        if start.optimizer is not None and phase.skip > 0:  # within a phase: Adam's moments carry on
            learn.opt.opt.load_state_dict(start.optimizer)
        restore_rng(start.rng_of(distributed.current().rank), (setup.data.dls.train, setup.data.dls.valid))
    if phase.name == "frozen":
        learn.fit_one_cycle(phase.epochs, config.lr, pct_start=0.99, cbs=cbs, start_epoch=phase.skip)
    else:
        lr_max = slice(config.body_lr, config.lr) if config.pretrained else config.lr
        learn.fit_one_cycle(phase.epochs, lr_max, cbs=cbs, start_epoch=phase.skip)
    if stats.diverged_at is not None:
        best = keep.best.best_epoch
        kept = f"best.safetensors holds epoch {best}, the best before it" if best else "no model was saved"
        raise distributed.shared_error(
            f"training diverged: the loss became NaN or infinite in epoch {stats.diverged_at}; {kept}. "
            "Lower the learning rate ($lr) or train in fp32 ($precision=fp32)",
            parameters=("lr", "precision"),
        )


def recipe_callbacks(setup: RunSetup, phase: Phase, plan: Optional[EpochPlan], reporter: Reporter) -> list:
    """The callbacks of a fit that follows an epoch plan (a time budget, progressive resizing).
    (MixUp and CutMix belong to the learner, :func:`flowerfast.training.session.build_learner`.)"""
    from flowerfast.data.augment import growing_crop

    if plan is None or (plan.budget is None and not plan.sizes):
        return []
    return [FollowPlan(plan, phase.name, growing_crop(setup.data.dls), reporter)]


def snapshot(
    setup: RunSetup,
    epoch: int,
    history: list[EpochRecord],
    best: SaveBestModel,
    seconds: float,
    average: Optional[WeightAverage] = None,
) -> Checkpoint:
    """The run's state after ``epoch`` completed epochs, as :class:`~flowerfast.training.checkpoint.Checkpoint`.

    A resumed run keeps the options and configuration it started with, so resuming twice checks
    against the original, not against the last resume."""
    learn, start = setup.bundle.learn, setup.checkpoint
    opt = getattr(learn, "opt", None)
    rng = capture_rng((setup.data.dls.train, setup.data.dls.valid))
    rng_ranks = distributed.gather_objects(rng) if distributed.active() else []
    return Checkpoint(
        epoch=epoch,
        model={k: v.detach().to("cpu") for k, v in distributed.unwrapped(learn.model).state_dict().items()},
        optimizer=opt.opt.state_dict() if opt is not None and epoch > 0 else None,
        rng=rng,
        rng_ranks=rng_ranks,
        options=start.options if start else setup.config.options.to_dict(),
        config=start.config if start else setup.config.to_dict(),
        split_sha256=split_sha256(setup.data.rows, setup.data.root),
        data_files=start.data_files if start else data_files(setup.data.files, setup.data.root),
        history=[r.__dict__.copy() for r in history],
        best_epoch=best.best_epoch,
        best_accuracy=best.best_accuracy,
        seconds=seconds,
        ema=average.state_dict() if average is not None else None,
    )
