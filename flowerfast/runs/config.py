"""Run configuration: the options a person gives (:class:`TrainConfig`, the one source of
defaults, read by the CLI too) and what they resolve to on this machine (:class:`ResolvedConfig`).

Resolution happens in one step, :func:`resolve`, before the first epoch: device, data-loading
processes, learning rate (a number, the default for the weights in use, or lr-find's valley), frozen
epochs, the body's learning rate, where the weights came from and any warnings, as data. The result
is written once to ``config.json``, so a run can be understood (and repeated) from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from flowerfast.core.errors import FlowerfastError
from flowerfast.runs.values import parse_duration, parse_sizes

DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_LOADER_WORKERS = 8
LR_AUTO = "auto"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CLASS_WEIGHTS = ("none", "balanced")
LR_FIND_ITERATIONS = 100
DEFAULT_LR_PRETRAINED = 2e-3
DEFAULT_LR_SCRATCH = 3e-3
BODY_LR_DIVISOR = 40
MIN_SCALE_PRETRAINED = 0.7
MIN_SCALE_SCRATCH = 0.35
INFERENCE_BATCH_SIZE = 64
"""Images per forward pass when a trained model predicts (predict, evaluate): large enough to keep a
GPU or the CPU's cores busy, small enough for a CPU's memory at 224 px."""
DEFAULT_TARGET_ACCURACY = 0.95
"""The accuracy on the answered photos that evaluate's suggested minimum confidence aims for."""
PATH_OPTIONS = ("data", "labels", "weights", "out", "split_file", "cache_dir")
AUGMENT_POLICIES = ("standard", "trivial", "randaugment")
DEFAULT_EMA_DECAY = 0.998
DEFAULT_WEIGHT_DECAY = 0.01
"""AdamW's decoupled weight decay, fastai's default (``Learner.wd``, ``true_wd``)."""
MAX_BUDGET_EPOCHS = 1000
"""The most epochs a ``time_budget`` plans: a bound on fastai's epoch loop, never a target."""


