"""How long-running work tells the outside world what it is doing, without printing.

The library calls a :class:`Reporter`; the default one does nothing, so ``import flowerfast``
callers get silence and return values. The CLI passes a reporter that draws rich progress bars in a
terminal, or one clean line per epoch in logs and CI (``flowerfast.cli.output``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class EpochRecord:
    """One row of ``history.csv``: what one epoch did.

    ``train_accuracy_aug`` is measured on the augmented training batches as the model saw them
    (in training mode, dropout on), so it is not comparable with ``valid_accuracy`` one to one.
    ``train_accuracy_clean`` is measured after the epoch in eval mode on a fixed, un-augmented
    sample of the training images: the honest figure to set against ``valid_accuracy``.
    ``lr`` is the head's learning rate at the end of the epoch.
    """

    epoch: int
    phase: str
    train_loss: float
    train_accuracy_aug: float
    valid_loss: float
    valid_accuracy: float
    lr: float
    seconds: float
    train_accuracy_clean: Optional[float] = None

    FIELDS = ("epoch", "phase", "train_loss", "train_accuracy_aug", "train_accuracy_clean", "valid_loss",
              "valid_accuracy", "lr", "seconds")

    def as_row(self) -> list:
        """Values for ``history.csv``, floats to 6 significant digits."""
        return [_round(getattr(self, f)) for f in self.FIELDS]


def _round(value):
    return float(f"{value:.6g}") if isinstance(value, float) else ("" if value is None else value)


class Reporter:
    """Receives progress events. Subclass and override what you need; every method is optional."""

    def stage(self, text: str) -> None:
        """A step of the run starts (scanning data, loading weights, ...)."""

    def run_ready(self, resolved: dict) -> None:
        """Data, model and run folder are ready; ``resolved`` is what ``config.json`` will hold."""

    def epochs_started(self, total_epochs: int) -> None:
        """Training is about to run ``total_epochs`` epochs."""

    def batches_started(self, kind: str, total: int, epoch: Optional[int] = None) -> None:
        """A loop over ``total`` batches starts; ``kind`` is "train", "valid" or "lr-find"."""

    def batch_done(self, kind: str) -> None:
        """One batch of the current loop is done."""

    def epoch_done(self, record: EpochRecord, best: bool) -> None:
        """An epoch finished; ``best`` says whether it set a new best validation accuracy."""

    def finished(self) -> None:
        """The long-running part is over (close bars)."""


class NullReporter(Reporter):
    """The library's default: reports nothing."""
