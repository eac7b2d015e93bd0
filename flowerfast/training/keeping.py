"""What a run keeps when an epoch ends, one fastai callback per concern: the history, the best
model, the checkpoint, the epoch's report, the epoch snapshots, the trackers, the early stop.

Each reads the epoch :class:`~flowerfast.training.callbacks.EpochStats` just recorded
(``self.epoch_stats.record``; ``None`` for an epoch a resumed fit skipped) and runs after it, in
the order of their ``order``: an epoch is reported once everything of it is saved, and training
stops early only after the epoch that decided it is saved. The same objects serve both phases of
a run, so the best model and the history carry on from the frozen phase to the full one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from fastai.callback.core import Callback, CancelFitException

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import Reporter
from flowerfast.hardware import distributed
from flowerfast.models.classifier import save_model
from flowerfast.runs.folder import BEST, EpochRecord
from flowerfast.training.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from flowerfast.training.checkpoint import Checkpoint
    from flowerfast.training.session import RunSetup


class EpochEndCallback(Callback):
    """A callback that acts on each recorded epoch: :meth:`epoch_recorded` is called with it."""

    def after_epoch(self):
        record = self.learn.epoch_stats.record
        if record is not None:
            self.epoch_recorded(record)

    def epoch_recorded(self, record: EpochRecord) -> None:
        raise NotImplementedError


class WriteHistory(EpochEndCallback):
    """The run's epochs so far (a resumed run's earlier ones first), ``history.csv`` rewritten
    after each (by rank 0 alone in a job of several processes)."""

    order = 62

    def __init__(self, setup: RunSetup):
        self.folder = setup.run  # not `run`: a fastai callback's own flag
        self.records: list[EpochRecord] = setup.checkpoint.records() if setup.checkpoint else []

    def epoch_recorded(self, record: EpochRecord) -> None:
        self.records.append(record)
        if distributed.current().is_main:
            self.folder.write_history(self.records)


class SaveBestModel(EpochEndCallback):
    """Saves ``best.safetensors`` whenever validation accuracy improves on the best so far (a
    resumed run's best carries on from its checkpoint). With ``--ema`` the moving average of the
    weights competes too: whichever of the two validates better that epoch is the candidate, and
    ``best_is_average`` says which one the best model is."""

    order = 63

    def __init__(
        self,
        write: Callable[[Optional[object]], None],
        best_accuracy: Optional[float] = None,
        best_epoch: Optional[int] = None,
    ):
        self.write = write
        self.best_accuracy, self.best_epoch = best_accuracy, best_epoch
        self.best_is_average = False

    @classmethod
    def for_run(cls, setup: RunSetup) -> SaveBestModel:
        """The run's own best model file, and the best so far of a resumed run."""

        def write(model=None) -> None:
            if distributed.current().is_main:
                model = model if model is not None else distributed.unwrapped(setup.bundle.learn.model)
                save_model(model, setup.bundle.spec, setup.run.model_stem(BEST))

        start = setup.checkpoint
        return cls(
            write, best_accuracy=start.best_accuracy if start else None, best_epoch=start.best_epoch if start else None
        )

    def epoch_recorded(self, record: EpochRecord) -> None:
        if self.best_accuracy is None or record.best_score > self.best_accuracy:
            self.best_accuracy, self.best_epoch = record.best_score, record.epoch
            self.best_is_average = record.ema_is_better
            self.write(self.learn.weight_average.average if record.ema_is_better else None)


class SaveCheckpoint(EpochEndCallback):
    """``checkpoint.pt`` after every epoch: the state :func:`~flowerfast.training.run.resume`
    continues from (every process captures its own random generators; rank 0 writes)."""

    order = 64

    def __init__(self, snapshot: Callable[[int], Checkpoint], file, reporter: Reporter):
        self.snapshot, self.file, self.reporter = snapshot, file, reporter

    def write(self, epoch: int) -> None:
        state = self.snapshot(epoch)
        if distributed.current().is_main:
            save_checkpoint(self.file, state)
        self.reporter.checkpoint_saved(epoch, self.file)

    def epoch_recorded(self, record: EpochRecord) -> None:
        self.write(record.epoch)


class ReportEpoch(EpochEndCallback):
    """The epoch's line for the :class:`Reporter`, marked when it is the best so far."""

    order = 65

    def __init__(self, reporter: Reporter, best: SaveBestModel):
        self.reporter, self.best = reporter, best

    def epoch_recorded(self, record: EpochRecord) -> None:
        self.reporter.epoch_done(record, best=self.best.best_epoch == record.epoch)


class KeepEpochModels(EpochEndCallback):
    """The model of every ``save_every``-th epoch in ``checkpoints/epoch-NNN.*``, the newest
    ``keep`` of them kept (all when ``keep`` is ``None``). Each is a model file like
    ``best.safetensors``, so ``flowerfast predict runs/x/checkpoints/epoch-005.safetensors`` works."""

    order = 66

    def __init__(self, setup: RunSetup):
        self.setup = setup
        self.every, self.keep = setup.config.options.save_every, setup.config.options.keep

    def epoch_recorded(self, record: EpochRecord) -> None:
        if record.epoch % self.every or not distributed.current().is_main:
            return
        run = self.setup.run
        stem = run.snapshot_stem(record.epoch)
        try:
            stem.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise FlowerfastError(f"cannot create {stem.parent}: {exc.strerror}") from None
        save_model(distributed.unwrapped(self.setup.bundle.learn.model), self.setup.bundle.spec, stem)
        if self.keep is not None:
            for old in run.snapshots()[: -self.keep]:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)


class LogToTrackers(EpochEndCallback):
    """One point per epoch in each experiment tracker of the run (``trackers``)."""

    order = 67

    def __init__(self, trackers: Sequence):
        self.trackers = list(trackers)

    def epoch_recorded(self, record: EpochRecord) -> None:
        for tracker in self.trackers:
            tracker.log_epoch(record)


class EarlyStopping(EpochEndCallback):
    """Ends training when validation accuracy has not improved for ``patience`` epochs (``None``:
    never), after that epoch is saved. It stops the current fit through fastai's
    ``CancelFitException`` and records where; no further phase is then started."""

    order = 68

    def __init__(self, patience: Optional[int], best: SaveBestModel):
        self.patience, self.best = patience, best
        self.stopped_at: Optional[int] = None

    def due(self, epoch: int) -> bool:
        best = self.best.best_epoch
        return self.patience is not None and best is not None and epoch - best >= self.patience

    def epoch_recorded(self, record: EpochRecord) -> None:
        if self.due(record.epoch):
            self.stopped_at = record.epoch
            raise CancelFitException()


class EpochClock:
    """Training seconds across a run's sessions: what earlier sessions took plus this one's."""

    def __init__(self, before: float = 0.0):
        self.before, self.started = before, None

    def start(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.started if self.started is not None else 0.0)
