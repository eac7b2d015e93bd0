"""An exponential moving average of the weights (``--ema``), validated each epoch beside them.

Why: late in training the weights wander around a minimum from batch to batch; their average over
the last few hundred steps usually sits nearer its centre and validates better (timm's ``ModelEma``,
Polyak averaging). The average costs one copy of the network and one extra forward pass over the
validation batches, made in fastai's own validation pass (the photos are loaded and transformed
once for both networks); the best model kept is whichever of the two validates better
(:class:`~flowerfast.training.keeping.SaveBestModel`).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from fastai.callback.core import Callback

from flowerfast.hardware.devices import autocast_dtype
from flowerfast.hardware.distributed import sum_counts, unwrapped


class WeightAverage(Callback):
    """Keeps ``average``, the moving average of the model's weights (and batch-norm statistics),
    updated after every optimizer step with decay ``min(decay, (1 + t) / (10 + t))`` at step ``t``,
    so the first steps do not anchor it to the starting weights. Each epoch it answers the batches
    of fastai's validation pass beside the model, and its ``score`` (accuracy, or mAP for
    multi-label) is ready before :class:`EpochStats` records the epoch. One object serves every
    fit of a run; ``state`` resumes it from a checkpoint."""

    order = 57  # after_epoch: after CleanTrainAccuracy (55), before EpochStats (60)

    def __init__(self, decay: float, precision: str, multi_label: bool, state: Optional[dict] = None):
        self.decay, self.precision, self.multi_label = decay, precision, multi_label
        self.state, self.steps = state, int(state["steps"]) if state else 0
        self.average: Optional[torch.nn.Module] = None
        self.score: Optional[float] = None

    def before_fit(self):
        model = unwrapped(self.learn.model)
        if self.average is None:
            self.average = copy.deepcopy(model).eval().requires_grad_(False)
            if self.state is not None:
                self.average.load_state_dict(self.state["model"])
        self.pairs = list(zip(self.average.state_dict().values(), model.state_dict().values()))

    def after_step(self):
        self.steps += 1
        keep = min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for mine, theirs in self.pairs:
                if mine.is_floating_point():
                    mine.lerp_(theirs.detach(), 1 - keep)
                else:
                    mine.copy_(theirs)

    def before_epoch(self):
        self.score, self.trained = None, False
        self._correct, self._n, self._valid = 0, 0, []

    def before_train(self):  # not called for an epoch a resumed fit skips
        self.trained = True

    def after_batch(self):
        """In validation: the average answers the batch the model has just answered."""
        if self.training or not self.trained:
            return
        xb, yb = self.learn.xb[0].as_subclass(torch.Tensor), self.learn.yb[0].as_subclass(torch.Tensor)
        dtype = autocast_dtype(self.precision) or torch.float32
        with torch.no_grad(), torch.autocast(xb.device.type, dtype=dtype, enabled=self.precision != "fp32"):
            out = self.average(xb).float()
        if self.multi_label:
            self._valid.append((torch.sigmoid(out).cpu(), yb.cpu()))
        else:
            self._correct, self._n = self._correct + (out.argmax(dim=-1) == yb).sum(), self._n + len(yb)

    def after_epoch(self):
        if not self.trained:
            return
        if self.multi_label:
            from flowerfast.training.callbacks import multi_label_scores

            self.score = multi_label_scores(self._valid)[1]
            return
        correct, n = sum_counts([int(self._correct), self._n])
        self.score = correct / n if n else None

    def state_dict(self) -> Optional[dict]:
        """What a checkpoint keeps: the average and its step count."""
        if self.average is None:
            return self.state
        return {
            "model": {k: v.detach().to("cpu").clone() for k, v in self.average.state_dict().items()},
            "steps": self.steps,
        }
