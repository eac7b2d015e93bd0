"""The learning-rate range test (fastai's ``lr_find``): suggestions, a plot and the raw curve."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import TrainConfig
from .progress import NullReporter, Reporter
from .runs import write_csv, write_json

SUGGESTION_NAMES = ("valley", "slide", "minimum", "steep")
LR_FIND_ITERATIONS = 100


@dataclass
class LRFindResult:
    """What ``lr_find`` found. ``suggestions`` maps valley/slide/minimum/steep to learning rates;
    ``lrs`` and ``losses`` are the (smoothed) curve; the paths exist once :func:`save_lr_find` ran."""

    suggestions: dict[str, float]
    lrs: list[float]
    losses: list[float]
    plot: Optional[Path] = None
    csv: Optional[Path] = None
    run_dir: Optional[Path] = None
    config: dict = field(default_factory=dict)

    @property
    def valley(self) -> float:
        return self.suggestions["valley"]


def run_lr_find(learn, reporter: Optional[Reporter] = None, num_it: int = LR_FIND_ITERATIONS) -> LRFindResult:
    """Run fastai's ``lr_find`` on a Learner; the model's weights are restored afterwards."""
    from fastai.callback.schedule import minimum, slide, steep, valley

    from .callbacks import LRFindProgress

    reporter = reporter or NullReporter()
    cb = LRFindProgress(reporter, num_it)
    learn.add_cb(cb)
    try:
        found = learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=(valley, slide, minimum, steep))
    finally:
        learn.remove_cb(cb)
        reporter.finished()
    suggestions = {name: float(getattr(found, name)) for name in SUGGESTION_NAMES}
    lrs = [float(x) for x in learn.recorder.lrs]
    losses = [float(x) for x in learn.recorder.losses]
    return LRFindResult(suggestions=suggestions, lrs=lrs, losses=losses)


def plot_lr_find(result: LRFindResult, path: Path, title: str = "") -> Path:
    """Loss against a log-scale learning rate, each suggestion marked and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(result.lrs, result.losses, color="#1f77b4", lw=1.6, label="loss (smoothed)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    finite = [l for l in result.losses if math.isfinite(l)]
    if finite:
        lo, hi = min(finite), min(max(finite), min(finite) + 3 * (sorted(finite)[len(finite) // 2] - min(finite) + 0.1))
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    colors = {"valley": "#d62728", "slide": "#2ca02c", "minimum": "#9467bd", "steep": "#ff7f0e"}
    for name, lr in result.suggestions.items():
        y = _loss_at(result, lr)
        ax.plot([lr], [y], "o", color=colors.get(name, "k"), ms=8, label=f"{name}: {lr:.2e}")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(title or "learning-rate finder")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _loss_at(result: LRFindResult, lr: float) -> float:
    best = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i]) - math.log(lr)))
    return result.losses[best]


def save_lr_find(result: LRFindResult, out_dir: Path, title: str = "") -> LRFindResult:
    """Write ``lr_find.png``, ``lr_find.csv`` (lr, loss) and ``lr_find.json`` (suggestions) to ``out_dir``."""
    out_dir = Path(out_dir)
    result.csv = write_csv(out_dir / "lr_find.csv", ["lr", "loss"], zip(result.lrs, result.losses))
    result.plot = plot_lr_find(result, out_dir / "lr_find.png", title=title)
    write_json(out_dir / "lr_find.json", {"suggestions": result.suggestions})
    result.run_dir = out_dir
    return result


def find_lr(config: Optional[TrainConfig] = None, reporter: Optional[Reporter] = None, **options) -> LRFindResult:
    """Build the data and model of ``config`` and run the learning-rate finder on them.

    Writes the plot and curve into ``config.out`` (default ``runs/lr-find-<arch>-<timestamp>``).
    ``options`` override fields of ``config`` (``find_lr(data="photos", arch="resnet18")``).
    """
    from .training import prepare_run

    reporter = reporter or NullReporter()
    setup = prepare_run(config, options, reporter, prefix="lr-find-")
    reporter.stage("running the learning-rate finder")
    result = run_lr_find(setup.bundle.learn, reporter)
    result.config = setup.resolved
    write_json(setup.run_dir / "config.json", setup.resolved)
    return save_lr_find(result, setup.run_dir, title=f"lr-find: {setup.config.arch}, {setup.config.size}px")
