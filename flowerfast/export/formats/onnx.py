"""ONNX (``.onnx``), checked with onnxruntime; needs the ``onnx`` extra.

Written by torch's TorchScript-based exporter (``dynamo=False``): it needs no packages beyond
the extra and gives one self-contained file with a dynamic batch axis. (This module is
``flowerfast.export.formats.onnx``; its imports are absolute, so ``onnxruntime`` is the real one.)
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from flowerfast.core.errors import FlowerfastError, first_line
from flowerfast.export.formats import ExportFormat

OPSET = 17


def write(network: torch.nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                network,
                (example,),
                buf,
                dynamo=False,
                input_names=["input"],
                output_names=["probabilities"],
                opset_version=OPSET,
                dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            )
        except Exception as exc:
            raise FlowerfastError(f"ONNX export failed: {type(exc).__name__}: {first_line(exc)}") from None
    return buf.getvalue()


def run(path: Path, batch: torch.Tensor) -> torch.Tensor:
    """Probabilities from an exported ONNX file, via onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": batch.numpy()})
    return torch.from_numpy(out)


FORMAT = ExportFormat(
    name="onnx",
    label="ONNX",
    suffixes=(".onnx",),
    write=write,
    run=run,
    requires=("onnx", "onnxruntime"),
    extra="onnx",
    auto_rank=0,
)
