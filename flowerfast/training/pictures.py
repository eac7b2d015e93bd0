"""The pictures of a training run, drawn into its folder: ``curves.png`` (loss and accuracy per
epoch), ``confusion.png`` (counts and shares) and ``mistakes.png`` of the best model on the
validation set, ``calibration.png`` (its reliability before and after its temperature), and
``batch.png``, augmented training images as the model sees them.

Why a run draws them itself: a person should be able to look at one run, not only at a
comparison, and check the augmentation before trusting the numbers (fastai's ``show_batch``).
The drawing is :mod:`flowerfast.core.plots`; this module picks the data from the run.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

from flowerfast.core.files import atomic_write_bytes
from flowerfast.core.stats import confusion_counts
from flowerfast.runs.folder import (
    BATCH,
    CALIBRATION,
    CONFUSION,
    CURVES,
    MISTAKES,
    EpochRecord,
    RunFolder,
    ValidPrediction,
)

MISTAKES_SHOWN = 12


def draw_curves(run: RunFolder, name: str, history: Sequence[EpochRecord]) -> Path:
    from flowerfast.core.plots import curves_png

    return atomic_write_bytes(run.file(CURVES), curves_png([SimpleNamespace(name=name, history=list(history))]))


def draw_calibration(run: RunFolder, probs, targets, calibration) -> Path:
    """``calibration.png``: the best model's reliability on the validation set at temperature 1
    and at its fitted temperature."""
    from flowerfast.core.calibration import before_and_after_bins
    from flowerfast.core.plots import reliability_png

    curves = before_and_after_bins(probs, targets, calibration)
    return atomic_write_bytes(run.file(CALIBRATION), reliability_png("best model, validation set", curves))


def draw_confusion(run: RunFolder, classes: Sequence[str], predictions: Sequence[ValidPrediction]) -> Path:
    from flowerfast.core.plots import confusion_png

    png = confusion_png(
        "best model, validation set",
        classes,
        confusion_counts([p.label for p in predictions], [p.predicted for p in predictions], classes),
        normalised=True,
    )
    return atomic_write_bytes(run.file(CONFUSION), png)


def draw_mistakes(
    run: RunFolder, root: Path, predictions: Sequence[ValidPrediction], shown: int = MISTAKES_SHOWN
) -> Optional[Path]:
    """The most confident wrong answers of the best model; no file when it made no mistake."""
    from flowerfast.core.plots import mistakes_png

    wrong = sorted((p for p in predictions if not p.correct), key=lambda p: -p.confidence)[:shown]
    mistakes = [
        SimpleNamespace(path=Path(root) / p.file, true=p.label, predicted=p.predicted, probability=p.confidence)
        for p in wrong
        if (Path(root) / p.file).is_file()
    ]
    if not mistakes:
        run.file(MISTAKES).unlink(missing_ok=True)
        return None
    return atomic_write_bytes(run.file(MISTAKES), mistakes_png(mistakes))


def batch_picture(
    dls, classes: Sequence[str], mean: Sequence[float], std: Sequence[float], n: int = 16, title: str = ""
) -> bytes:
    """One augmented training batch, un-normalised for display: what the model is trained on
    (random crop, flips, warps, lighting and the erased rectangles). The random generators are
    put back afterwards, so drawing it changes nothing in the training that follows."""
    import torch

    from flowerfast.core.plots import batch_png
    from flowerfast.training.checkpoint import capture_rng, restore_rng

    loaders = (dls.train, dls.valid)
    state = capture_rng(loaders)
    try:
        xb, yb = dls.train.one_batch()
    finally:
        restore_rng(state, loaders)
    x = xb.as_subclass(torch.Tensor).detach().float().cpu()[:n]
    m = torch.tensor(list(mean)).view(1, 3, 1, 1)
    s = torch.tensor(list(std)).view(1, 3, 1, 1)
    images = (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    if yb.ndim == 2:  # multi-hot targets: every class of the photo
        labels = [";".join(c for c, on in zip(classes, row.tolist()) if on) for row in yb[:n]]
    else:
        labels = [classes[int(i)] for i in yb[:n]]
    return batch_png(images, labels, title=title)


def draw_batch(path: Path, data, size: int, n: int = 16) -> Path:
    """``batch.png``: ``n`` augmented training images of ``data`` (a ``FlowerData``), un-normalised."""
    title = f"augmented training images at {size}px, as the model sees them"
    return atomic_write_bytes(Path(path), batch_picture(data.dls, data.classes, data.mean, data.std, n, title))


def show_batch(config=None, out: Path | str = BATCH, n: int = 16, **options) -> Path:
    """Draw ``n`` augmented training images of ``config.data`` into ``out`` (a PNG) without
    training: the augmentation ``train`` would use with these options (size, seed, split)."""
    from fastai.torch_core import set_seed

    from flowerfast.data.imagecache import default_cache_dir
    from flowerfast.data.loaders import load_data
    from flowerfast.hardware.devices import resolve_device
    from flowerfast.models.archs import normalisation, resolve_arch
    from flowerfast.runs.config import crop_min_scale, make_config

    config = make_config(config, **options)
    if n < 1:
        from flowerfast.core.errors import FlowerfastError

        raise FlowerfastError(f"$n must be at least 1 (got {n})", parameters=("n",))
    cache_dir = (config.cache_dir or default_cache_dir()) if config.cache else None
    mean, std = normalisation(resolve_arch(config.arch))
    data = load_data(
        config.data,
        size=config.size,
        bs=max(n, 2),
        valid_pct=config.valid_pct,
        seed=config.seed,
        workers=0,
        device=resolve_device("cpu"),
        split_file=config.split_file,
        cache_dir=cache_dir,
        stratify=config.stratify,
        mean=mean,
        std=std,
        min_scale=crop_min_scale(config),
        batch_crop=config.batch_crop,
    )
    set_seed(config.seed)
    out = Path(out).expanduser()
    if out.suffix.lower() != ".png":
        from flowerfast.core.errors import FlowerfastError

        raise FlowerfastError(f"$out must name a .png file (got {out})", parameters=("out",))
    out.parent.mkdir(parents=True, exist_ok=True)
    return draw_batch(out, data, data.size, min(n, data.bs))
