"""``flowerfast compare`` and ``flowerfast report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowerfast.cli import options as o
from flowerfast.cli.app import app
from flowerfast.cli.failures import user_errors
from flowerfast.cli.output import console, make_reporter, print_json, resume_hint
from flowerfast.core.errors import FlowerfastError
from flowerfast.runs.config import DEFAULTS as D

Archs = Annotated[
    Optional[str],
    typer.Option(
        "--archs",
        help="Architectures to compare, comma-separated (at least 2), e.g. resnet152,vgg11_bn.",
        show_default=False,
    ),
]
ResumeCompare = Annotated[
    Optional[Path],
    typer.Option(
        "--resume",
        help="Finish an interrupted comparison: finished models are kept, the interrupted one resumes, the rest are trained (only --data, --device, --workers, --threads, --cache and --cache-dir may be given).",
        show_default=False,
        metavar="COMPARE_DIR",
    ),
]
CompareOut = Annotated[
    Optional[Path],
    o.out_option(
        "Comparison folder to create: one run folder per architecture plus the report. Default: runs/compare-<timestamp>."
    ),
]
ReportOut = Annotated[
    Optional[Path], o.out_option("Folder to create for the report. Default: runs/report-<timestamp>.")
]
LatencyPrecision = Annotated[
    o.PrecisionChoice,
    typer.Option(
        "--precision",
        help="Precision the inference speed is measured in: fp32 (as exported and served models run), or as in training (auto).",
    ),
]
RunDirs = Annotated[
    list[Path],
    typer.Argument(
        help="Finished run folders trained on the same split (2 or more).", show_default=False, metavar="RUN_DIR..."
    ),
]


def _transposed(table, title: str) -> Table:
    """One row per figure, one column per model: fits a terminal for any handful of models."""
    out = Table(title=title)
    out.add_column(table.headers[0])
    for row in table.rows:
        out.add_column(row[0], justify="right")
    for i, header in enumerate(table.headers[1:], 1):
        out.add_row(header, *[row[i] for row in table.rows])
    return out


def _pairs(rep) -> Table:
    """One row per pair of models, read from the named fields of each :class:`~flowerfast.reporting.report.PairResult`."""
    from flowerfast.reporting.render import format_p_cell, format_percent, format_points

    level = f"{rep.settings['ci_level']:.0%}"
    out = Table(title=f"paired comparison on the same {rep.pairs[0].n_images} validation images")
    for header in ("A vs B", "accuracy A / B", f"A - B [{level} CI]", "only A / only B right", "McNemar p"):
        out.add_column(header, justify="left" if header == "A vs B" else "right")
    for p in rep.pairs:
        out.add_row(
            f"{p.a} vs {p.b}",
            f"{format_percent(p.accuracy_a)} / {format_percent(p.accuracy_b)}",
            f"{format_points(p.difference)} [{format_points(p.ci_low)}, {format_points(p.ci_high)}]",
            f"{p.only_a_correct} / {p.only_b_correct}",
            format_p_cell(p.p_value),
        )
    return out


def show_report(rep) -> None:
    """The summary and paired comparison as rich tables, then the verdicts and where the files are."""
    from flowerfast.reporting.render import summary_table

    console.print(_transposed(summary_table(rep.models), "summary"))
    console.print(_pairs(rep))
    for v in rep.verdicts:
        console.print(f"[bold]{v}[/bold]", highlight=False)
    console.print(f"report: {rep.out / 'report.md'} (also report.html, report.json and plots)", markup=False)


@app.command(epilog="Example: flowerfast compare --archs resnet152,vgg11_bn --epochs 10")
def compare(
    ctx: typer.Context,
    archs: Archs = None,
    data: o.Data = D.data,
    labels: o.Labels = D.labels,
    multi_label: o.MultiLabel = D.multi_label,
    epochs: o.Epochs = D.epochs,
    lr: o.Lr = D.lr,
    bs: o.Bs = D.bs,
    size: o.Size = D.size,
    valid_pct: o.ValidPct = D.valid_pct,
    seed: o.Seed = D.seed,
    freeze_epochs: o.FreezeEpochs = D.freeze_epochs,
    pretrained: o.Pretrained = D.pretrained,
    out: CompareOut = D.out,
    device: o.Device = D.device,
    workers: o.Workers = D.workers,
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
    resume: ResumeCompare = None,
    json_: o.Json = False,
) -> None:
    """Train several architectures on the identical split and compare them: accuracy, speed, size,
    and a paired significance test on the same validation images."""
    reporter = make_reporter(to_stderr=json_)
    folder = {"path": out}

    def stopped() -> str:
        return resume_hint(reporter, "compare", str(folder["path"]) if folder["path"] else None)

    with user_errors(stopped=stopped):
        from flowerfast.reporting.comparison import compare as run_compare
        from flowerfast.reporting.comparison import resume_comparison

        if resume is not None:
            folder["path"] = resume
            changes = o.given_options(ctx, exclude=("resume", "archs", "json_"))
            if archs is not None:
                changes["archs"] = archs
            rep = resume_comparison(resume, reporter=reporter, **changes)
        else:
            if archs is None:
                raise FlowerfastError("--archs is required (or --resume COMPARE_DIR to finish a comparison)")
            config = o.train_config(ctx.params)
            rep = run_compare(archs, config, reporter=reporter, on_folder=lambda p: folder.update(path=p))
    if rep is None:  # another process of a distributed comparison: rank 0 reports
        return
    if json_:
        print_json({"out": str(rep.out), **rep.to_dict()})
        return
    show_report(rep)


@app.command(epilog="Example: flowerfast report runs/resnet152-20240101-120000 runs/vgg11_bn-20240101-130000")
def report(
    run_dirs: RunDirs,
    out: ReportOut = None,
    precision: LatencyPrecision = o.PrecisionChoice.fp32,
    json_: o.Json = False,
) -> None:
    """Build the comparison report from finished runs that share one split."""
    with user_errors():
        from flowerfast.reporting.report import report as build

        rep = build(run_dirs, out=out, reporter=make_reporter(to_stderr=json_), precision=o.value(precision))
    if json_:
        print_json({"out": str(rep.out), **rep.to_dict()})
        return
    show_report(rep)
