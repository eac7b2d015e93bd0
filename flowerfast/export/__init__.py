"""Exporting a trained classifier to run without flowerfast (or Python): ONNX, TorchScript, or
any format of :mod:`flowerfast.export.formats` (one module per format).

The exported network takes a normalised ``float32`` batch ``(N, 3, size, size)`` and returns
softmax probabilities; everything needed to prepare that batch (resize, crop, mean, std) and to
read the answer (class names) is written to a JSON file beside it. Each export is run once against
the PyTorch model on a random batch, and the largest difference is reported, so a broken export
is caught here and not in production.

Importing this package imports nothing heavy: :func:`export_model` and :class:`ExportResult`
(:mod:`flowerfast.export.exporter`, which needs torch) load on first use, and
:func:`format_names` reads the formats' names from their files, for ``--help``.
"""

from __future__ import annotations

import importlib

# The registry is flowerfast.export.formats: formats(), get_format(name), format_names(). Its
# formats() is not bound here, where the name is the subpackage's.
from flowerfast.export.formats import AUTO, ExportFormat, format_names, get_format

_LAZY = {"export_model": "exporter", "ExportResult": "exporter", "CHECK_TOLERANCE": "exporter"}

__all__ = ["AUTO", "CHECK_TOLERANCE", "ExportFormat", "ExportResult", "export_model", "format_names", "get_format"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
