"""Experiment trackers people already run: TensorBoard, MLflow and Weights & Biases; one module
per tracker in this package, so a new tracker is a new file.

Each gets, for a training run: the resolved configuration as parameters, one point per epoch for
every figure of ``history.csv`` (step = epoch), and at the end the run's pictures and its best
model. Each is an optional extra (``pip install "flowerfast[mlflow]"``); asking for one that is
unknown or not installed is a one-line error before anything starts (:func:`check_trackers`,
called by :func:`flowerfast.training.session.prepare_run`).

A tracker's module (``tensorboard.py``, ``mlflow.py``, ``wandb.py``; its name is the tracker's)
defines ``TRACKER``, a :class:`~flowerfast.training.trackers._base.Tracker` subclass naming the
modules it needs and its extra. The names are read from the files alone (:func:`tracker_names`,
with :mod:`pkgutil`), so ``--help`` lists them without importing any tracker; modules whose name
starts with ``_`` are not trackers. The modules import their libraries absolutely and inside
their methods: ``import mlflow`` in ``flowerfast.training.trackers.mlflow`` is the real MLflow.

Why flowerfast logs its own epoch records rather than adding fastai's ``TensorBoardCallback`` or
``WandbCallback``: those log per batch with fastai's step counter, which starts again at every fit
(a run makes two, frozen then full) and at a resume, so one run's curves would overlap themselves;
the per-epoch records are the figures the run reports, identical in every tracker and in
``history.csv``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from flowerfast.core.errors import FlowerfastError, first_line
from flowerfast.runs.folder import EpochRecord
from flowerfast.training.trackers._base import Tracker, epoch_metrics, flat_params

__all__ = [
    "Tracker",
    "check_trackers",
    "close_trackers",
    "epoch_metrics",
    "flat_params",
    "open_trackers",
    "tracker_class",
    "tracker_names",
]


def tracker_names() -> tuple[str, ...]:
    """The trackers' names, in order, from the modules of this package (none is imported)."""
    return tuple(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def tracker_class(name: str) -> type[Tracker]:
    """The tracker called ``name`` (its module imported, not its library); unknown: a one-line error."""
    names = tracker_names()
    if name not in names:
        raise FlowerfastError(f"$trackers must be one of {', '.join(names)} (got {name!r})", parameters=("trackers",))
    cls = importlib.import_module(f"{__name__}.{name}").TRACKER
    if not (isinstance(cls, type) and issubclass(cls, Tracker)):
        raise TypeError(f"{__name__}.{name}.TRACKER must be a Tracker subclass, not {cls!r}")
    return cls


def check_trackers(names: Iterable[str]) -> list[str]:
    """The trackers asked for, each checked to be known and installed: an unknown one, or one
    whose library is missing, is one line (the latter naming the extra that brings it)."""
    if isinstance(names, str):
        raise FlowerfastError(
            f"$trackers must be a list of names, such as [{names!r}] (got {names!r})", parameters=("trackers",)
        )
    names = list(dict.fromkeys(names))
    for name in names:
        cls = tracker_class(name)
        try:
            for module in cls.requires:
                importlib.import_module(module)
        except ImportError:
            raise FlowerfastError(
                f'$trackers={name!r} needs the {cls.extra} extra: pip install "flowerfast[{cls.extra}]"',
                parameters=("trackers",),
            ) from None
    return names


def open_trackers(
    names: Sequence[str], run_dir: Path, config: dict[str, Any], history: Sequence[EpochRecord] = ()
) -> list[Tracker]:
    """Start each tracker named; a resumed run first logs the epochs it already has."""
    trackers = []
    for name in check_trackers(names):
        tracker = tracker_class(name)()
        try:
            tracker.start(Path(run_dir), config)
        except Exception as exc:  # the tracker's own configuration (URI, login, store) is wrong
            close_trackers(trackers, None)
            raise FlowerfastError(
                f"$trackers={name!r} could not start: {first_line(exc)}", parameters=("trackers",)
            ) from None
        for record in history:
            tracker.log_epoch(record)
        trackers.append(tracker)
    return trackers


def close_trackers(trackers: Sequence[Tracker], files: Optional[Sequence[Path]]) -> None:
    """Finish every tracker with ``files`` as artifacts; ``None``: the run failed."""
    for tracker in trackers:
        if files is None:
            tracker.fail()
        else:
            tracker.finish([Path(f) for f in files if Path(f).is_file()])
