"""fastai callbacks, one concern each: epoch statistics, clean train accuracy, progress reporting,
the lr-find range test. (What the run keeps at each epoch's end is in
:mod:`flowerfast.training.keeping`, the precision and memory-layout callbacks in
:mod:`flowerfast.training.precision`, the fine-tuning one in :mod:`flowerfast.training.finetune`.)"""

from __future__ import annotations

import copy
import math
import time
from typing import Optional

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.schedule import LRFinder, ParamScheduler

from flowerfast.core.progress import Reporter
from flowerfast.hardware.distributed import gather_objects, sum_counts, unwrapped
from flowerfast.runs.folder import EpochRecord


class EpochStats(Callback):
    """Exact per-epoch means of loss and accuracy, on training and validation batches.

    fastai's Recorder logs a smoothed training loss and no training accuracy; the flower report
    wants both per epoch, so they are counted here batch by batch. The sums stay on the device
    until the epoch ends, so on a GPU counting adds no wait for the batch to finish. In a job of
    several processes each counts its own shard and the sums are added up over the processes, so
    every process records the same figures, over every image of the epoch.
    """

    order = 60

    def __init__(self, phase: str = "train", epoch_offset: int = 0, start_epoch: int = 0, multi_label: bool = False):
        self.phase, self.epoch_offset, self.start_epoch = phase, epoch_offset, start_epoch
        self.multi_label = multi_label
        self.records: list[EpochRecord] = []
        self.record: Optional[EpochRecord] = None  # this epoch's, for the callbacks after this one
        self.diverged_at: Optional[int] = None

    def before_epoch(self):
        self.record = None
        self._t0, self._train_seconds = time.perf_counter(), None
        self._sums = {True: [0.0, 0, 0], False: [0.0, 0, 0]}  # training? -> [loss*n, correct, n]
        self._valid = []  # multi-label: the validation batches' probabilities and targets, for F1 and mAP

    def before_train(self):
        self._train_t0 = time.perf_counter()

    def after_train(self):
        self._train_seconds = time.perf_counter() - self._train_t0

    def after_batch(self):
        y = self.learn.yb[0]
        n = y.shape[0]
        s = self._sums[self.training]
        s[0] = s[0] + self.learn.loss.detach().float() * n  # tensors: summed on the device
        pred = self.learn.pred.detach()
        if self.multi_label:  # per-label accuracy at 0.5 (fastai's accuracy_multi); mixed targets at their half
            probs = torch.sigmoid(pred.float())
            s[1] = s[1] + ((probs >= 0.5) == (y >= 0.5)).float().mean(dim=1).sum()
            if not self.training:
                self._valid.append((probs.cpu(), y.cpu()))
        else:  # a mixed batch's targets are class shares: its photo's larger share is the label
            s[1] = s[1] + (pred.argmax(dim=-1) == (y.argmax(dim=-1) if y.ndim == 2 else y)).sum()
        s[2] += n

    def multi_label_scores(self) -> tuple[Optional[float], Optional[float]]:
        """The epoch's validation macro F1 at 0.5 and mAP over every process's photos (multi-label)."""
        return multi_label_scores(self._valid)

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # done before a resume: fastai skipped it
            return
        clean = getattr(self.learn, "clean_train_accuracy", None)  # that callback, when the fit has it
        tl, tc, tn, vl, vc, vn = sum_counts([float(v) for side in (True, False) for v in self._sums[side]])
        f1, mean_ap = self.multi_label_scores() if self.multi_label else (None, None)
        average = getattr(self.learn, "weight_average", None)  # that callback, when the fit has it
        record = EpochRecord(
            epoch=self.epoch_offset + self.epoch + 1,
            phase=self.phase,
            train_loss=tl / max(tn, 1),
            train_accuracy_aug=tc / max(tn, 1),
            valid_loss=vl / max(vn, 1),
            valid_accuracy=vc / max(vn, 1),
            lr=float(self.opt.hypers[-1]["lr"]),
            seconds=time.perf_counter() - self._t0,
            train_accuracy_clean=clean.accuracy if clean is not None else None,
            valid_f1=f1,
            valid_map=mean_ap,
            ema_valid_score=average.score if average is not None else None,
            train_seconds=self._train_seconds,
        )
        if not (math.isfinite(record.train_loss) and math.isfinite(record.valid_loss)):
            # the weights are now NaN or infinite: record nothing, keep the last good best model
            self.diverged_at = record.epoch
            raise CancelFitException()
        self.records.append(record)
        self.record = record


