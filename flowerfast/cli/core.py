"""``flowerfast train``, ``flowerfast lr-find`` and ``flowerfast archs``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flowerfast.cli import options as o
from flowerfast.cli.app import app
from flowerfast.cli.failures import user_errors
from flowerfast.cli.output import console, make_reporter, print_json, resume_hint
from flowerfast.runs.config import DEFAULTS as D
from flowerfast.runs.config import LR_FIND_ITERATIONS


@app.command(epilog="Example: flowerfast train --arch resnet152 --epochs 10 --data photos/")
def train(
    ctx: typer.Context,
    data: o.Data = D.data,
    labels: o.Labels = D.labels,
    multi_label: o.MultiLabel = D.multi_label,
    arch: o.Arch = D.arch,
    epochs: o.Epochs = D.epochs,
    lr: o.Lr = D.lr,
    bs: o.Bs = D.bs,
    size: o.Size = D.size,
    valid_pct: o.ValidPct = D.valid_pct,
    seed: o.Seed = D.seed,
    freeze_epochs: o.FreezeEpochs = D.freeze_epochs,
    pretrained: o.Pretrained = D.pretrained,
    weights: o.Weights = D.weights,
    out: o.Out = D.out,
    device: o.Device = D.device,
    workers: o.Workers = D.workers,
    split_file: o.SplitFile = D.split_file,
    clean_train_sample: o.CleanTrainSample = D.clean_train_sample,
    precision: o.Precision = D.precision,
    compile_: o.Compile = D.compile,
    cache: o.Cache = D.cache,
    cache_dir: o.CacheDir = D.cache_dir,
    threads: o.Threads = D.threads,
    stratify: o.Stratify = D.stratify,
    class_weights: o.ClassWeights = D.class_weights,
    patience: o.Patience = D.patience,
    save_every: o.SaveEvery = D.save_every,
    keep: o.Keep = D.keep,
    config_file: o.ConfigFile = None,
    tracker: o.Tracker = None,
    sync_bn: o.SyncBn = D.sync_bn,
    fixed_bn: o.FixedBn = D.fixed_bn,
    body_lr: o.BodyLr = D.body_lr,
    min_scale: o.MinScale = D.min_scale,
    time_budget: o.TimeBudget = None,
    label_smoothing: o.LabelSmoothing = D.label_smoothing,
    weight_decay: o.WeightDecay = D.weight_decay,
    mixup: o.Mixup = D.mixup,
    cutmix: o.Cutmix = D.cutmix,
    ema: o.Ema = D.ema,
    ema_decay: o.EmaDecay = D.ema_decay,
    progressive: o.Progressive = None,
    augment: o.Augment = D.augment,
    batch_crop: o.BatchCrop = D.batch_crop,
    resume: o.Resume = None,
    json_: o.Json = False,
) -> None:
    """Fine-tune a pretrained classifier and save the best and final models in a run folder.
    An interrupted run (Ctrl-C, SIGTERM, a crash) goes on with --resume RUN_DIR. Under torchrun
    (or accelerate launch) every process trains its share of each epoch (DDP)."""
    reporter = make_reporter(to_stderr=json_)
    with user_errors(stopped=lambda: resume_hint(reporter)):
        from flowerfast.training.run import resume as resume_training
        from flowerfast.training.run import train as run_training

        not_options = ("resume", "config_file", "json_")
        if resume is not None:
            result = resume_training(resume, reporter=reporter, **o.given_options(ctx, not_options))
        elif config_file is not None:
            from flowerfast.runs.config import read_options

            config = read_options(config_file).with_options(**o.given_options(ctx, not_options))
            result = run_training(config, reporter=reporter)
        else:
            config = o.train_config(ctx.params).validate()
            result = run_training(config, reporter=reporter)
    if json_:
        print_json({"run_dir": str(result.run_dir), **result.summary.to_dict()})
        return
    show_training_result(result)


def show_training_result(result) -> None:
    s = result.summary
    speed = f" ({s.train_images_per_second:.1f} train images/s)" if s.train_images_per_second else ""
    if s.multi_label:
        m = s.multi_label
        console.print(
            f"best valid mAP {m['mAP']:.3f} at epoch {s.best_epoch}: macro F1 {m['macro_f1']:.3f} at the thresholds "
            f"tuned on the validation split ({m['macro_f1_at_0.5']:.3f} at 0.5); {s.seconds:.0f}s{speed}",
            markup=False,
        )
    else:
        console.print(
            f"best valid accuracy {s.best_valid_accuracy:.1%} at epoch {s.best_epoch}, "
            f"final {s.final_valid_accuracy:.1%}; {s.seconds:.0f}s{speed}",
            markup=False,
        )
    if s.stopped_early_at is not None:
        console.print(
            f"stopped early after epoch {s.stopped_early_at} of {s.planned_epochs}: validation accuracy "
            f"had not improved for {result.config.options.patience} epochs",
            markup=False,
        )
    console.print(f"run folder: {result.run_dir}", markup=False)
    console.print(f"best model: {result.best_model}", markup=False)


@app.command("lr-find", epilog="Example: flowerfast lr-find --arch resnet18 --size 128 --data photos/")
def lr_find(
    data: o.Data = D.data,
    labels: o.Labels = D.labels,
    multi_label: o.MultiLabel = D.multi_label,
    arch: o.Arch = D.arch,
    bs: o.Bs = D.bs,
    size: o.Size = D.size,
    valid_pct: o.ValidPct = D.valid_pct,
    seed: o.Seed = D.seed,
    pretrained: o.Pretrained = D.pretrained,
    weights: o.Weights = D.weights,
    out: o.Out = D.out,
    device: o.Device = D.device,
    workers: o.Workers = D.workers,
    precision: o.Precision = D.precision,
    cache: o.Cache = D.cache,
    cache_dir: o.CacheDir = D.cache_dir,
    threads: o.Threads = D.threads,
    stratify: o.Stratify = D.stratify,
    label_smoothing: o.LabelSmoothing = D.label_smoothing,
    weight_decay: o.WeightDecay = D.weight_decay,
    mixup: o.Mixup = D.mixup,
    cutmix: o.Cutmix = D.cutmix,
    augment: o.Augment = D.augment,
    batch_crop: o.BatchCrop = D.batch_crop,
    json_: o.Json = False,
    num_it: int = typer.Option(
        LR_FIND_ITERATIONS, "--num-it", metavar="N", help="Mini-batches the learning rate rises over."
    ),
) -> None:
    """Find a good learning rate: plot loss against a rising learning rate and suggest values."""
    with user_errors():
        from flowerfast.runs.config import TrainConfig
        from flowerfast.training.lr_find import find_lr

        config = TrainConfig(
            data=data,
            labels=labels,
            multi_label=multi_label,
            arch=arch,
            bs=bs,
            size=size,
            valid_pct=valid_pct,
            seed=seed,
            pretrained=pretrained,
            weights=weights,
            out=out,
            device=o.value(device),
            workers=workers,
            precision=o.value(precision),
            cache=cache,
            cache_dir=cache_dir,
            threads=threads,
            stratify=stratify,
            label_smoothing=label_smoothing,
            weight_decay=weight_decay,
            mixup=mixup,
            cutmix=cutmix,
            augment=augment,
            batch_crop=batch_crop,
        ).validate()
        result = find_lr(config, reporter=make_reporter(to_stderr=json_), num_it=num_it)
    if json_:
        print_json(
            {
                "run_dir": str(result.run_dir),
                "suggestions": result.suggestions,
                "plot": str(result.plot),
                "curve": str(result.csv),
            }
        )
        return
    table = Table(title="learning-rate suggestions")
    table.add_column("method")
    table.add_column("lr", justify="right")
    for name, value in result.suggestions.items():
        table.add_row(name + (" (fastai: the minimum's lr / 10)" if name == "minimum" else ""), f"{value:.2e}")
    console.print(table)
    hint = lr_find_hint(data, arch, result.config.get("size", size), bs, pretrained, weights, result.valley)
    console.print(f"use: {hint}  (valley)", markup=False)
    console.print(f"plot: {result.plot}", markup=False)
    console.print(f"curve: {result.csv}", markup=False)


@app.command("show-batch", epilog="Example: flowerfast show-batch --data photos/ --size 224 --out batch.png")
def show_batch(
    data: o.Data = D.data,
    size: o.Size = D.size,
    valid_pct: o.ValidPct = D.valid_pct,
    seed: o.Seed = D.seed,
    stratify: o.Stratify = D.stratify,
    split_file: o.SplitFile = D.split_file,
    batch_crop: o.BatchCrop = D.batch_crop,
    n: int = typer.Option(16, "-n", help="How many images to draw.", metavar="N"),
    out: Path = typer.Option(Path("batch.png"), "--out", "-o", help="The PNG file to write.", metavar="PATH"),
) -> None:
    """Draw augmented training images as the model sees them, without training: check the augmentation."""
    with user_errors():
        from flowerfast.training.pictures import show_batch as draw

        path = draw(
            data=data,
            size=size,
            valid_pct=valid_pct,
            seed=seed,
            stratify=stratify,
            split_file=split_file,
            batch_crop=batch_crop,
            n=n,
            out=out,
        )
    console.print(f"batch: {path}", markup=False)


def lr_find_hint(data, arch: str, size: int, bs: int, pretrained, weights, lr: float) -> str:
    """The train command to paste after lr-find: the same data, architecture, size, batch size and
    weights the curve was measured with (a learning rate is only good for those)."""
    import shlex

    parts = ["flowerfast", "train"]
    if data is not None:
        parts += ["--data", str(data)]
    parts += ["--arch", arch, "--size", str(size)]
    if bs != D.bs:
        parts += ["--bs", str(bs)]
    if weights is not None:
        parts += ["--weights", str(weights)]
    elif pretrained is not None:
        parts.append("--pretrained" if pretrained else "--no-pretrained")
    parts += ["--lr", f"{lr:.1e}"]
    return shlex.join(parts)


@app.command(epilog="Example: flowerfast archs --all")
def archs(
    all_: bool = typer.Option(
        False, "--all", help="List every torchvision and timm architecture, not only the featured ones."
    ),
) -> None:
    """List the architectures flowerfast can fine-tune.

    A bare name is torchvision's model when torchvision has one of that name (resnet152), else
    timm's (tf_efficientnet_lite0); timm/NAME always means timm's (timm/resnet50).
    """
    with user_errors():
        from flowerfast.models.archs import FEATURED, list_archs, torchvision_names
        from flowerfast.models.pretrained import published_facts

        names = list_archs(featured_only=not all_)
        table = Table(title="architectures" + ("" if all_ else " (featured; --all lists every one)"))
        table.add_column("name", no_wrap=True)
        table.add_column("source")
        table.add_column("parameters", justify="right")
        table.add_column("ImageNet top-1", justify="right")
        table.add_column("note")
        torchvision = set(torchvision_names())
        for name in names:
            params, top1 = published_facts(name)
            table.add_row(
                name,
                "torchvision" if name in torchvision else "timm",
                f"{params / 1e6:.1f}M" if params else "-",
                f"{top1:.1f}%" if top1 is not None else "-",
                FEATURED.get(name, ""),
            )
    console.print(table)
