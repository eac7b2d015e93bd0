"""OpenVINO IR (``.xml`` with its weights in ``.bin`` beside it), run by the OpenVINO runtime;
needs the ``openvino`` extra. The format of ``flowerfast export --int8``
(:mod:`flowerfast.export.quantize`): OpenVINO's CPU kernels run the int8 network NNCF writes.

Converted from the PyTorch network by ``openvino.convert_model`` with a dynamic batch axis, and
saved with fp32 weights (``compress_to_fp16=False``: OpenVINO halves them by default, which would
break the check against PyTorch).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from flowerfast.core.errors import FlowerfastError, first_line
from flowerfast.export.formats import ExportFormat


def convert(network: torch.nn.Module, example: torch.Tensor):
    """``network`` as an ``openvino.Model`` traced on ``example``, any batch size."""
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                return ov.convert_model(network, example_input=example, input=[(-1, *example.shape[1:])])
        except Exception as exc:
            raise FlowerfastError(f"OpenVINO conversion failed: {type(exc).__name__}: {first_line(exc)}") from None


def serialized(model) -> dict[str, bytes]:
    """An ``openvino.Model``'s two files, as :meth:`ExportFormat.files` names them."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="flowerfast-openvino-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return {"": xml.read_bytes(), ".bin": xml.with_suffix(".bin").read_bytes()}


def write(network: torch.nn.Module, example: torch.Tensor) -> dict[str, bytes]:
    return serialized(convert(network, example))


def run(path: Path, batch: torch.Tensor) -> torch.Tensor:
    """Probabilities from an OpenVINO IR file on the CPU, as predict runs it."""
    from flowerfast.infer.exported import OpenVinoNetwork

    return OpenVinoNetwork(path)(batch)


FORMAT = ExportFormat(
    name="openvino",
    label="OpenVINO",
    suffixes=(".xml",),
    companions=(".bin",),
    write=write,
    run=run,
    requires=("openvino",),
    extra="openvino",
)
