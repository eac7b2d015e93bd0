"""Options shared by the commands that train (train, lr-find, compare), defined once.

Only names and help live here; every default comes from :data:`flowerfast.config.DEFAULTS`, so
the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_LR_PRETRAINED, DEFAULT_LR_SCRATCH, MAX_LOADER_WORKERS

Data = Annotated[Optional[Path], typer.Option("--data", help="Folder of class folders (or train/ + valid/). Default: the embedded sample photos.", show_default=False)]
Arch = Annotated[str, typer.Option("--arch", help="Architecture name (see `flowerfast archs`).")]
Epochs = Annotated[int, typer.Option("--epochs", help="Epochs of full training (after any frozen epochs).")]
Lr = Annotated[Optional[str], typer.Option("--lr", help=f"Peak learning rate, or 'auto' to run lr-find first. Default: {DEFAULT_LR_PRETRAINED:g} pretrained, {DEFAULT_LR_SCRATCH:g} from scratch.", show_default=False)]
Bs = Annotated[int, typer.Option("--bs", help="Batch size.")]
Size = Annotated[int, typer.Option("--size", help="Image size in pixels (square crops).")]
ValidPct = Annotated[float, typer.Option("--valid-pct", help="Share of images held out for validation when the folder has no valid/.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed of the split, augmentation and initialisation.")]
FreezeEpochs = Annotated[Optional[int], typer.Option("--freeze-epochs", help="Epochs that train only the new head first. Default: 1 with pretrained weights, else 0.", show_default=False)]
Pretrained = Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Require ImageNet weights, or start from random weights. Default: use them if they can be had, else warn and start from random.", show_default=False)]
Weights = Annotated[Optional[Path], typer.Option("--weights", help="Local backbone state dict (.safetensors, or .pth read without unpickling code).", show_default=False)]
Out = Annotated[Optional[Path], typer.Option("--out", help="Run folder to create. Default: runs/<arch>-<timestamp>.", show_default=False)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
Workers = Annotated[Optional[int], typer.Option("--workers", help=f"Data-loading processes. Default: 0 on the CPU, up to {MAX_LOADER_WORKERS} on a GPU.", show_default=False)]
SplitFile = Annotated[Optional[Path], typer.Option("--split-file", help="Reuse the split.csv of an earlier run, so two runs are scored on the same images.", show_default=False)]
CleanTrainSample = Annotated[int, typer.Option("--clean-train-sample", help="Training images scored each epoch without augmentation, for an honest train accuracy (0: off).")]
Precision = Annotated[str, typer.Option("--precision", help="auto, fp32, bf16 or fp16. auto: bf16 autocast on a CPU with native bf16 and on GPUs that have it (fp16 with loss scaling on older GPUs), fp32 elsewhere.")]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="Run the model through torch.compile (slow to start; pays off on long runs).")]
Cache = Annotated[bool, typer.Option("--cache/--no-cache", help="Keep decoded, resized photos in a cache folder so later epochs and runs skip decoding.")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Where the photo cache lives. Default: $FLOWERFAST_CACHE, else $XDG_CACHE_HOME/flowerfast/images, else ~/.cache/flowerfast/images.", show_default=False)]
Stratify = Annotated[bool, typer.Option("--stratify/--no-stratify", help="Split at random within each class, so every class with 2 or more images is on both sides; --no-stratify is fastai's plain RandomSplitter.")]
ClassWeights = Annotated[str, typer.Option("--class-weights", help="none, or balanced: weight the loss by inverse class frequency, for imbalanced classes.", metavar="none|balanced")]
Patience = Annotated[Optional[int], typer.Option("--patience", help="Stop when validation accuracy has not improved for N epochs (recorded in summary.json). Default: never.", show_default=False, metavar="N")]
SaveEvery = Annotated[int, typer.Option("--save-every", help="Also keep the model of every N-th epoch in checkpoints/ (0: off).", metavar="N")]
Keep = Annotated[Optional[int], typer.Option("--keep", help="With --save-every: keep only the newest N of those models. Default: all.", show_default=False, metavar="N")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="Run the options of an earlier run again (its config.json); options given here override the file's.", show_default=False, metavar="CONFIG_JSON")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="Compute threads. Default: torch's choice (one per core).", show_default=False)]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run from its checkpoint, to its planned last epoch, with its own options (only --data, --device, --workers, --threads, --cache and --cache-dir may be given).", show_default=False, metavar="RUN_DIR")]


def given_options(ctx: typer.Context, names: dict[str, str]) -> dict:
    """The options typed on the command line (not defaults), as ``TrainConfig`` field names:
    what a resumed run must check against the options it started with. ``names`` maps the
    command's parameter names to field names."""
    given = {}
    for param, value in ctx.params.items():
        source = ctx.get_parameter_source(param)  # click's ParameterSource, or typer's copy of it
        if param in names and getattr(source, "name", None) == "COMMANDLINE":
            given[names[param]] = value
    return given
