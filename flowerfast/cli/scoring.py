"""``flowerfast evaluate`` and ``flowerfast calibrate``: how good a trained model is, and how sure it
should be. Like predict, they load the model in plain PyTorch and never import fastai."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowerfast.cli import options as o
from flowerfast.cli.app import app
from flowerfast.cli.failures import user_errors
from flowerfast.cli.output import console, err_console, make_reporter
from flowerfast.cli.use import Bs, Device, InferencePrecision, MinConfidence, Model, TrustPickle, Tta, Workers
from flowerfast.runs.config import DEFAULT_TARGET_ACCURACY, INFERENCE_BATCH_SIZE


@app.command(epilog="Example: flowerfast evaluate runs/resnet18-20240101-120000/ test-photos/ --mistakes 12")
def evaluate(
    model: Model,
    data_dir: Annotated[
        Optional[Path],
        typer.Argument(
            help="Labelled folder: one folder per class. Without it, a run folder's model is scored on the run's own validation split.",
            show_default=False,
            metavar="[DATA_DIR]",
        ),
    ] = None,
    mistakes: Annotated[
        int, typer.Option("--mistakes", metavar="N", help="How many of the most confident mistakes to list and plot.")
    ] = 9,
    out: Annotated[
        Optional[Path],
        o.out_option("Folder for metrics.json, predictions.csv and the PNGs. Default: runs/evaluate-<timestamp>."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of tables.")] = False,
    bs: Bs = INFERENCE_BATCH_SIZE,
    device: Device = o.DeviceChoice.auto,
    workers: Workers = None,
    trust_pickle: TrustPickle = False,
    precision: InferencePrecision = o.PrecisionChoice.fp32,
    min_confidence: MinConfidence = None,
    target_accuracy: Annotated[
        float,
        typer.Option(
            "--target-accuracy",
            metavar="A",
            help="The accuracy on answered photos to suggest a --min-confidence for (0 to 1).",
        ),
    ] = DEFAULT_TARGET_ACCURACY,
    tta: Tta = False,
    labels: o.Labels = None,
    cam: Annotated[
        bool,
        typer.Option("--cam", help="Draw Grad-CAM heatmaps (where it looked) on mistakes.png (needs the cam extra)."),
    ] = False,
) -> None:
    """Score a trained model on a labelled folder: accuracy, per-class metrics, confusion, mistakes."""
    with user_errors():
        from flowerfast.core.files import check_output_dir, default_run_dir
        from flowerfast.infer.evaluate import evaluate as run_evaluate
        from flowerfast.infer.evaluate import save_report

        out_dir = check_output_dir(out if out is not None else default_run_dir("evaluate"))
        result = run_evaluate(
            model,
            data_dir,
            mistakes=mistakes,
            bs=bs,
            device=o.value(device),
            workers=workers,
            trust_pickle=trust_pickle,
            precision=o.value(precision),
            reporter=make_reporter(to_stderr=True),
            min_confidence=min_confidence,
            target_accuracy=target_accuracy,
            tta=tta,
            cam=cam,
            labels=labels,
        )
        if getattr(result, "multi_label", False):
            _finish_multi_label(result, out_dir, json_)
            return
        files = save_report(result, out_dir)
    if json_:
        typer.echo(json.dumps({**result.to_dict(), "out": str(files.out_dir)}, indent=2))
        return
    _print_evaluation(result)
    cal = result.calibration
    console.print(
        f"calibration: ECE {cal.ece_after:.1%} at the model's temperature {cal.temperature:.2f} "
        f"({cal.ece_before:.1%} at 1); NLL {cal.nll_after:.3f} ({cal.nll_before:.3f})",
        markup=False,
    )
    for line in _selective_lines(result):
        console.print(line, markup=False)
    console.print(
        f"report: {files.out_dir}  (metrics.json, predictions.csv, confusion.png, calibration.png, risk_coverage.png"
        + (", mistakes.png)" if files.mistakes else ")"),
        markup=False,
    )


def _finish_multi_label(result, out_dir: Path, json_: bool) -> None:
    """A multi-label evaluation's report files, then its JSON or its table."""
    from flowerfast.infer.multilabel_eval import save_multi_label_report

    out = save_multi_label_report(result, out_dir)
    if json_:
        typer.echo(json.dumps({**result.to_dict(), "out": str(out)}, indent=2))
        return
    s = result.scores
    table = Table(title=f"{len(result.files)} photos ({result.source}), multi-label, at the model's thresholds")
    for name in ("class", "threshold", "F1", "precision", "recall", "AP", "photos"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for c, t, f, p, r, a, n in zip(
        s.classes, s.thresholds, s.f1, s.precision, s.recall, s.average_precision, s.support
    ):
        table.add_row(
            c,
            f"{t:.3f}",
            "-" if f is None else f"{f:.3f}",
            f"{p:.3f}",
            f"{r:.3f}",
            "-" if a is None else f"{a:.3f}",
            str(n),
        )
    console.print(table)
    mean_ap = "-" if s.mean_average_precision is None else f"{s.mean_average_precision:.3f}"
    console.print(
        f"macro F1 {s.macro_f1:.3f} ({result.macro_f1_at_half:.3f} at 0.5); mAP {mean_ap}; "
        f"every label right on {s.exact_match:.1%} of the photos; {s.label_accuracy:.1%} of the labels right",
        markup=False,
    )
    console.print(f"report: {out}  (metrics.json, predictions.csv)", markup=False)


def _selective_lines(result) -> list[str]:
    """What answering only when sure gives: at the minimum confidence asked for, and the one
    suggested for the target accuracy."""
    sel, lines = result.selective, []
    if sel.answered is not None:
        a = sel.answered
        right = "no photo" if a.accuracy is None else f"{a.accuracy:.1%} right"
        lines.append(
            f"at --min-confidence {a.min_confidence:g}: answers {a.answered} of {a.images} photos "
            f"({a.coverage:.1%} coverage), {right}; {a.images - a.answered} unknown"
        )
    if sel.suggested is None:
        lines.append(f"no minimum confidence reaches {sel.target_accuracy:.0%} right on these photos")
    else:
        g = sel.suggested
        lines.append(
            f"for {sel.target_accuracy:.0%} right: --min-confidence {g.min_confidence:.3f}, which answers "
            f"{g.coverage:.1%} of these photos ({g.accuracy:.1%} right)"
        )
    return lines


@app.command(epilog="Example: flowerfast calibrate runs/resnet18-20240101-120000/")
def calibrate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder.", show_default=False)],
    device: Device = o.DeviceChoice.auto,
    json_: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Fit the temperature and the familiarity of a run's best model on its photos and save them in the model.

    Training does this when it ends; this is for runs trained before, or after their photos changed.
    """
    with user_errors():
        from flowerfast.infer.calibrate import calibrate_run

        cal = calibrate_run(run_dir, device=o.value(device), reporter=make_reporter(to_stderr=True))
    if json_:
        typer.echo(json.dumps(cal.to_dict(), indent=2))
        return
    console.print(
        f"temperature {cal.temperature:.3f} on {cal.images} validation photos: ECE {cal.ece_before:.1%} -> "
        f"{cal.ece_after:.1%}, NLL {cal.nll_before:.3f} -> {cal.nll_after:.3f}; saved in {Path(run_dir) / 'best.json'}",
        markup=False,
    )


def _print_evaluation(result) -> None:
    on = result.source if result.source != "folder" else str(result.data_dir)
    console.print(
        f"accuracy {result.accuracy:.1%} on {result.n_images} images ({on}); macro F1 {result.macro_f1:.3f}",
        markup=False,
    )
    metrics = Table(title="per class")
    for name, justify in (
        ("class", "left"),
        ("precision", "right"),
        ("recall", "right"),
        ("F1", "right"),
        ("images", "right"),
    ):
        metrics.add_column(name, justify=justify)
    for m in result.per_class:
        metrics.add_row(m.name, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", str(m.support))
    console.print(metrics)
    confusion = Table(title="confusion (rows: true class, columns: predicted)")
    confusion.add_column("")
    for c in result.classes:
        confusion.add_column(c, justify="right")
    for i, (c, row) in enumerate(zip(result.classes, result.confusion)):
        confusion.add_row(c, *[f"[bold]{v}[/bold]" if i == j else str(v) for j, v in enumerate(row)])
    console.print(confusion)
    if result.mistakes:
        table = Table(title=f"most confident mistakes ({len(result.mistakes)})")
        table.add_column("file", overflow="fold")
        table.add_column("true")
        table.add_column("predicted")
        table.add_column("probability", justify="right")
        for m in result.mistakes:
            table.add_row(str(m.path), m.true, m.predicted, f"{m.probability:.1%}")
        console.print(table)
    if result.skipped:
        err_console.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s):[/yellow]")
        for s in result.skipped:
            err_console.print(f"  {s.path}: {s.reason}", markup=False, soft_wrap=True)
