"""Exporting a trained classifier to ONNX or TorchScript, to run without flowerfast (or Python).

The exported network takes a normalised ``float32`` batch ``(N, 3, size, size)`` and returns
softmax probabilities; everything needed to prepare that batch (resize, crop, mean, std) and to
read the answer (class names) is written to a JSON file beside it. Each export is run once against
the PyTorch model on a random batch, and the largest difference is reported, so a broken export
is caught here and not in production.
"""

from __future__ import annotations

import copy
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.infer.predict import LoadedModel, as_loaded_model, check_finite, check_pickle_allowed

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
CHECK_TOLERANCE = 1e-4
ONNX_OPSET = 17


@dataclass
class ExportResult:
    """What was written and how closely the export matches PyTorch (max abs difference in probabilities)."""

    path: Path
    preprocessing: Path
    format: str
    max_abs_diff: float
    tolerance: float = CHECK_TOLERANCE


class WithSoftmax(torch.nn.Module):
    """The classifier plus its softmax, so exported outputs are probabilities."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        return torch.softmax(self.network(x), dim=-1)


def preprocessing_info(model: LoadedModel, fmt: str) -> dict:
    """The preprocessing recipe, written for someone implementing it without flowerfast.

    The model's :class:`~flowerfast.infer.preprocessing.Preprocessing` describes itself (resize and crop,
    or a fastai export's own transforms); the input and output of the exported file are added here.
    """
    spec = model.spec
    recipe = model.preprocessing.describe()
    steps = recipe.pop("steps")
    channels = model.preprocessing.channels
    return {
        "format": "flowerfast-preprocessing",
        "model_format": fmt,
        "classes": list(spec.classes),
        "size": spec.size,
        **recipe,
        "input": {"name": "input", "layout": "NCHW", "dtype": "float32",
                  "shape": ["batch", channels, spec.size, spec.size]},
        "output": {"name": "probabilities", "shape": ["batch", len(spec.classes)], "meaning": "softmax over classes"},
        "steps": steps,
        "source_model": str(model.source),
        "arch": spec.arch,
    }


def default_export_path(model: LoadedModel, fmt: str) -> Path:
    src = model.source
    if src.is_dir():
        from flowerfast.models.classifier import model_paths

        src = model_paths(src)[0]
    return src.with_suffix(FORMATS[fmt])


def export_model(model_or_path, format: str = "auto", out: Optional[Path | str] = None, check: bool = True,
                 trust_pickle: bool = False, force: bool = False) -> ExportResult:
    """Write the model as ONNX (``.onnx``) or TorchScript (``.pt``) plus ``<file>.json`` preprocessing.

    ``out`` defaults to the model file with the format's suffix (``runs/x/best.onnx``); an existing
    file is replaced only with ``force``. The export is written beside its target and checked
    there; only an export that passes its check is put in place, so a failed one leaves nothing.
    Exports run on the CPU with a dynamic batch axis. ``format="auto"`` follows the suffix of
    ``out`` (``.onnx``, ``.pt``); without one it is ONNX where the ``onnx`` extra is installed and
    TorchScript (which needs nothing more) otherwise.
    """
    fmt = str(format).lower()
    if fmt == "auto":
        suffix = Path(out).suffix.lower() if out is not None else ""
        fmt = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}.get(
            suffix, "onnx" if onnx_available() else "torchscript")
    if fmt not in FORMATS:
        raise FlowerfastError(f"unknown export format {format!r}: use {' or '.join(FORMATS)}")
    check_pickle_allowed(model_or_path, trust_pickle)  # before anything else: never a hint to install onnx first
    if fmt == "onnx":
        _require_onnx()
    model = as_loaded_model(model_or_path, device="cpu", trust_pickle=trust_pickle)
    if model.device.type != "cpu":
        model = as_loaded_model(model.source, device="cpu", trust_pickle=True)  # already opened by the caller
    path = Path(out).expanduser() if out is not None else default_export_path(model, fmt)
    if path.is_dir():
        raise FlowerfastError(f"--out must be a file, not a folder: {path}")
    if not path.parent.exists():
        raise FlowerfastError(f"output folder does not exist: {path.parent}")
    info_target = path.with_name(path.name + ".json")
    if not force:
        for existing in (path, info_target):
            if existing.exists():
                raise FlowerfastError(f"{existing} already exists: pass --force to replace it")
    if not path.parent.is_dir():
        raise FlowerfastError(f"cannot write to {path.parent}: it is a file, not a folder")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise FlowerfastError(f"cannot write to {path.parent}: permission denied")
    # A plain-layout copy: the exported weights should not depend on the layout used for speed here.
    wrapped = WithSoftmax(copy.deepcopy(model.network).to(memory_format=torch.contiguous_format)).eval()
    shape = (model.preprocessing.channels, model.spec.size, model.spec.size)  # channels, height, width
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    check_batch = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = check_finite(wrapped(check_batch), model.source)
    data = _export_onnx(wrapped, example) if fmt == "onnx" else _export_torchscript(wrapped, example)
    from flowerfast.core.files import atomic_write_bytes, write_json

    staged = path.with_name(f".{path.name}.{os.getpid()}.staged{path.suffix}")  # checked here, then put in place
    try:
        atomic_write_bytes(staged, data)
        diff = float("nan")
        if check:
            actual = run_onnx(staged, check_batch) if fmt == "onnx" else run_torchscript(staged, check_batch)
            diff = float((expected - actual).abs().max())
            if not diff <= CHECK_TOLERANCE:
                raise FlowerfastError(f"the exported {fmt} model differs from PyTorch by {diff:.2e} "
                                      f"(more than {CHECK_TOLERANCE:.0e}); nothing was written")
        info_path = write_json(info_target, preprocessing_info(model, fmt))
        os.replace(staged, path)
    except OSError as exc:
        raise FlowerfastError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        staged.unlink(missing_ok=True)
    return ExportResult(path=path, preprocessing=info_path, format=fmt, max_abs_diff=diff)


def onnx_available() -> bool:
    """Whether the ``onnx`` extra (onnx and onnxruntime) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise FlowerfastError("ONNX export needs onnx and onnxruntime: pip install flowerfast[onnx]") from None


def _export_onnx(network: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The TorchScript-based exporter (``dynamo=False``): it needs no extra packages and gives a
    single self-contained file with a dynamic batch axis."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network, (example,), buf, dynamo=False, input_names=["input"],
                              output_names=["probabilities"], opset_version=ONNX_OPSET,
                              dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
        except Exception as exc:
            raise FlowerfastError(f"ONNX export failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    return buf.getvalue()


def _export_torchscript(network: torch.nn.Module, example: torch.Tensor) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(network, example)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def run_onnx(path: Path, batch: torch.Tensor) -> torch.Tensor:
    """Probabilities from an exported ONNX file, via onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": batch.numpy()})
    return torch.from_numpy(out)


def run_torchscript(path: Path, batch: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(batch)
