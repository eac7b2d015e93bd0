"""How long-running work tells the outside world what it is doing, without printing.

The library calls a :class:`Reporter`; the default one does nothing, so ``import flowerfast``
callers get silence and return values. The CLI passes a reporter that draws rich progress bars in a
terminal, or one clean line per epoch in logs and CI (``flowerfast.cli.output``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from pathlib import Path

    from flowerfast.runs.folder import EpochRecord
    from flowerfast.runs.resolved import ResolvedConfig


class Reporter:
    """Receives progress events. Subclass and override what you need; every method is optional."""

    def stage(self, text: str) -> None:
        """A step of the run starts (scanning data, loading weights, ...)."""

    def run_ready(self, config: "ResolvedConfig") -> None:
        """Data, model and run folder are ready; ``config`` is what ``config.json`` holds."""

    def epochs_started(self, total_epochs: int) -> None:
        """Training is about to run ``total_epochs`` epochs."""

    def batches_started(self, kind: str, total: int, epoch: Optional[int] = None) -> None:
        """A loop over ``total`` batches starts; ``kind`` is "train", "valid" or "lr-find"."""

    def batch_done(self, kind: str) -> None:
        """One batch of the current loop is done."""

    def epoch_done(self, record: EpochRecord, best: bool) -> None:
        """An epoch finished; ``best`` says whether it set a new best validation accuracy."""

    def checkpoint_saved(self, epoch: int, path: "Path") -> None:
        """``path`` now holds the resumable state after ``epoch`` completed epochs."""

    def finished(self) -> None:
        """The long-running part is over (close bars)."""


class NullReporter(Reporter):
    """The library's default: reports nothing."""
