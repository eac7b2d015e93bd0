"""The learning-rate range test (fastai's ``lr_find``): suggestions, a plot and the raw curve.

A short mock training with an exponentially rising learning rate; the loss curve shows where
learning is fastest (valley, steep, slide) and where it breaks down. fastai's "minimum" suggestion
is the learning rate at the curve's minimum divided by 10, by fastai's rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_bytes
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.runs.config import LR_FIND_ITERATIONS, TrainConfig, make_config
from flowerfast.runs.folder import RunFolder
from flowerfast.training.session import prepare_run

SUGGESTION_NAMES = ("valley", "slide", "minimum", "steep")


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


def run_lr_find(
    learn, reporter: Optional[Reporter] = None, num_it: int = LR_FIND_ITERATIONS, device=None
) -> LRFindResult:
    """Run fastai's learning-rate range test on a Learner; the model's weights are restored
    afterwards.

    It is fastai's ``Learner.lr_find`` (the same schedule from 1e-7 to 10, stop on divergence,
    suggestions from the curve without its first tenth and last 5 points) with the weights kept in
    memory (:class:`~flowerfast.training.callbacks.KeepWeightsLRFinder`), so that in a job of several
    processes (``device``: this process's) every process takes part, each on its shard, and the
    curve is that of the job's effective batch size.
    """
    import torch
    from fastai.callback.schedule import minimum, slide, steep, valley

    from flowerfast.hardware import distributed
    from flowerfast.training.callbacks import KeepWeightsLRFinder, LRFindProgress
    from flowerfast.training.sharding import data_parallel

    reporter = reporter or NullReporter()
    cb = LRFindProgress(reporter, num_it)
    train = learn.dls.train
    per_epoch = max(1, train.n // distributed.current().world_size // train.bs)  # a process's batches
    learn.add_cb(cb)
    try:
        with data_parallel(learn, device or learn.dls.device), learn.no_logging():
            learn.fit(num_it // per_epoch + 1, cbs=KeepWeightsLRFinder(num_it=num_it))
        lrs_all, losses_all = learn.recorder.lrs, learn.recorder.losses
        lrs = torch.tensor([float(x) for x in lrs_all[num_it // 10 : -5]])
        losses = torch.tensor([float(x) for x in losses_all[num_it // 10 : -5]])
        nan = torch.nonzero(torch.isnan(losses.view(-1)))
        if len(nan) > 0:
            lrs, losses = lrs[: int(nan.min())], losses[: int(nan.min())]
        found = {f.__name__: f(lrs, losses, num_it)[0] for f in (valley, slide, minimum, steep)}
    except IndexError:  # fastai drops the first tenth and the last 5 points: nothing was left
        raise distributed.shared_error(
            f"the learning-rate finder stopped after {len(learn.recorder.lrs)} batches because the loss jumped "
            f"at once, too few to suggest anything: use more images or a larger $bs",
            parameters=("bs",),
        ) from None
    finally:
        learn.remove_cb(cb)
        reporter.finished()
    suggestions = distributed.broadcast_object({name: float(found[name]) for name in SUGGESTION_NAMES})
    lrs = [float(x) for x in learn.recorder.lrs]
    losses = [float(x) for x in learn.recorder.losses]
    return LRFindResult(suggestions=suggestions, lrs=lrs, losses=losses)


def save_lr_find(result: LRFindResult, run: RunFolder, title: str = "") -> LRFindResult:
    """Write ``lr_find.png`` (loss against a log-scale learning rate, suggestions marked),
    ``lr_find.csv`` (lr, loss) and ``lr_find.json`` (suggestions) into the run folder."""
    from flowerfast.core.plots import lr_find_png

    result.csv, _ = run.write_lr_find(result.lrs, result.losses, result.suggestions)
    result.plot = atomic_write_bytes(
        run.lr_find_plot, lr_find_png(result.lrs, result.losses, result.suggestions, title or "learning-rate finder")
    )
    result.run_dir = run.path
    return result


def find_and_save_lr(bundle, run: RunFolder, reporter: Optional[Reporter] = None) -> dict[str, float]:
    """``train(lr="auto")``'s learning-rate finder: run it, keep its files in the run folder, and
    return the suggestions (the valley is the learning rate trained with)."""
    from flowerfast.hardware import distributed

    found = run_lr_find(bundle.learn, reporter, device=bundle.device)
    if distributed.current().is_main:
        save_lr_find(found, run, title=f"lr-find: {bundle.spec.arch}")
    return found.suggestions


def find_lr(
    config: Optional[TrainConfig] = None,
    reporter: Optional[Reporter] = None,
    num_it: int = LR_FIND_ITERATIONS,
    **options,
) -> LRFindResult:
    """Build the data and model of ``config`` and run the learning-rate finder on them.

    Writes the plot and curve into ``config.out`` (default ``runs/lr-find-<arch>-<timestamp>``).
    ``options`` override fields of ``config`` (``find_lr(data="photos", arch="resnet18")``).
    ``num_it`` is the number of mini-batches the learning rate rises over.
    """
    if num_it < 10:
        raise FlowerfastError(f"$num_it must be at least 10 (got {num_it})", parameters=("num_it",))
    from flowerfast.hardware import distributed

    reporter = distributed.main_only(reporter or NullReporter())
    with prepare_run(make_config(config, **options), reporter, prefix="lr-find-", training=False) as setup:
        reporter.stage("running the learning-rate finder")
        result = run_lr_find(setup.bundle.learn, reporter, num_it=num_it, device=setup.bundle.device)
        result.config = setup.config.to_dict()
        if not distributed.current().is_main:  # rank 0 alone writes; the others return its figures
            result.run_dir = setup.run.path
            return result
        return save_lr_find(result, setup.run, title=f"lr-find: {setup.options.arch}, {setup.config.size}px")
