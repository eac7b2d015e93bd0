"""Options shared by the commands that train (train, lr-find, compare), defined once.

Only names and help live here; every default comes from :data:`flowerfast.runs.config.DEFAULTS`, so
the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowerfast.runs.config import (
    CLASS_WEIGHTS,
    DEFAULT_LR_PRETRAINED,
    DEFAULT_LR_SCRATCH,
    DEVICES,
    MAX_LOADER_WORKERS,
    PRECISIONS,
)
from flowerfast.training.trackers import tracker_names


def choices(name: str, values) -> type[Enum]:
    """An option's closed list of words as the Enum typer lists in ``--help`` and checks, made from
    the library's own list, so the two cannot drift apart."""
    return Enum(name, {v: v for v in values}, type=str)


DeviceChoice = choices("DeviceChoice", DEVICES)
PrecisionChoice = choices("PrecisionChoice", PRECISIONS)
ClassWeightsChoice = choices("ClassWeightsChoice", CLASS_WEIGHTS)
TrackerChoice = choices("TrackerChoice", tracker_names())


def value(choice):
    """The plain string of a choice (what the library and config.json take); a list of choices
    becomes a list of strings."""
    if isinstance(choice, (list, tuple)):
        return [value(c) for c in choice]
    return getattr(choice, "value", choice)


Data = Annotated[
    Optional[Path],
    typer.Option(
        "--data",
        metavar="DIR",
        help="Folder of class folders (or train/ + valid/). Default: the embedded sample photos.",
        show_default=False,
    ),
]
Labels = Annotated[
    Optional[Path],
    typer.Option(
        "--labels",
        metavar="FILE",
        help="Labels from a table instead of class folders: a CSV (file and label columns, files relative to --data; "
        "an is_valid or split column presets the split), Label Studio's JSON, JSON-MIN or CSV export, "
        "or Roboflow's multi-label _classes.csv.",
        show_default=False,
    ),
]
MultiLabel = Annotated[
    bool,
    typer.Option(
        "--multi-label",
        help="Several labels per photo (separated by ; | , or spaces in a CSV): one sigmoid per class, "
        "thresholds tuned per class, F1 and mAP.",
    ),
]
Arch = Annotated[str, typer.Option("--arch", metavar="NAME", help="Architecture name (see `flowerfast archs`).")]
Epochs = Annotated[
    int, typer.Option("--epochs", metavar="N", help="Epochs of full training (after any frozen epochs).")
]
Lr = Annotated[
    Optional[str],
    typer.Option(
        "--lr",
        metavar="FLOAT|auto",
        help=f"Peak learning rate, or 'auto' to run lr-find first. Default: {DEFAULT_LR_PRETRAINED:g} pretrained, {DEFAULT_LR_SCRATCH:g} from scratch.",
        show_default=False,
    ),
]
Bs = Annotated[int, typer.Option("--bs", metavar="N", help="Batch size.")]
Size = Annotated[
    Optional[int],
    typer.Option(
        "--size",
        metavar="PIXELS",
        help="Image size in pixels (square crops). Default: the photos' own, from 64 to 224 (224 for most photos; 128 for the embedded sample).",
        show_default=False,
    ),
]
ValidPct = Annotated[
    float,
    typer.Option(
        "--valid-pct", metavar="FLOAT", help="Share of images held out for validation when the folder has no valid/."
    ),
]
Seed = Annotated[
    int, typer.Option("--seed", metavar="N", help="Random seed of the split, augmentation and initialisation.")
]
FreezeEpochs = Annotated[
    Optional[int],
    typer.Option(
        "--freeze-epochs",
        metavar="N",
        help="Epochs that train only the new head first. Default: 1 with pretrained weights, else 0.",
        show_default=False,
    ),
]
Pretrained = Annotated[
    Optional[bool],
    typer.Option(
        "--pretrained/--no-pretrained",
        help="Require ImageNet weights, or start from random weights. Default: use them if they can be had, else warn and start from random.",
        show_default=False,
    ),
]
Weights = Annotated[
    Optional[Path],
    typer.Option(
        "--weights",
        metavar="FILE",
        help="Local backbone state dict (.safetensors, or .pth read without unpickling code).",
        show_default=False,
    ),
]


