"""Run configuration: one dataclass that holds every option of a training or lr-find run.

The same object is built by the CLI and by Python callers, validated in one place, and written to
``config.json`` so that a run can be understood (and repeated) from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import FlowerfastError

DEVICES = ("auto", "cpu", "cuda", "mps")
LR_AUTO = "auto"


@dataclass
class TrainConfig:
    """Every option of a run. ``None`` means "resolve a sensible default at run time".

    data: folder of class folders; ``None`` is the embedded sample set.
    lr: the head's peak learning rate: a number, ``"auto"`` (run lr-find first and take its valley
        suggestion), or ``None`` (2e-3 with pretrained weights, 3e-3 from scratch).
    freeze_epochs: epochs that train the new head with the pretrained body frozen before the
        full fine-tune; ``None`` means 1 when starting from pretrained weights, else 0.
    pretrained: ``True`` requires pretrained weights (error if they cannot be had), ``False``
        starts from random weights, ``None`` tries and falls back to random with a warning.
    weights: a local state dict (safetensors, or a torch ``.pth`` read with ``weights_only``)
        for the backbone, for machines with no internet.
    workers: data-loading processes; ``None`` means 0 on the CPU and up to 8 on a GPU.
    split_file: a ``split.csv`` of an earlier run, to train on exactly the same split (compare).
    clean_train_sample: training images (a fixed random sample) scored each epoch in eval mode
        without augmentation, for an honest train accuracy; 0 turns it off.
    """

    data: Optional[Path] = None
    arch: str = "resnet152"
    epochs: int = 10
    lr: Union[float, str, None] = None
    bs: int = 32
    size: int = 224
    valid_pct: float = 0.2
    seed: int = 42
    freeze_epochs: Optional[int] = None
    pretrained: Optional[bool] = None
    weights: Optional[Path] = None
    out: Optional[Path] = None
    device: str = "auto"
    workers: Optional[int] = None
    split_file: Optional[Path] = None
    clean_train_sample: int = 256
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every option a user can get wrong; raise FlowerfastError naming the option."""
        if self.epochs < 1:
            raise FlowerfastError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.freeze_epochs is not None and self.freeze_epochs < 0:
            raise FlowerfastError(f"--freeze-epochs must be 0 or more (got {self.freeze_epochs})")
        if not 0 < self.valid_pct < 1:
            raise FlowerfastError(f"--valid-pct must be between 0 and 1, exclusive (got {self.valid_pct})")
        if self.size < 32:
            raise FlowerfastError(f"--size must be at least 32 pixels (got {self.size})")
        if self.bs < 1:
            raise FlowerfastError(f"--bs must be at least 1 (got {self.bs})")
        if self.workers is not None and self.workers < 0:
            raise FlowerfastError(f"--workers must be 0 or more (got {self.workers})")
        if self.device not in DEVICES:
            raise FlowerfastError(f"--device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if self.clean_train_sample < 0:
            raise FlowerfastError(f"clean_train_sample must be 0 or more (got {self.clean_train_sample})")
        if self.split_file is not None and not Path(self.split_file).is_file():
            raise FlowerfastError(f"split file not found: {self.split_file}")
        self.lr = parse_lr(self.lr)
        if self.weights is not None:
            if self.pretrained is False:
                raise FlowerfastError("--weights and --no-pretrained contradict each other: pick one")
            if not Path(self.weights).is_file():
                raise FlowerfastError(f"weights file not found: {self.weights}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def parse_lr(value: Union[float, str, None]) -> Union[float, str, None]:
    """Accept a float, a numeric string such as ``"3e-4"``, ``"auto"`` or ``None``."""
    if value is None or isinstance(value, float):
        if isinstance(value, float) and not value > 0:
            raise FlowerfastError(f"--lr must be a positive number or 'auto' (got {value})")
        return value
    if isinstance(value, int):
        return parse_lr(float(value))
    text = str(value).strip().lower()
    if text == LR_AUTO:
        return LR_AUTO
    try:
        number = float(text)
    except ValueError:
        raise FlowerfastError(f"--lr must be a positive number or 'auto' (got {value!r})") from None
    return parse_lr(number)
