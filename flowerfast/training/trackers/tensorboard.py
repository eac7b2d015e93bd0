"""TensorBoard: event files in ``<run>/tensorboard``; the ``tensorboard`` extra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from flowerfast.runs.folder import EpochRecord
from flowerfast.training.trackers._base import Tracker, epoch_metrics


class TensorBoardTracker(Tracker):
    """Event files in ``<run>/tensorboard``: scalars per epoch, the configuration as text and the
    pictures as images (TensorBoard stores no other files; the model stays in the run folder)."""

    requires = ("tensorboard",)
    extra = "tensorboard"

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log_epoch(self, record: EpochRecord) -> None:
        for name, value in epoch_metrics(record).items():
            self.writer.add_scalar(name, value, record.epoch)
        self.writer.flush()

    def finish(self, files: Sequence[Path]) -> None:
        import numpy as np
        from PIL import Image

        for path in files:
            if path.suffix == ".png":
                with Image.open(path) as im:
                    self.writer.add_image(path.stem, np.asarray(im.convert("RGB")), dataformats="HWC")
        self.writer.close()


TRACKER = TensorBoardTracker