def out_option(help: str):
    """``--out`` / ``-o PATH`` with no default shown: every command writes somewhere of its own
    (a run folder, a report folder, a file), which ``help`` says."""
    return typer.Option("--out", "-o", metavar="PATH", help=help, show_default=False)


Out = Annotated[Optional[Path], out_option("Run folder to create. Default: runs/<arch>-<timestamp>.")]
Device = Annotated[
    DeviceChoice, typer.Option("--device", help="Where to compute; auto: a CUDA GPU, else Apple's MPS, else the CPU.")
]
Workers = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        metavar="N",
        help=f"Data-loading processes. Default: 0 on the CPU, up to {MAX_LOADER_WORKERS} on a GPU.",
        show_default=False,
    ),
]
SplitFile = Annotated[
    Optional[Path],
    typer.Option(
        "--split-file",
        metavar="FILE",
        help="Reuse the split.csv of an earlier run, so two runs are scored on the same images.",
        show_default=False,
    ),
]
CleanTrainSample = Annotated[
    int,
    typer.Option(
        "--clean-train-sample",
        metavar="N",
        help="Training images scored each epoch without augmentation, for an honest train accuracy (0: off).",
    ),
]
Precision = Annotated[
    PrecisionChoice,
    typer.Option(
        "--precision",
        help="auto: bf16 autocast on a CPU with native bf16 and on GPUs that have it (fp16 with loss scaling on older GPUs), fp32 elsewhere.",
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile", help="Run the model through torch.compile (slow to start; pays off on long runs)."
    ),
]
Cache = Annotated[
    bool,
    typer.Option(
        "--cache/--no-cache",
        help="Keep decoded, resized photos in a cache folder so later epochs and runs skip decoding.",
    ),
]
CacheDir = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        help="Where the photo cache lives. Default: $FLOWERFAST_CACHE, else $XDG_CACHE_HOME/flowerfast/images, else ~/.cache/flowerfast/images.",
        show_default=False,
    ),
]
Stratify = Annotated[
    bool,
    typer.Option(
        "--stratify/--no-stratify",
        help="Split at random within each class, so every class with 2 or more images is on both sides; --no-stratify is fastai's plain RandomSplitter.",
    ),
]
ClassWeights = Annotated[
    ClassWeightsChoice,
    typer.Option(
        "--class-weights", help="balanced: weight the loss by inverse class frequency, for imbalanced classes."
    ),
]
Patience = Annotated[
    Optional[int],
    typer.Option(
        "--patience",
        help="Stop when validation accuracy has not improved for N epochs (recorded in summary.json). Default: never.",
        show_default=False,
        metavar="N",
    ),
]
SaveEvery = Annotated[
    int,
    typer.Option("--save-every", help="Also keep the model of every N-th epoch in checkpoints/ (0: off).", metavar="N"),
]
Keep = Annotated[
    Optional[int],
    typer.Option(
        "--keep",
        help="With --save-every: keep only the newest N of those models. Default: all.",
        show_default=False,
        metavar="N",
    ),
]
ConfigFile = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="Run the options of an earlier run again (its config.json); options given here override the file's.",
        show_default=False,
        metavar="CONFIG_JSON",
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable summary as JSON on stdout (progress goes to stderr).")
]
Tracker = Annotated[
    Optional[list[TrackerChoice]],
    typer.Option(
        "--tracker",
        help='Also log to an experiment tracker (repeat for several); each is an extra, e.g. pip install "flowerfast\\[mlflow]".',
        show_default=False,
    ),
]
Threads = Annotated[
    Optional[int],
    typer.Option(
        "--threads", metavar="N", help="Compute threads. Default: torch's choice (one per core).", show_default=False
    ),
]
SyncBn = Annotated[
    bool,
    typer.Option(
        "--sync-bn/--no-sync-bn",
        help="With several processes (torchrun): batch-norm statistics over every process's batch (SyncBatchNorm).",
    ),
]
BodyLr = Annotated[
    Optional[float],
    typer.Option(
        "--body-lr",
        metavar="FLOAT",
        help="Peak learning rate of the pretrained body in the full phase. Default: --lr / 40.",
        show_default=False,
    ),
]
MinScale = Annotated[
    Optional[float],
    typer.Option(
        "--min-scale",
        metavar="FLOAT",
        help="Smallest share of a photo's area that training's random crop keeps (1: whole photos). Default: 0.7, or 0.35 with --no-pretrained.",
        show_default=False,
    ),
]
FixedBn = Annotated[
    Optional[bool],
    typer.Option(
        "--fixed-bn/--no-fixed-bn",
        help="Keep the pretrained body's batch-norm statistics fixed while fine-tuning (and freeze the body whole in frozen epochs). Default: on with pretrained weights, off from random weights.",
        show_default=False,
    ),
]
TimeBudget = Annotated[
    Optional[str],
    typer.Option(
        "--time",
        metavar="DURATION",
        help="Train for this long (90s, 10m, 1.5h; a bare number is minutes): the epochs are planned after each one "
        "to fill the budget, the one-cycle schedule fitted to them; --epochs is then ignored.",
        show_default=False,
    ),
]
LabelSmoothing = Annotated[
    float,
    typer.Option("--label-smoothing", metavar="FLOAT", help="Share of each target spread over the other classes."),
]
WeightDecay = Annotated[
    float,
    typer.Option("--wd", metavar="FLOAT", help="AdamW's decoupled weight decay (fastai's wd, timm's --weight-decay)."),
]
Mixup = Annotated[
    float, typer.Option("--mixup", metavar="ALPHA", help="MixUp of training batches, Beta(ALPHA, ALPHA) (0: off).")
]
Cutmix = Annotated[
    float, typer.Option("--cutmix", metavar="ALPHA", help="CutMix of training batches, Beta(ALPHA, ALPHA) (0: off).")
]
Ema = Annotated[
    bool,
    typer.Option(
        "--ema/--no-ema",
        help="Also keep a moving average of the weights, validated each epoch; the best model is whichever is better.",
    ),
]
EmaDecay = Annotated[float, typer.Option("--ema-decay", metavar="FLOAT", help="The moving average's decay per step.")]
Progressive = Annotated[
    Optional[str],
    typer.Option(
        "--progressive",
        metavar="SIZES",
        help="Progressive resizing: training sizes, smallest first (64,96,128), each for an equal share of the epochs; "
        "validation and the model use the last.",
        show_default=False,
    ),
]
Augment = Annotated[
    str,
    typer.Option(
        "--augment",
        metavar="POLICY",
        help="standard (fastai's flips, rotation, zoom, warp, lighting), trivial (plus TrivialAugmentWide) "
        "or randaugment (plus RandAugment).",
    ),
]
BatchCrop = Annotated[
    bool,
    typer.Option(
        "--batch-crop/--photo-crop",
        help="Cut the random training crops of each batch at once from photos kept as tensors, instead of photo "
        "by photo: faster for small photos and networks on a CPU (standard augmentation only).",
    ),
]
Resume = Annotated[
    Optional[Path],
    typer.Option(
        "--resume",
        help="Continue an interrupted run from its checkpoint, to its planned last epoch, with its own options (only --data, --device, --workers, --threads, --cache and --cache-dir may be given).",
        show_default=False,
        metavar="RUN_DIR",
    ),
]


FIELD_NAMES = {"compile_": "compile", "tracker": "trackers"}
"""Command parameters whose ``TrainConfig`` field has another name."""


def given_options(ctx: typer.Context, exclude: tuple[str, ...] = ()) -> dict:
    """The options typed on the command line (not defaults), by ``TrainConfig`` field name,
    leaving out the parameters in ``exclude`` (those that are not training options): what a
    resumed run checks against the options it started with, and what overrides a ``--config``."""
    given = {}
    for param, typed in ctx.params.items():
        source = ctx.get_parameter_source(param)  # click's ParameterSource, or typer's copy of it
        if param not in exclude and getattr(source, "name", None) == "COMMANDLINE":
            given[FIELD_NAMES.get(param, param)] = value(typed)
    return given


def train_config(params: dict):
    """The ``TrainConfig`` of a command's parameters (``ctx.params``): each one that is an option
    of training, choices as their plain words; not yet validated (the library does that)."""
    import dataclasses

    from flowerfast.runs.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {FIELD_NAMES.get(k, k): v for k, v in params.items()}
    options = {name: value(v) for name, v in given.items() if name in fields}
    if options.get("trackers") is None:
        options["trackers"] = []
    return TrainConfig(**options)
