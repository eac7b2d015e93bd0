"""TorchScript (``.pt``, also ``.ts``), traced: runs with torch alone, in Python or C++ (libtorch)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from flowerfast.export.formats import ExportFormat


def write(network: torch.nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(network, example)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def run(path: Path, batch: torch.Tensor) -> torch.Tensor:
    """Probabilities from a saved TorchScript module, on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(batch)


FORMAT = ExportFormat(
    name="torchscript", label="TorchScript", suffixes=(".pt", ".ts"), write=write, run=run, auto_rank=1
)
