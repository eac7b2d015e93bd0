"""``flowerfast predict`` and ``flowerfast export``, and the options the commands that use a model share.

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
    typer.Argument(
        help="Run folder, or a model file (.safetensors or .json), or an exported .onnx or .xml (not for export).",
        show_default=False,
        metavar="MODEL",
    ),
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


MinConfidence = Annotated[
    Optional[float],
    typer.Option(
        "--min-confidence",
        metavar="P",
        help="Answer 'unknown' when the top probability is below P (0 to 1); evaluate suggests one for --target-accuracy.",
        show_default=False,
    ),
]
Tta = Annotated[
    bool,
    typer.Option("--tta", help="Test-time augmentation: average the photo as is, mirrored and zoomed (4x the work)."),
]
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
    """One row per file: the top classes with their probabilities, whether the answer is unknown
    (then ``predicted`` is empty, as JSON's ``null``, and ``probability`` is the best guess's),
    and the reason a file could not be read."""
    from flowerfast.core.files import csv_text

    header = ["path", "predicted", "probability"]
    for k in range(2, top_k + 1):
        header += [f"predicted_{k}", f"probability_{k}"]
    rows = []
    for p in predictions:
        row = [str(p.path)]
        for lbl, prob in p.top_k or [("", "")] * top_k:
            row += [lbl, round(prob, 6) if prob != "" else ""]
        if p.unknown:
            row[1] = ""
        rows.append(row + [str(p.unknown).lower() if p.ok else "", p.error or ""])
    return csv_text(header + ["unknown", "error"], rows)


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
    min_confidence: MinConfidence = None,
    tta: Tta = False,
    cam: Annotated[
        Optional[Path],
        typer.Option(
            "--cam",
            metavar="DIR",
            help="Also write a Grad-CAM heatmap of each photo (where the model looked) to DIR (needs the cam extra).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Classify photos with a trained model, in batches."""
    with user_errors():
        from flowerfast.core.errors import FlowerfastError
        from flowerfast.data.imagefiles import collect_image_paths
        from flowerfast.infer.answers import check_min_confidence, check_top_k
        from flowerfast.infer.predict import load_model

        check_min_confidence(min_confidence)
        if cam is not None:
            from flowerfast.infer.cam import require_cam_extra

            require_cam_extra()
        if json_ and csv_:
            raise FlowerfastError("choose one of --json and --csv")
        if output is not None and not (json_ or csv_):
            raise FlowerfastError("--out needs --json or --csv")
        loaded = load_model(model, device=o.value(device), trust_pickle=trust_pickle, precision=o.value(precision))
        check_top_k(top_k, len(loaded.classes))
        files = collect_image_paths(paths)
        predictions = loaded.predict(
            files,
            top_k=top_k,
            bs=bs,
            workers=workers,
            reporter=make_reporter(to_stderr=True),
            min_confidence=min_confidence,
            tta=tta,
        )
        bad = [p for p in predictions if not p.ok]
        if json_:
            _emit(json.dumps([p.to_dict() for p in predictions], indent=2) + "\n", output)
        elif csv_:
            _emit(_predictions_csv(predictions, top_k), output)
        else:
            console.print(_predictions_table(predictions, top_k, loaded.spec.arch, min_confidence))
        if cam is not None:
            _write_heatmaps(loaded, [p.path for p in predictions if p.ok], cam)
        if bad:
            err_console.print(f"[yellow]{len(bad)} unreadable file(s):[/yellow]")
            for p in bad:
                err_console.print(f"  {p.path}: {p.error}", markup=False, soft_wrap=True)
        if predictions and len(bad) == len(predictions):
            fail(f"none of the {len(bad)} file(s) could be read as an image")


