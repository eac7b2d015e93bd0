"""What every tracker is (:class:`Tracker`) and the figures each one logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

from flowerfast.runs.folder import EpochRecord

METRICS = ("train_loss", "train_accuracy_aug", "train_accuracy_clean", "valid_loss", "valid_accuracy", "lr", "seconds")


class Tracker:
    """One tracker for one run: ``start`` with the configuration, ``log_epoch`` per epoch, then
    ``finish`` with the files to keep (pictures, best model), or ``fail``.

    ``requires``: the modules the tracker imports (checked before a run starts); ``extra``: the
    flowerfast extra that brings them (``pip install "flowerfast[<extra>]"``).
    """

    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None: ...

    def log_epoch(self, record: EpochRecord) -> None: ...

    def finish(self, files: Sequence[Path]) -> None: ...

    def fail(self) -> None:
        self.finish([])


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """The resolved configuration as flat string parameters (``options.seed``, ``lr``, ...)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    walk("", config)
    return {k: v[:500] for k, v in out.items()}


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    return {name: float(getattr(record, name)) for name in METRICS if getattr(record, name) is not None}
