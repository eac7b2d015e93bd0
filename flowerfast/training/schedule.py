"""The epochs of a run laid out in time: how many the full phase gets within a time budget
(``--time``), where each batch sits in its one-cycle schedule, and each epoch's training size
(``--progressive``), all held by one :class:`EpochPlan` that one callback per fit follows.

Why plan again after every epoch: an epoch's cost is only known once one has run (the first also
fills the image cache, later ones are faster, a frozen one is cheaper than a full one). After
each epoch the full phase is given the most epochs whose predicted cost fits what is left of the
budget, and the one-cycle schedule is stretched or shrunk to them: the position of each batch in
the schedule is its share of the *planned* epochs, written into fastai's ``pct_train`` before
fastai's ``ParamScheduler`` reads it. Training stops when the plan is done, so the learning rate
has annealed when the time is up (a run that falls behind its plan gets one more epoch to anneal
in, see :meth:`EpochPlan.replan`) and the best model is saved as in any run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from fastai.callback.core import Callback, CancelFitException

from flowerfast.core.progress import Reporter
from flowerfast.hardware import distributed
from flowerfast.runs.config import MAX_BUDGET_EPOCHS
from flowerfast.runs.records import EpochRecord

FROZEN_TO_FULL = 2.6
"""A full epoch's training batches over a frozen one's, for the plan made after the frozen epochs
(the first full epoch's first batches replace it, see :data:`PROBE_BATCHES`). Measured for
EfficientNet-Lite0 at 128 px, batch 32, on 2-core CPUs: 2.66 and 2.59 on one, 2.27 on another
(training batches alone); whole epochs, validation included, were 1.8 to 2.1 on the shared flowers
(``benchmarks/bench_recipe.py``). The larger figure errs on the safe side: a plan priced too high
is short by an epoch, and grows a few batches into the first full epoch, at the start of its
one-cycle schedule."""
PROBE_BATCHES = 4
"""Training batches timed at the start of a budgeted full epoch at a training size not yet timed
(the run's first, each new ``--progressive`` size), for a plan made then rather than at the
epoch's end (after its first batch, which also pays for one-time set-up at a new size: kernels
chosen, memory allocated)."""


def size_at(sizes: Sequence[int], epoch: int, epochs: int) -> int:
    """The training size of the full phase's ``epoch`` (from 0) of ``epochs``: ``sizes`` in equal
    shares, counted from the end, so that the last epochs always train at the last size (the one
    the model is validated and saved at), and with fewer epochs than sizes the smallest go first."""
    n = max(epochs, 1)
    return sizes[max(0, len(sizes) - 1 - (n - 1 - min(epoch, n - 1)) * len(sizes) // n)]


@dataclass
class EpochCost:
    """What one epoch cost: its training batches (``train`` seconds at ``size`` px; they scale
    with the pixels of the training size) and the rest (validation, the clean training sample,
    saving: at the model's size whatever the training size, so they do not)."""

    train: float
    rest: float = 0.0
    size: int = 0

    @classmethod
    def of_record(cls, record: EpochRecord, size: Optional[int]) -> "EpochCost":
        """An epoch's cost as ``history.csv`` recorded it (a resumed run's plan): its training
        batches and the rest of its seconds (a record without the parts: all of them as training,
        which scales a small epoch's cost up too far, so the plan errs short)."""
        train = record.train_seconds if record.train_seconds is not None else record.seconds
        return cls(train, max(0.0, record.seconds - train), size or 0)

    def at(self, size: Optional[int]) -> float:
        scale = (size / self.size) ** 2 if size and self.size else 1.0
        return self.train * scale + self.rest


@dataclass
class EpochPlan:
    """The full phase's epochs (``full_epochs``, planned to ``budget`` seconds of ``clock`` when a
    budget is given) and the training sizes (``sizes``; ``None``: the model's size throughout)."""

    full_epochs: int
    frozen_epochs: int = 0
    budget: Optional[float] = None
    sizes: Optional[list[int]] = None
    clock: object = None
    cost: Optional[EpochCost] = None  # the last full epoch's
    frozen_cost: Optional[EpochCost] = None
    trained_at: dict = field(default_factory=dict)  # training size -> the last full epoch's training seconds there
    last: Optional[tuple[float, bool, Optional[int]]] = None  # the epoch under way: start, full?, size
    trained: Optional[float] = None  # when its training batches ended

    @property
    def total(self) -> int:
        return self.frozen_epochs + self.full_epochs

    @property
    def floor(self) -> int:
        """The last full epoch's training size: a plan that grows does not take the photos back down."""
        return self.cost.size if self.cost is not None else 0

    def timed(self, size: Optional[int]) -> bool:
        """Whether a full epoch has been timed at training size ``size`` (``None``: the model's)."""
        return (size or 0) in self.trained_at

    def train_size(self, full_epoch: Optional[int]) -> Optional[int]:
        """The training size of the full phase's epoch ``full_epoch`` (``None``: a frozen epoch)."""
        if not self.sizes:
            return None
        return self.sizes[0] if full_epoch is None else self.size_in_plan(full_epoch, self.full_epochs)

    def size_in_plan(self, epoch: int, epochs: int) -> int:
        """The training size of the full phase's ``epoch`` in a plan of ``epochs``: its share of
        ``sizes``, and never below the size already reached."""
        return max(size_at(self.sizes, epoch, epochs), self.floor)

    def full_epoch_timed(self, cost: EpochCost) -> None:
        """A full epoch's measured cost: the one the next are priced from."""
        self.cost = cost
        self.trained_at[cost.size] = cost.train

    def epoch_cost(self, size: Optional[int]) -> Optional[float]:
        """The predicted seconds of a full epoch at ``size``: the rest of the last one timed, and
        its training batches, as timed at that size, else scaled by pixels from the last epoch
        (with one size timed; an upper bound, since a batch has costs that do not shrink with its
        photos: loading, the optimizer's step) or drawn through the two timed sizes nearest to it,
        a fixed part plus one per pixel."""
        if self.cost is not None:
            if size in self.trained_at:
                return self.trained_at[size] + self.cost.rest
            if not size or len(self.trained_at) < 2:
                return self.cost.at(size)
            (a, ta), (b, tb) = sorted(self.trained_at.items(), key=lambda kv: (abs(kv[0] - size), kv[0]))[:2]
            per_pixel = (tb - ta) / (b * b - a * a)
            return max(ta + per_pixel * (size * size - a * a), 0.0) + self.cost.rest
        if self.frozen_cost is not None:
            frozen = self.frozen_cost
            return EpochCost(frozen.train * FROZEN_TO_FULL, frozen.rest, frozen.size).at(size)
        return None

    def replan(self, done: int, may_grow: bool = True, resumed: bool = False) -> bool:
        """Plan the full phase to fill what is left of the budget, ``done`` of its epochs run;
        whether the plan changed. Every process plans the same.

        At least one full epoch, and one more than ``done`` while the plan runs: a run that falls
        behind its plan (a machine slowed down under it) ends with one more epoch, its one-cycle
        schedule shortened to anneal in it, rather than stop with its learning rate high, and so
        overruns the budget by up to that epoch. A ``resumed`` run, whose earlier plan is not
        known, stops at once when no epoch fits. With ``may_grow`` false (the plan has run to its
        end: its learning rate has annealed) it may only stay or shrink, since more epochs would
        take the one-cycle schedule back up its curve."""
        if self.budget is None or self.epoch_cost(None) is None:
            return False
        left = self.budget - self.clock.seconds()
        if not self.sizes:  # every epoch costs the same
            planned = done + max(0, int(left // self.epoch_cost(None)))
        else:
            planned = done
            for n in range(done + 1, MAX_BUDGET_EPOCHS + 1):
                if sum(self.epoch_cost(self.size_in_plan(e, n)) for e in range(done, n)) > left:
                    break
                planned = n
        least = done if resumed or not may_grow else done + 1
        planned = min(MAX_BUDGET_EPOCHS, max(planned, least, 1))
        if not may_grow:
            planned = min(planned, self.full_epochs)
        planned = min(distributed.gather_objects(planned))
        changed = planned != self.full_epochs
        self.full_epochs = planned
        return changed


class FollowPlan(Callback):
    """Makes one fit follow the :class:`EpochPlan`: each training epoch at its size (the training
    loader's :class:`~flowerfast.data.augment.GrowingCrop`), each full-phase batch at its place
    in the planned one-cycle schedule, and the fit stopped when the plan is done. With a budget,
    the plan is redone before every epoch from what the one before cost, its validation and
    saving included, and after the first few batches of a full epoch at a size not yet timed (the
    first full epoch; with ``--progressive``, each new size): priced by pixels from a smaller size
    a larger one costs too much, and a plan cut short on that guess could end, its learning rate
    annealed, before the true cost was known."""

    order = 50  # before_batch: before fastai's ParamScheduler (60) reads pct_train

    def __init__(self, plan: EpochPlan, phase: str, crop, reporter: Reporter):
        self.plan, self.phase, self.crop, self.reporter = plan, phase, crop, reporter
        self.probing = False  # timing this epoch's first batches (see probe)

    @property
    def full(self) -> bool:
        return self.phase == "full"

    @property
    def plan_done(self) -> bool:
        """Whether the full phase's planned epochs have all run (its learning rate has annealed)."""
        return self.full and self.epoch >= self.plan.full_epochs

    def before_epoch(self):
        self.measure_last_epoch()
        if self.plan_done:
            raise CancelFitException()
        size = self.plan.train_size(self.epoch if self.full else None)
        if size is not None and self.crop is not None:
            self.crop.set_train_size(size)

    def before_train(self):  # not called for an epoch a resumed fit skips
        size = self.plan.train_size(self.epoch if self.full else None)
        self.plan.last = (time.perf_counter(), self.full, size)
        self.probing = self.full and self.plan.budget is not None and not self.plan.timed(size)

    def after_train(self):
        self.plan.trained = time.perf_counter()

    def before_batch(self):
        if not (self.training and self.full and self.plan.budget is not None):
            return
        if self.probing and self.iter == 1:
            self.probe_t0 = time.perf_counter()
        if self.probing and self.iter == PROBE_BATCHES + 1:
            self.probe()
        self.learn.pct_train = min(1.0, (self.epoch + self.iter / self.n_iter) / self.plan.full_epochs)

    def measure_last_epoch(self) -> None:
        """The epoch just ended, from its first batch to now, as the cost of its kind; a new plan."""
        if self.plan.last is None:
            return
        (start, full, size), now = self.plan.last, time.perf_counter()
        trained = self.plan.trained or now
        cost = EpochCost(train=trained - start, rest=now - trained, size=size or 0)
        self.plan.last = self.plan.trained = None
        if full:
            self.plan.full_epoch_timed(cost)
        else:
            self.plan.frozen_cost = cost
        self.announce(self.plan.replan(self.epoch if self.full else 0, may_grow=not self.plan_done))

    def probe(self) -> None:
        """A plan from this epoch's first batches, at a training size not yet timed: they stand
        for the last epoch timed, its training seconds at this size beside the rest of the last
        epoch timed (a frozen one's; with none, a quarter for validation and the epoch's end),
        until the epoch's end times it whole (:meth:`EpochPlan.full_epoch_timed`)."""
        seconds = (time.perf_counter() - self.probe_t0) / PROBE_BATCHES * self.n_iter
        before = self.plan.cost if self.plan.cost is not None else self.plan.frozen_cost
        rest = before.rest if before is not None else seconds / 4
        self.plan.full_epoch_timed(EpochCost(seconds, rest, self.plan.train_size(self.epoch) or 0))
        self.announce(self.plan.replan(self.epoch))

    def announce(self, changed: bool) -> None:
        if changed:
            self.reporter.epochs_started(self.plan.total)
            left = max(0.0, self.plan.budget - self.plan.clock.seconds())
            epochs = "1 epoch" if self.plan.total == 1 else f"{self.plan.total} epochs"
            self.reporter.stage(f"time budget: {epochs} planned, {math.ceil(left)} s left")
