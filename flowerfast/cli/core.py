"""``flowerfast train``, ``flowerfast lr-find`` and ``flowerfast archs``."""

from __future__ import annotations


import typer
from rich.table import Table

from . import app, options as o
from .output import console, make_reporter, user_errors


def _config(data, arch, epochs, lr, bs, size, valid_pct, seed, freeze_epochs, pretrained, weights, out, device, workers,
            split_file=None):
    from ..config import TrainConfig

    return TrainConfig(data=data, arch=arch, epochs=epochs, lr=lr, bs=bs, size=size, valid_pct=valid_pct, seed=seed,
                       freeze_epochs=freeze_epochs, pretrained=pretrained, weights=weights, out=out, device=device,
                       workers=workers, split_file=split_file).validate()


@app.command(epilog="Example: flowerfast train --arch resnet152 --epochs 10 --data photos/")
def train(
    data: o.Data = None, arch: o.Arch = "resnet152", epochs: o.Epochs = 10, lr: o.Lr = None, bs: o.Bs = 32,
    size: o.Size = 224, valid_pct: o.ValidPct = 0.2, seed: o.Seed = 42, freeze_epochs: o.FreezeEpochs = None,
    pretrained: o.Pretrained = None, weights: o.Weights = None, out: o.Out = None, device: o.Device = "auto",
    workers: o.Workers = None, split_file: o.SplitFile = None,
) -> None:
    """Fine-tune a pretrained classifier and save the best and final models in a run folder."""
    with user_errors():
        from ..training import train as run_training

        config = _config(data, arch, epochs, lr, bs, size, valid_pct, seed, freeze_epochs, pretrained, weights,
                         out, device, workers, split_file)
        reporter = make_reporter()
        result = run_training(config, reporter=reporter)
    s = result.summary
    console.print(f"best valid accuracy {s['best_valid_accuracy']:.1%} at epoch {s['best_epoch']}, "
                  f"final {s['final_valid_accuracy']:.1%}; {s['seconds']:.0f}s "
                  f"({s['train_images_per_second']:.1f} train images/s)", markup=False)
    console.print(f"run folder: {result.run_dir}", markup=False)
    console.print(f"best model: {result.best_model}", markup=False)


@app.command("lr-find", epilog="Example: flowerfast lr-find --arch resnet18 --size 128 --data photos/")
def lr_find(
    data: o.Data = None, arch: o.Arch = "resnet152", bs: o.Bs = 32, size: o.Size = 224,
    valid_pct: o.ValidPct = 0.2, seed: o.Seed = 42, pretrained: o.Pretrained = None, weights: o.Weights = None,
    out: o.Out = None, device: o.Device = "auto", workers: o.Workers = None,
) -> None:
    """Find a good learning rate: plot loss against a rising learning rate and suggest values."""
    with user_errors():
        from ..lr_find import find_lr

        config = _config(data, arch, 1, None, bs, size, valid_pct, seed, None, pretrained, weights, out, device,
                         workers)
        reporter = make_reporter()
        result = find_lr(config, reporter=reporter)
    table = Table(title="learning-rate suggestions")
    table.add_column("method")
    table.add_column("lr", justify="right")
    for name, value in result.suggestions.items():
        table.add_row(name, f"{value:.2e}")
    console.print(table)
    console.print(f"use: flowerfast train --arch {arch} --lr {result.valley:.1e}  (valley)", markup=False)
    console.print(f"plot: {result.plot}", markup=False)
    console.print(f"curve: {result.csv}", markup=False)


@app.command(epilog="Example: flowerfast archs --all")
def archs(
    all_: bool = typer.Option(False, "--all", help="List every torchvision architecture, not only the featured ones."),
) -> None:
    """List the architectures flowerfast can fine-tune."""
    with user_errors():
        from ..archs import FEATURED, imagenet_weights, list_archs

        names = list_archs(featured_only=not all_)
        table = Table(title="architectures" + ("" if all_ else " (featured; --all lists every one)"))
        table.add_column("name")
        table.add_column("parameters", justify="right")
        table.add_column("ImageNet top-1", justify="right")
        table.add_column("note")
        for name in names:
            try:
                meta = imagenet_weights(name).meta
                params = f"{meta['num_params'] / 1e6:.1f}M"
                acc = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
                top1 = f"{acc:.1f}%" if acc is not None else "-"
            except (ValueError, KeyError, AttributeError):
                params, top1 = "-", "-"
            table.add_row(name, params, top1, FEATURED.get(name, ""))
    console.print(table)
