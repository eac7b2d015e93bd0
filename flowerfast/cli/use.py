"""``flowerfast predict``, ``flowerfast evaluate`` and ``flowerfast export``.

These load a saved model in plain PyTorch and never import fastai (unless ``--trust-pickle`` opens
a fastai export), so ``flowerfast predict`` on one photo costs little more than importing torch.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from flowerfast.cli import options as o
from flowerfast.cli.app import app
from flowerfast.cli.failures import fail, user_errors
from flowerfast.cli.output import console, err_console, make_reporter
from flowerfast.export.formats import AUTO, format_names
from flowerfast.runs.config import INFERENCE_BATCH_SIZE

Model = Annotated[
    Path,
    typer.Argument(help="Run folder, or a model file (.safetensors or .json).", show_default=False, metavar="MODEL"),
]
Device = Annotated[
    o.DeviceChoice, typer.Option("--device", help="Where to compute; auto: a CUDA GPU, else Apple's MPS, else the CPU.")
]
Bs = Annotated[int, typer.Option("--bs", metavar="N", help="Images per batch.")]
Workers = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        metavar="N",
        help="Image-decoding processes. Default: none on a CPU (the network needs the cores); on a GPU one per core, up to 8.",
        show_default=False,
    ),
]
InferencePrecision = Annotated[
    o.PrecisionChoice,
    typer.Option(
        "--precision",
        help="fp32: the numbers exports and served models give; auto: bf16 where the hardware has it, as in training.",
    ),
]
FormatChoice = Enum("FormatChoice", {name: name for name in (AUTO, *format_names())}, type=str)
"""``--format``: ``auto`` and the formats of :mod:`flowerfast.export.formats`, read from its files."""


TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow a fastai learn.export() .pkl as MODEL. Unpickling runs code from the file: only for files you trust.",
    ),
]


def _emit(text: str, output: Optional[Path]) -> None:
    """Machine-readable output goes to stdout, or atomically to ``--output``."""
    if output is None:
        typer.echo(text, nl=False)
        return
    from flowerfast.core.files import atomic_write_text

    try:
        atomic_write_text(output.expanduser(), text)
    except OSError as exc:
        from flowerfast.core.errors import FlowerfastError

        raise FlowerfastError(f"cannot write {output}: {exc.strerror or exc}") from None
    err_console.print(f"wrote {output}", markup=False)


def _predictions_csv(predictions, top_k: int) -> str:
    from flowerfast.core.files import csv_text

    header = ["path", "predicted", "probability"]
    for k in range(2, top_k + 1):
        header += [f"predicted_{k}", f"probability_{k}"]
    rows = []
    for p in predictions:
        row = [str(p.path)]
        for lbl, prob in p.top_k or [("", "")] * top_k:
            row += [lbl, round(prob, 6) if prob != "" else ""]
        rows.append(row + [p.error or ""])
    return csv_text(header + ["error"], rows)


@app.command(epilog="Example: flowerfast predict runs/resnet18-20240101-120000/ photos/ --top-k 3")
def predict(
    model: Model,
    paths: Annotated[
        List[Path],
        typer.Argument(
            help="Image files, folders (searched recursively) or globs.", show_default=False, metavar="PATH..."
        ),
    ],
    top_k: Annotated[
        int, typer.Option("--top-k", metavar="N", help="How many of the most likely classes to show per image.")
    ] = 1,
    bs: Bs = INFERENCE_BATCH_SIZE,
    device: Device = o.DeviceChoice.auto,
    workers: Workers = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            "--output",
            metavar="PATH",
            help="Write the JSON or CSV to this file instead of stdout.",
            show_default=False,
        ),
    ] = None,
    trust_pickle: TrustPickle = False,
    precision: InferencePrecision = o.PrecisionChoice.fp32,
) -> None:
    """Classify photos with a trained model, in batches."""
    with user_errors():
        from flowerfast.core.errors import FlowerfastError
        from flowerfast.data.imagefiles import collect_image_paths
        from flowerfast.infer.predict import check_top_k, load_model

        if json_ and csv_:
            raise FlowerfastError("choose one of --json and --csv")
        if output is not None and not (json_ or csv_):
            raise FlowerfastError("--out needs --json or --csv")
        loaded = load_model(model, device=o.value(device), trust_pickle=trust_pickle, precision=o.value(precision))
        check_top_k(top_k, len(loaded.classes))
        files = collect_image_paths(paths)
        predictions = loaded.predict(files, top_k=top_k, bs=bs, workers=workers, reporter=make_reporter(to_stderr=True))
        bad = [p for p in predictions if not p.ok]
        if json_:
            _emit(json.dumps([p.to_dict() for p in predictions], indent=2) + "\n", output)
        elif csv_:
            _emit(_predictions_csv(predictions, top_k), output)
        else:
            table = Table(title=f"predictions ({len(predictions) - len(bad)} images, {loaded.spec.arch})")
            table.add_column("file", overflow="fold")
            table.add_column("predicted")
            table.add_column("probability", justify="right")
            if top_k > 1:
                table.add_column(f"top {top_k}")
            for p in predictions:
                if not p.ok:
                    continue
                row = [str(p.path), p.predicted, f"{p.probability:.1%}"]
                if top_k > 1:
                    row.append(", ".join(f"{lbl} {prob:.1%}" for lbl, prob in p.top_k))
                table.add_row(*row)
            console.print(table)
        if bad:
            err_console.print(f"[yellow]{len(bad)} unreadable file(s):[/yellow]")
            for p in bad:
                err_console.print(f"  {p.path}: {p.error}", markup=False, soft_wrap=True)
        if predictions and len(bad) == len(predictions):
            fail(f"none of the {len(bad)} file(s) could be read as an image")


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
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="Folder for metrics.json, predictions.csv and the PNGs. Default: runs/evaluate-<timestamp>.",
            show_default=False,
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of tables.")] = False,
    bs: Bs = INFERENCE_BATCH_SIZE,
    device: Device = o.DeviceChoice.auto,
    workers: Workers = None,
    trust_pickle: TrustPickle = False,
    precision: InferencePrecision = o.PrecisionChoice.fp32,
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
        )
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
    console.print(
        f"report: {files.out_dir}  (metrics.json, predictions.csv, confusion.png, calibration.png"
        + (", mistakes.png)" if files.mistakes else ")"),
        markup=False,
    )


@app.command(epilog="Example: flowerfast calibrate runs/resnet18-20240101-120000/")
def calibrate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder.", show_default=False)],
    device: Device = o.DeviceChoice.auto,
    json_: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Fit the temperature of a run's best model on its validation split and save it in the model.

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


@app.command(epilog="Example: flowerfast export runs/resnet18-20240101-120000/ --format onnx --out flowers.onnx")
def export(
    model: Model,
    format_: Annotated[
        FormatChoice,
        typer.Option(
            "--format",
            help="auto: the format the suffix of --out names; else ONNX when the onnx extra is installed (pip install 'flowerfast\\[onnx]'), else TorchScript.",
        ),
    ] = AUTO,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="File to write. Default: beside the model, e.g. best.onnx / best.pt.",
            show_default=False,
        ),
    ] = None,
    trust_pickle: TrustPickle = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file at --out.")] = False,
) -> None:
    """Export a trained model to ONNX or TorchScript, with a preprocessing JSON beside it."""
    with user_errors():
        from flowerfast.export.exporter import export_model

        result = export_model(model, format=o.value(format_), out=out, trust_pickle=trust_pickle, force=force)
    console.print(f"{result.format}: {result.path}", markup=False)
    console.print(f"preprocessing: {result.preprocessing}", markup=False)
    console.print(f"checked against PyTorch: max abs difference {result.max_abs_diff:.2e}", markup=False)
