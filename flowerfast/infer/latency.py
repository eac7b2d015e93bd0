"""Inference speed of a trained model: latency of one image and throughput of a batch.

Measured on the network exactly as ``flowerfast predict`` runs it: loaded by
:func:`flowerfast.infer.predict.load_model` (same rebuilding, batch norms folded, same memory layout),
on random input at the model's size, by default on the device the run trained on when this machine
has it. Stored in the run folder (``latency.json``, through :class:`~flowerfast.runs.folder.RunFolder`)
and reused for the same device, batch size and layout, so a report rebuilt later shows the same
figures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from flowerfast.hardware.devices import best_device_name, mps_available, resolve_device, resolve_precision, synchronize
from flowerfast.runs.folder import RunFolder

LATENCY_BATCH = 8


def available_here(device: Optional[str]) -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) can compute on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return False
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
    if dev.type == "mps":
        return mps_available()
    return False


def default_device(run_dir: Path | str) -> str:
    """The device the run trained on (its ``config.json``), when this machine has it; else the best here.

    Why: a report set beside the run's training figures should time the model on the same kind
    of device, not on whatever happens to be fastest where the report is built.
    """
    config = RunFolder(run_dir).read_config()
    trained_on = config.device if config is not None else None
    if isinstance(trained_on, str) and trained_on != "auto" and available_here(trained_on):
        return trained_on
    return best_device_name()


def time_model(model, dev, batch_size: int, repeats: int) -> tuple[list[float], list[float]]:
    """Sorted seconds of ``2 * repeats + 1`` one-image calls and sorted images per second of
    ``repeats`` batch calls, after two warm-up rounds (allocator, kernel selection, caches)."""
    import torch

    def timed(x) -> float:
        synchronize(dev)
        start = time.perf_counter()
        model.forward(x)
        synchronize(dev)
        return time.perf_counter() - start

    shape = (model.preprocessing.channels, model.spec.size, model.spec.size)
    with torch.inference_mode():
        one = torch.randn(1, *shape, device=dev).contiguous(memory_format=model.memory_format)
        batch = torch.randn(batch_size, *shape, device=dev).contiguous(memory_format=model.memory_format)
        for _ in range(2):
            timed(one), timed(batch)
        singles = sorted(timed(one) for _ in range(2 * repeats + 1))
        rates = sorted(batch_size / timed(batch) for _ in range(repeats))
    return singles, rates


def measure_inference(
    run_dir: Path,
    device: Optional[str] = None,
    batch_size: int = LATENCY_BATCH,
    repeats: int = 3,
    precision: str = "fp32",
) -> dict:
    """Latency of one image and throughput of a batch for the run's best model, on random input at
    the model's image size. Kept short (a warm-up and a few timed calls): it ranks models, it is no
    benchmark. ``device`` defaults to :func:`default_device`. Stored in ``latency.json`` in the run
    folder and reused for the same device, batch size, layout and precision (``fp32`` unless
    asked: the numbers an exported or served model gives).
    """
    import torch

    from flowerfast.infer.optimize import inference_layout
    from flowerfast.infer.predict import check_precision, load_model

    folder = RunFolder(run_dir)
    device = default_device(run_dir) if device in (None, "auto") else str(device)
    layout = inference_layout(torch.device(device))
    precision = resolve_precision(check_precision(precision), torch.device(device))
    stored = folder.read_latency()
    if (
        isinstance(stored, dict)
        and stored.get("device") == device
        and stored.get("batch_size") == batch_size
        and stored.get("layout") == str(layout)
        and stored.get("precision", "fp32") == precision
        and "latency_ms_min" in stored
    ):
        return stored
    dev = torch.device(device) if ":" in device else resolve_device(device)  # a clear error for a missing one
    model = load_model(folder.best_model, device=dev, precision=precision)  # the network as predict runs it
    spec = model.spec
    singles, rates = time_model(model, dev, batch_size, repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {
        "device": device,
        "batch_size": batch_size,
        "layout": str(layout),
        "precision": model.precision,
        "image_size": spec.size,
        "latency_ms_per_image": 1000 * singles[repeats],
        "latency_ms_min": 1000 * singles[0],
        "latency_ms_max": 1000 * singles[-1],
        "single_repeats": len(singles),
        "images_per_second": rates[len(rates) // 2],
        "images_per_second_min": rates[0],
        "images_per_second_max": rates[-1],
        "batch_repeats": len(rates),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "load_average": load,
        "cpu_count": os.cpu_count(),
    }
    folder.write_latency(result)  # best effort: a read-only run folder still gets its figures
    return result