def _predictions_table(predictions, top_k: int, arch: str, min_confidence: Optional[float]) -> Table:
    readable = [p for p in predictions if p.ok]
    unknown = sum(p.unknown for p in readable)
    title = f"predictions ({len(readable)} images, {arch})"
    if min_confidence is not None:
        title = (
            f"predictions ({len(readable)} images, {unknown} unknown at --min-confidence {min_confidence:g}, {arch})"
        )
    table = Table(title=title)
    table.add_column("file", overflow="fold")
    table.add_column("predicted")
    table.add_column("probability", justify="right")
    if top_k > 1:
        table.add_column(f"top {top_k}")
    for p in readable:
        predicted = (
            p.predicted
            if not p.unknown
            else f"[yellow]unknown[/yellow] [dim]({'unlike the training photos; ' if p.unfamiliar else ''}"
            f"best guess {p.top_k[0][0]})[/dim]"
        )
        row = [str(p.path), predicted, f"{p.probability:.1%}"]
        if top_k > 1:
            row.append(", ".join(f"{lbl} {prob:.1%}" for lbl, prob in p.top_k))
        table.add_row(*row)
    return table


def _write_heatmaps(loaded, paths: list[Path], out_dir: Path) -> None:
    from flowerfast.infer.cam import write_overlays

    written = write_overlays(loaded, paths, out_dir.expanduser(), reporter=make_reporter(to_stderr=True))
    failed = [(path, reason) for path, png, reason in written if png is None]
    err_console.print(f"wrote {len(written) - len(failed)} Grad-CAM heatmap(s) to {out_dir}", markup=False)
    for path, reason in failed:
        err_console.print(f"  no heatmap for {path}: {reason}", markup=False, soft_wrap=True)


@app.command(
    epilog="Example: flowerfast export runs/resnet18-20240101-120000/ --format onnx --out flowers.onnx; "
    "for OpenVINO int8, checked on the run's validation photos: flowerfast export runs/flowers/ --int8"
)
def export(
    model: Model,
    format_: Annotated[
        FormatChoice,
        typer.Option(
            "--format",
            help="auto: the format the suffix of --out names; else OpenVINO with --int8, else ONNX when the onnx extra is installed (pip install 'flowerfast\\[onnx]'), else TorchScript.",
        ),
    ] = AUTO,
    out: Annotated[
        Optional[Path], o.out_option("File to write. Default: beside the model, e.g. best.onnx / best.pt / best.xml.")
    ] = None,
    trust_pickle: TrustPickle = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file at --out.")] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantize to int8 (OpenVINO with NNCF; pip install 'flowerfast\\[openvino]'), calibrated and checked on the run's validation photos.",
        ),
    ] = False,
    max_accuracy_loss: Annotated[
        Optional[float],
        typer.Option(
            "--max-accuracy-loss",
            metavar="POINTS",
            help="With --int8: refuse the export when it loses more than this many points of validation accuracy against fp32.",
            show_default="1.0",
        ),
    ] = None,
) -> None:
    """Export a trained model to ONNX, TorchScript or OpenVINO (fp32 or int8), with a preprocessing JSON beside it."""
    with user_errors():
        from flowerfast.export.exporter import export_model

        result = export_model(
            model,
            format=o.value(format_),
            out=out,
            trust_pickle=trust_pickle,
            force=force,
            int8=int8,
            max_accuracy_loss=max_accuracy_loss,
        )
    console.print(f"{result.format}{' int8' if result.int8 else ''}: {result.path}", markup=False)
    console.print(f"preprocessing: {result.preprocessing}", markup=False)
    if result.int8 is not None:
        c = result.int8
        console.print(
            f"checked on the run's {c.images} validation photos: int8 {c.int8_accuracy:.1%} right, fp32 "
            f"{c.fp32_accuracy:.1%} ({-c.loss_points:+.1f} points); top-1 agreement with fp32 {c.agreement:.1%}; "
            f"calibrated on {c.calibration_images} of them",
            markup=False,
        )
    else:
        console.print(f"checked against PyTorch: max abs difference {result.max_abs_diff:.2e}", markup=False)