def multi_label_scores(batches: list) -> tuple[Optional[float], Optional[float]]:
    """Macro F1 at 0.5 and mAP of ``(probabilities, targets)`` batches gathered from every process
    (``None, None`` when no process has any)."""
    from flowerfast.core.multilabel import score_multi_label

    gathered = [b for part in gather_objects(batches) for b in part]
    if not gathered:
        return None, None
    probs, targets = (torch.cat([b[k] for b in gathered]).numpy() for k in (0, 1))
    scores = score_multi_label(probs, targets, range(probs.shape[1]))
    return scores.macro_f1, scores.mean_average_precision or 0.0


class CleanTrainAccuracy(Callback):
    """Accuracy on a fixed, un-augmented sample of the training images, in eval mode, each epoch.

    The accuracy on augmented batches in training mode (dropout on) understates how well the model
    fits its training data; this figure is the one to compare with validation accuracy. It runs
    before :class:`EpochStats`, which reads its ``accuracy`` (``None`` before the first epoch).
    """

    order = 55

    def __init__(self, dl, precision: str = "fp32", start_epoch: int = 0, reporter: Optional[Reporter] = None):
        self.dl, self.precision, self.start_epoch, self.reporter = dl, precision, start_epoch, reporter

    def before_fit(self):
        self.accuracy: Optional[float] = None

    def after_epoch(self):
        from flowerfast.training.learner import predict_batches

        if self.epoch < self.start_epoch:  # done before a resume: fastai skipped it
            return
        correct, n = 0, 0
        if self.dl is not None:  # in a job of several processes, this one's share of the sample
            probs, targets = predict_batches(
                unwrapped(self.learn.model), self.dl, self.precision, reporter=self.reporter, kind="clean-train"
            )
            if targets.ndim == 2:  # multi-label: per-label accuracy at 0.5
                correct, n = float(((probs >= 0.5) == targets.bool()).float().mean(dim=1).sum()), len(targets)
            else:
                correct, n = int((probs.argmax(dim=-1) == targets).sum()), len(targets)
        correct, n = sum_counts([correct, n])
        self.accuracy = correct / n if n else None


class ReportProgress(Callback):
    """Forwards batch progress to a :class:`Reporter` (in place of fastai's own progress bars)."""

    order = 61

    def __init__(self, reporter: Reporter, epoch_offset: int = 0):
        self.reporter, self.epoch_offset = reporter, epoch_offset

    def before_train(self):
        self.reporter.batches_started("train", len(self.dls.train), self.epoch_offset + self.epoch + 1)

    def before_validate(self):
        self.reporter.batches_started("valid", len(self.dls.valid), self.epoch_offset + self.epoch + 1)

    def after_batch(self):
        self.reporter.batch_done("train" if self.training else "valid")


class LRFindProgress(Callback):
    """Progress for ``lr_find``: one bar over its iterations."""

    order = 61

    def __init__(self, reporter: Reporter, total: int):
        self.reporter, self.total = reporter, total

    def before_fit(self):
        self.reporter.batches_started("lr-find", self.total)

    def after_batch(self):
        if self.training:
            self.reporter.batch_done("lr-find")


class KeepWeightsLRFinder(LRFinder):
    """fastai's ``LRFinder``, putting the weights and optimizer state back from memory.

    fastai's saves them to a file in rank 0 only and loads them behind a barrier only rank 0
    reaches, so in a job of several processes the others would wait for ever; kept in memory, every
    process restores its own copy (the same one: DDP starts every process from rank 0's weights).
    """

    def before_fit(self):
        ParamScheduler.before_fit(self)
        model = unwrapped(self.learn.model)
        self.saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.saved_opt = copy.deepcopy(self.learn.opt.state_dict())
        self.best_loss = float("inf")

    def after_fit(self):
        self.learn.opt.zero_grad()
        unwrapped(self.learn.model).load_state_dict(self.saved_model)
        self.learn.opt.load_state_dict(self.saved_opt)