@dataclass
class TrainConfig:
    """Every option of a run. ``None`` means "resolve a sensible default at run time".

    data: folder of class folders; ``None`` is the embedded sample set.
    labels: a label file naming photos under ``data`` instead of class folders: a CSV of file and
        label columns, or Label Studio's or Roboflow's export (:mod:`flowerfast.data.labelfiles`).
    multi_label: each photo may carry several labels (or none): sigmoid outputs, one threshold
        per class tuned on the validation split, F1 and mAP (fastai's ``MultiCategoryBlock``).
    size: the side of the square images the network sees; ``None``: the photos' own, between 64
        and 224 pixels (:func:`flowerfast.data.folders.natural_size`: 224 for most photos, 128 for the
        embedded sample), so small photos are not upscaled at the cost of three times the compute.
    lr: the head's peak learning rate: a number, ``"auto"`` (run lr-find first and take its valley
        suggestion), or ``None`` (2e-3 with pretrained weights, 3e-3 from scratch).
    body_lr: the peak learning rate of the pretrained body in the full phase; ``None`` means
        ``lr / 40`` (:func:`body_lr`). From random weights the whole network trains at ``lr``.
    freeze_epochs: epochs that train the new head with the pretrained body frozen before the
        full fine-tune; ``None`` means 1 when starting from pretrained weights, else 0.
    pretrained: ``True`` requires pretrained weights (error if they cannot be had), ``False``
        starts from random weights, ``None`` tries and falls back to random with a warning.
    weights: a local state dict (safetensors, or a torch ``.pth`` read with ``weights_only``)
        for the backbone, for machines with no internet.
    workers: data-loading processes; ``None`` means 0 on the CPU and up to 8 on a GPU.
    split_file: a ``split.csv`` of an earlier run, to train on exactly the same split (compare).
    clean_train_sample: training images (a fixed random sample) scored each epoch in eval mode
        without augmentation, for an honest train accuracy; at most a quarter of the training
        set, so that it costs under a tenth of an epoch; 0 turns it off.
    precision: ``auto`` trains in bf16 autocast on a CPU with native bf16 and on a GPU that has
        it (fp16 with loss scaling on older GPUs), fp32 elsewhere; or ``fp32``, ``bf16``, ``fp16``.
    compile: run the model through ``torch.compile``.
    cache: keep decoded, resized photos in ``cache_dir`` (default: the user's cache folder), so
        later epochs and later runs skip JPEG decoding and the big resize.
    threads: torch's compute threads; ``None`` leaves torch's choice (one per core).
    stratify: split at random within each class (every class with two or more images on both
        sides); ``False`` is fastai's plain ``RandomSplitter``.
    class_weights: ``"none"``, or ``"balanced"`` to weight the loss by inverse class frequency.
    patience: stop when validation accuracy has not improved for this many epochs (``None``: never).
    save_every: also keep the model of every N-th epoch in ``checkpoints/`` (0: off).
    keep: how many of those to keep, the newest (``None``: all).
    trackers: experiment trackers to log to: ``tensorboard``, ``mlflow``, ``wandb`` (each an extra).
    sync_bn: in a job of several processes (``torchrun``), compute batch-norm statistics over the
        whole batch of every process (``SyncBatchNorm``) instead of each process's own; it costs a
        collective per batch-norm layer, and matters when a process's batch is small.
    min_scale: the smallest share of a photo's area that training's random crop keeps
        (``RandomResizedCrop``); 1 keeps whole photos, only squashed and flipped; ``None``: 0.7,
        or 0.35 with ``pretrained=False`` (:func:`default_min_scale`).
    fixed_bn: keep the pretrained body's batch-norm statistics fixed (eval mode) in training, and
        freeze the body whole in the frozen phase; ``None`` means so for pretrained weights (from
        random weights the statistics must be learnt).
    time_budget: seconds of training (``--time 10m``): after each epoch the full phase's epochs are
        planned to fill what is left and its one-cycle schedule is fitted to them
        (:mod:`flowerfast.training.budget`); ``epochs`` is then ignored.
    label_smoothing: the share of each target spread over the other classes (0: none).
    weight_decay: AdamW's decoupled weight decay (fastai's ``wd``, timm's ``--weight-decay``);
        networks trained from random weights on a few thousand photos may want more than the
        default's 0.01.
    mixup, cutmix: Beta(alpha, alpha) of MixUp and CutMix (0: off; both on: one or the other per
        batch, at random), training batches only (:mod:`flowerfast.training.mixing`).
    ema: validate and keep an exponential moving average of the weights too (decay ``ema_decay``
        per step); the best model is whichever of the two validates better.
    progressive: training image sizes, smallest first (e.g. ``[64, 96, 128]``), each for an equal
        share of the epochs; validation and the saved model use the last, which is ``size``.
    augment: ``standard`` (fastai's flips, rotation, zoom, warp, lighting), or that plus
        torchvision's ``trivial`` (TrivialAugmentWide) or ``randaugment`` policy.
    batch_crop: cut the training crops of each batch at once from photos kept as tensors, not
        photo by photo (:mod:`flowerfast.data.batchcrop`); the standard policy only.
    """

    data: Optional[Path] = None
    labels: Optional[Path] = None
    multi_label: bool = False
    arch: str = "tf_efficientnet_lite0"
    epochs: int = 10
    lr: Union[float, str, None] = None
    body_lr: Optional[float] = None
    bs: int = 32
    size: Optional[int] = None
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
    precision: str = "auto"
    compile: bool = False
    cache: bool = True
    cache_dir: Optional[Path] = None
    threads: Optional[int] = None
    stratify: bool = True
    class_weights: str = "none"
    patience: Optional[int] = None
    save_every: int = 0
    keep: Optional[int] = None
    trackers: list[str] = field(default_factory=list)
    sync_bn: bool = False
    fixed_bn: Optional[bool] = None
    min_scale: Optional[float] = None
    time_budget: Optional[float] = None
    label_smoothing: float = 0.0
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: bool = False
    ema_decay: float = DEFAULT_EMA_DECAY
    progressive: Optional[list[int]] = None
    augment: str = "standard"
    batch_crop: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every option a user can get wrong; raise FlowerfastError naming the option."""
        if self.epochs < 1:
            raise FlowerfastError(f"$epochs must be at least 1 (got {self.epochs})", parameters=("epochs",))
        if self.freeze_epochs is not None and self.freeze_epochs < 0:
            raise FlowerfastError(
                f"$freeze_epochs must be 0 or more (got {self.freeze_epochs})", parameters=("freeze_epochs",)
            )
        if not 0 < self.valid_pct < 1:
            raise FlowerfastError(
                f"$valid_pct must be between 0 and 1, exclusive (got {self.valid_pct})", parameters=("valid_pct",)
            )
        if self.size is not None and self.size < 32:
            raise FlowerfastError(f"$size must be at least 32 pixels (got {self.size})", parameters=("size",))
        if self.min_scale is not None and not 0 < self.min_scale <= 1:
            raise FlowerfastError(
                f"$min_scale must be above 0 and at most 1 (got {self.min_scale})", parameters=("min_scale",)
            )
        if self.body_lr is not None and not self.body_lr > 0:
            raise FlowerfastError(f"$body_lr must be a positive number (got {self.body_lr})", parameters=("body_lr",))
        if self.bs < 1:
            raise FlowerfastError(f"$bs must be at least 1 (got {self.bs})", parameters=("bs",))
        if self.workers is not None and self.workers < 0:
            raise FlowerfastError(f"$workers must be 0 or more (got {self.workers})", parameters=("workers",))
        if self.device not in DEVICES:
            raise FlowerfastError(
                f"$device must be one of {', '.join(DEVICES)} (got {self.device!r})", parameters=("device",)
            )
        if self.precision not in PRECISIONS:
            raise FlowerfastError(
                f"$precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})", parameters=("precision",)
            )
        if self.threads is not None and self.threads < 1:
            raise FlowerfastError(f"$threads must be at least 1 (got {self.threads})", parameters=("threads",))
        if self.class_weights not in CLASS_WEIGHTS:
            raise FlowerfastError(
                f"$class_weights must be one of {', '.join(CLASS_WEIGHTS)} (got {self.class_weights!r})",
                parameters=("class_weights",),
            )
        if self.patience is not None and self.patience < 1:
            raise FlowerfastError(f"$patience must be at least 1 (got {self.patience})", parameters=("patience",))
        if self.save_every < 0:
            raise FlowerfastError(f"$save_every must be 0 or more (got {self.save_every})", parameters=("save_every",))
        if self.keep is not None and self.keep < 1:
            raise FlowerfastError(f"$keep must be at least 1 (got {self.keep})", parameters=("keep",))
        if self.clean_train_sample < 0:
            raise FlowerfastError(
                f"$clean_train_sample must be 0 or more (got {self.clean_train_sample})",
                parameters=("clean_train_sample",),
            )
        self.lr = parse_lr(self.lr)
        self.check_recipe()
        self.check_files()
        return self

    def check_recipe(self) -> None:
        """The recipe options (time budget, smoothing, mixing, weight average, augmentation, sizes) in range."""
        self.time_budget = parse_duration(self.time_budget)
        if not 0 <= self.label_smoothing < 1:
            raise FlowerfastError(
                f"$label_smoothing must be at least 0 and below 1 (got {self.label_smoothing})",
                parameters=("label_smoothing",),
            )
        if not 0 <= self.weight_decay < 1:
            raise FlowerfastError(
                f"$weight_decay must be at least 0 and below 1 (got {self.weight_decay})", parameters=("weight_decay",)
            )
        for name in ("mixup", "cutmix"):
            if not getattr(self, name) >= 0:
                raise FlowerfastError(
                    f"${name} must be 0 (off) or a positive alpha (got {getattr(self, name)})", parameters=(name,)
                )
        if not 0 < self.ema_decay < 1:
            raise FlowerfastError(
                f"$ema_decay must be between 0 and 1 (got {self.ema_decay})", parameters=("ema_decay",)
            )
        if self.augment not in AUGMENT_POLICIES:
            raise FlowerfastError(
                f"$augment must be one of {', '.join(AUGMENT_POLICIES)} (got {self.augment!r})", parameters=("augment",)
            )
        if self.batch_crop and self.augment != "standard":
            raise FlowerfastError(
                f"$batch_crop works with the standard augmentation only: $augment {self.augment} transforms each "
                "photo on its own",
                parameters=("batch_crop", "augment"),
            )
        self.progressive = parse_sizes(self.progressive)
        if self.progressive and self.size is not None and self.progressive[-1] != self.size:
            raise FlowerfastError(
                f"$progressive must end at $size ({self.size}), the size the model is validated and saved at "
                f"(got {','.join(map(str, self.progressive))})",
                parameters=("progressive", "size"),
            )

    def check_files(self) -> None:
        """The files the options name exist (and a weights file is not asked for from scratch)."""
        if self.labels is not None and not Path(self.labels).is_file():
            raise FlowerfastError(f"labels file not found: {self.labels}")
        if self.split_file is not None and not Path(self.split_file).is_file():
            raise FlowerfastError(f"split file not found: {self.split_file}")
        if self.weights is not None:
            if self.pretrained is False:
                raise FlowerfastError(
                    "$weights and $pretrained=False contradict each other: pick one",
                    parameters=("weights", "pretrained"),
                )
            if not Path(self.weights).is_file():
                raise FlowerfastError(f"weights file not found: {self.weights}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def with_options(self, **options) -> "TrainConfig":
        """A copy with ``options`` applied (paths coerced to ``Path``), validated.

        ``train(config, epochs=3)`` and ``compare(archs, config, size=64)`` both go through here, so
        an unknown keyword is refused the same way everywhere.
        """
        unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        config = dataclasses.replace(self, **{"extra": dict(self.extra), "trackers": list(self.trackers), **options})
        for name in PATH_OPTIONS:
            value = getattr(config, name)
            if value is not None and not isinstance(value, Path):
                setattr(config, name, Path(value))
        return config.validate()


DEFAULTS = TrainConfig()


def read_options(path: Path | str) -> TrainConfig:
    """The options a run was started with, from its ``config.json`` (or any JSON object of
    ``TrainConfig`` fields), to run it again: ``train --config runs/x/config.json``. The output
    folder is not taken (a replay writes a new run); unknown keys are ignored, so a file written
    by another flowerfast version still replays what both know."""
    import json

    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FlowerfastError(f"config file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise FlowerfastError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise FlowerfastError(f"{path} is not a flowerfast config (expected a JSON object)")
    given = (
        data.get("options")
        if isinstance(data.get("options"), dict)
        else {
            **data,
            "pretrained": data.get("pretrained_requested", data.get("pretrained")),
            "precision": data.get("precision_requested", data.get("precision", "auto")),
        }
    )
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"out", "extra"}
    try:
        return make_config(None, **{k: v for k, v in given.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise FlowerfastError(f"{path} holds an option flowerfast cannot use: {exc}") from None


"""The defaults of every option, for the CLI and the library functions that take single options."""


def make_config(config: Optional[TrainConfig] = None, **options) -> TrainConfig:
    """``config`` (or the defaults) with ``options`` applied, validated."""
    return (config or TrainConfig()).with_options(**options)


def default_lr(pretrained: bool) -> float:
    """The head's peak learning rate when none is given: lower for pretrained weights, which are
    already close to a good solution."""
    return DEFAULT_LR_PRETRAINED if pretrained else DEFAULT_LR_SCRATCH


def default_freeze_epochs(pretrained: bool) -> int:
    """One epoch of head-only training first protects pretrained features from the large, random
    gradients of a new head; from random weights there is nothing to protect."""
    return 1 if pretrained else 0


def body_lr(lr: float, pretrained: bool) -> float:
    """The pretrained body's peak learning rate, ``lr / 40`` (fastai's ``slice(body_lr, lr)``).

    Why 40: fine-tuning EfficientNet-Lite0 on the shared flowers (128 px, head at 2e-3), a body
    at 1e-4 or 2e-4 lost 15 to 20 points of validation accuracy around the schedule's peak and
    spent the following epochs recovering them; at 5e-5 it gained through the peak. fastai's
    habit of ``lr / 100`` also keeps the body safe, only slower to adapt.
    """
    return lr / BODY_LR_DIVISOR if pretrained else lr


def default_min_scale(pretrained: Optional[bool]) -> float:
    """The random crop's smallest share of a photo: 0.7 for a fine-tune, 0.35 from random weights.

    Why milder for a fine-tune: pretrained features already know flowers at many scales, and a
    small photo (128 px) cropped to a third of its area is a blur of a few petals; on the shared
    flowers crops of at least 0.7 of the area reached 76.4% against 74.7% with 0.35
    (EfficientNet-Lite0, same epochs and learning rates). From random weights the stronger crops are the regularisation a network needs.
    """
    return MIN_SCALE_SCRATCH if pretrained is False else MIN_SCALE_PRETRAINED


def crop_min_scale(options: TrainConfig) -> float:
    """The training crop's smallest share for ``options``: as given, else :func:`default_min_scale`."""
    return options.min_scale if options.min_scale is not None else default_min_scale(options.pretrained)


def parse_lr(value: Union[float, str, None]) -> Union[float, str, None]:
    """Accept a float, a numeric string such as ``"3e-4"``, ``"auto"`` or ``None``."""
    if value is None or isinstance(value, float):
        if isinstance(value, float) and not value > 0:
            raise FlowerfastError(f"$lr must be a positive number or 'auto' (got {value})", parameters=("lr",))
        return value
    if isinstance(value, int):
        return parse_lr(float(value))
    text = str(value).strip().lower()
    if text == LR_AUTO:
        return LR_AUTO
    try:
        number = float(text)
    except ValueError:
        raise FlowerfastError(f"$lr must be a positive number or 'auto' (got {value!r})", parameters=("lr",)) from None
    return parse_lr(number)
