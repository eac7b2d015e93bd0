"""What a run's options became on this machine and this data, decided once before the first epoch
(``resolve``) and written as ``config.json`` (``ResolvedConfig``, read back typed with
``ResolvedConfig.from_dict``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from flowerfast.runs.config import (
    DEFAULTS,
    LR_AUTO,
    MIN_SCALE_SCRATCH,
    PATH_OPTIONS,
    TrainConfig,
    body_lr,
    default_freeze_epochs,
    default_lr,
)

OPTIONS_BEFORE_RECORDED = {"stratify": False}
"""Options whose default changed once they were recorded: a ``config.json`` without one was
written by a version that always did this (splits were plain random before ``stratify``)."""


@dataclass
class ResolvedConfig:
    """What a run's options became on this machine and this data: ``config.json``.

    ``options`` is what was asked for; every other field is decided by :func:`resolve`. ``lr`` is
    ``None`` only for an lr-find run (which chooses no learning rate). ``bs`` is each process's
    batch; ``processes`` train together (``torchrun``), so a step averages ``effective_bs`` images.
    """

    options: TrainConfig
    data: str
    out: str
    size: int
    classes: list[str]
    n_train: int
    n_valid: int
    preset_split: bool
    skipped: list[dict[str, str]]
    bs: int
    device: str
    workers: int
    threads: int
    precision: str
    channels_last: bool
    compile: bool
    cache_dir: Optional[str]
    pretrained: bool
    weights_source: str
    warnings: list[str]
    versions: dict[str, str]
    clean_train_images: int = 0
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    class_weights: Optional[dict[str, float]] = None
    lr: Optional[float] = None
    lr_find: Optional[dict[str, float]] = None
    freeze_epochs: Optional[int] = None
    body_lr: Optional[float] = None
    processes: int = 1
    effective_bs: int = 0
    fixed_bn: bool = False
    min_scale: float = MIN_SCALE_SCRATCH

    @property
    def mixed_precision(self) -> bool:
        return self.precision != "fp32"

    @property
    def phases(self) -> list[tuple[str, int]]:
        """``[("frozen", n), ("full", epochs)]``: the one-cycle fits a training run makes, in order."""
        frozen = [("frozen", self.freeze_epochs)] if self.freeze_epochs else []
        return frozen + [("full", self.options.epochs)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResolvedConfig":
        """``config.json`` read back, typed: the inverse of :meth:`to_dict`. The options are taken
        as they were (not validated again: a run's weights file may be gone since); keys this
        version does not know are ignored, and a field a file from an older version lacks takes
        the value that version had (:data:`OPTIONS_BEFORE_RECORDED`), else its default (``None``
        where it has none)."""
        given = data.get("options") if isinstance(data.get("options"), dict) else data
        option_names = {f.name for f in dataclasses.fields(TrainConfig)}
        known = {**OPTIONS_BEFORE_RECORDED, **{k: v for k, v in given.items() if k in option_names}}
        known["trackers"] = list(known.get("trackers", DEFAULTS.trackers))  # never the defaults' own lists
        known["extra"] = dict(known.get("extra", DEFAULTS.extra))
        options = dataclasses.replace(DEFAULTS, **known)
        for name in PATH_OPTIONS:
            value = getattr(options, name)
            if value is not None and not isinstance(value, Path):
                setattr(options, name, Path(value))
        values = {}
        for f in dataclasses.fields(cls):
            if f.name == "options":
                continue
            if f.name in data:
                values[f.name] = data[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = None
        return cls(options=options, **values)

    def to_dict(self) -> dict[str, Any]:
        """``config.json``: the options as given, overlaid with what they resolved to (one flat dict)."""
        out = self.options.to_dict()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "options" and not (value is None and f.name in out):  # lr-find resolves no lr
                out[f.name] = value
        out["mixed_precision"] = self.mixed_precision
        out["pretrained_requested"] = self.options.pretrained
        out["precision_requested"] = self.options.precision
        out["options"] = self.options.to_dict()  # exactly as given: what --config replays
        return out


def resolve(
    options: TrainConfig,
    *,
    data,
    run_dir: Path,
    device,
    workers: int,
    threads: int,
    precision: str,
    channels_last: bool,
    cache_dir: Optional[Path],
    weights,
    versions: dict[str, str],
    training: bool = True,
    lr_finder=None,
    class_counts: Optional[dict] = None,
    class_weights: Optional[list[float]] = None,
    processes: int = 1,
    fixed_bn: bool = False,
) -> ResolvedConfig:
    """Decide everything the options left open, in one place, before the first epoch.

    ``data`` is the :class:`flowerfast.data.loaders.FlowerData`, ``weights`` the backbone's
    :class:`flowerfast.models.pretrained.WeightsInfo`. For a training run the learning rate is the one given,
    the default for the weights in use, or (``lr="auto"``) the valley suggestion of ``lr_finder``,
    a function that runs lr-find and returns its suggestions. An lr-find run (``training=False``)
    resolves no learning rate and no phases. ``processes``: how many processes train together.
    """
    pretrained = weights.pretrained
    lr = found = freeze = lower = None
    if training:
        if options.lr == LR_AUTO:
            if lr_finder is None:
                raise ValueError("lr='auto' needs an lr_finder")
            found = dict(lr_finder())
            lr = float(found["valley"])
        else:
            lr = float(options.lr) if options.lr is not None else default_lr(pretrained)
        freeze = options.freeze_epochs if options.freeze_epochs is not None else default_freeze_epochs(pretrained)
        lower = body_lr(lr, pretrained) if options.body_lr is None or not pretrained else float(options.body_lr)
    return ResolvedConfig(
        options=options,
        data=str(data.root),
        out=str(run_dir),
        size=data.size,
        classes=list(data.classes),
        n_train=data.n_train,
        n_valid=data.n_valid,
        preset_split=data.preset_split,
        skipped=[{"file": str(s.path), "reason": s.reason} for s in data.skipped],
        bs=data.bs,
        device=str(device),
        workers=workers,
        threads=threads,
        precision=precision,
        channels_last=channels_last,
        compile=options.compile,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        pretrained=pretrained,
        weights_source=weights.source,
        warnings=[weights.note] if weights.note else [],
        versions=versions,
        clean_train_images=clean_sample_size(options.clean_train_sample, data.n_train),
        class_counts=dict(class_counts or {}),
        class_weights=dict(zip(data.classes, class_weights)) if class_weights else None,
        lr=lr,
        lr_find=found,
        freeze_epochs=freeze,
        body_lr=lower,
        processes=processes,
        effective_bs=data.bs * processes,
        fixed_bn=fixed_bn,
        min_scale=data.min_scale,
    )


def clean_sample_size(requested: int, n_train: int) -> int:
    """How many training images are scored each epoch for the clean train accuracy: as asked, but
    at most a quarter of the training set. Scoring is a forward pass, about a third of a training
    step, so a quarter of the images costs under a tenth of an epoch; 256 images already pin an
    accuracy to a few points."""
    return min(requested, n_train // 4) if requested > 0 else 0
