"""Writing a trained classifier in one of the export formats (:mod:`flowerfast.export.formats`),
checked against PyTorch before it is put in place."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.export.formats import ExportFormat, choose_format
from flowerfast.infer.exported import info_path
from flowerfast.infer.predict import LoadedModel, as_loaded_model, check_finite, check_pickle_allowed

CHECK_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """What was written and how closely the export matches PyTorch (max abs difference in probabilities)."""

    path: Path
    preprocessing: Path
    format: str
    max_abs_diff: float
    tolerance: float = CHECK_TOLERANCE


class WithSoftmax(torch.nn.Module):
    """The classifier plus its calibration and softmax, so exported outputs are the probabilities
    ``predict`` gives (the logits divided by the model's temperature inside the graph)."""

    def __init__(self, network: torch.nn.Module, temperature: float = 1.0):
        super().__init__()
        self.network = network
        self.temperature = float(temperature)

    def forward(self, x):
        return torch.softmax(self.network(x) / self.temperature, dim=-1)


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
        "input": {
            "name": "input",
            "layout": "NCHW",
            "dtype": "float32",
            "shape": ["batch", channels, spec.size, spec.size],
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(spec.classes)],
            "meaning": "softmax over classes of the logits divided by the temperature (in the graph)",
        },
        "temperature": spec.temperature,
        "steps": steps,
        "source_model": str(model.source),
        "arch": spec.arch,
    }


def default_export_path(model: LoadedModel, fmt: ExportFormat) -> Path:
    src = model.source
    if src.is_dir():
        from flowerfast.models.classifier import model_paths

        src = model_paths(src)[0]
    return src.with_suffix(fmt.suffix)


def export_model(
    model_or_path,
    format: str = "auto",
    out: Optional[Path | str] = None,
    check: bool = True,
    trust_pickle: bool = False,
    force: bool = False,
) -> ExportResult:
    """Write the model in ``format`` (``onnx``: ``.onnx``, ``torchscript``: ``.pt``; see
    :func:`flowerfast.export.format_names`) plus ``<file>.json``, its preprocessing.

    ``out`` defaults to the model file with the format's suffix (``runs/x/best.onnx``); an existing
    file is replaced only with ``force``. The export is written beside its target and checked
    there; only an export that passes its check is put in place, so a failed one leaves nothing.
    Exports run on the CPU with a dynamic batch axis. ``format="auto"`` follows the suffix of
    ``out`` (``.onnx``, ``.pt``); without one it is the preferred format installed: ONNX where
    the ``onnx`` extra is installed, else TorchScript (which needs nothing more).
    """
    fmt = choose_format(format, out)
    check_pickle_allowed(model_or_path, trust_pickle)  # before anything else: never a hint to install onnx first
    fmt.require()
    model = as_loaded_model(model_or_path, device="cpu", trust_pickle=trust_pickle)
    if model.device.type != "cpu":
        model = as_loaded_model(model.source, device="cpu", trust_pickle=True)  # already opened by the caller
    path = export_target(Path(out).expanduser() if out is not None else default_export_path(model, fmt), force)
    # A plain-layout copy: the exported weights should not depend on the layout used for speed here.
    network = copy.deepcopy(model.network).to(memory_format=torch.contiguous_format)
    wrapped = WithSoftmax(network, model.spec.temperature).eval()
    shape = (model.preprocessing.channels, model.spec.size, model.spec.size)  # channels, height, width
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    check_batch = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = check_finite(wrapped(check_batch), model.source)
    data = fmt.write(wrapped, example)
    diff = put_in_place(
        fmt, data, path, preprocessing_info(model, fmt.name), (check_batch, expected) if check else None
    )
    return ExportResult(path=path, preprocessing=info_path(path), format=fmt.name, max_abs_diff=diff)


def export_target(path: Path, force: bool) -> Path:
    """``path``, checked to be a file that can be written (and replaced only with ``force``)."""
    if path.is_dir():
        raise FlowerfastError(f"$out must be a file, not a folder: {path}", parameters=("out",))
    if not path.parent.exists():
        raise FlowerfastError(f"output folder does not exist: {path.parent}")
    if not force:
        for existing in (path, info_path(path)):
            if existing.exists():
                raise FlowerfastError(
                    f"{existing} already exists: pass $force=True to replace it", parameters=("force",)
                )
    if not path.parent.is_dir():
        raise FlowerfastError(f"cannot write to {path.parent}: it is a file, not a folder")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise FlowerfastError(f"cannot write to {path.parent}: permission denied")
    return path


def put_in_place(
    fmt: ExportFormat, data: bytes, path: Path, info: dict, check: Optional[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Write ``data`` beside ``path``, run it on ``check`` (a batch and PyTorch's probabilities),
    then move it to ``path`` with its preprocessing JSON; the largest difference (``nan``
    unchecked). An export that differs by more than :data:`CHECK_TOLERANCE` is removed."""
    from flowerfast.core.files import atomic_write_bytes, write_json

    staged = path.with_name(f".{path.name}.{os.getpid()}.staged{path.suffix}")  # checked here, then put in place
    try:
        atomic_write_bytes(staged, data)
        diff = float("nan")
        if check is not None:
            batch, expected = check
            diff = float((expected - fmt.run(staged, batch)).abs().max())
            if not diff <= CHECK_TOLERANCE:
                raise FlowerfastError(
                    f"the exported {fmt.name} model differs from PyTorch by {diff:.2e} "
                    f"(more than {CHECK_TOLERANCE:.0e}); nothing was written"
                )
        write_json(info_path(path), info)
        os.replace(staged, path)
    except OSError as exc:
        raise FlowerfastError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        staged.unlink(missing_ok=True)
    return diff
