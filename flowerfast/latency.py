"""Inference speed of a trained model: latency of one image and throughput of a batch.

Measured as ``flowerfast predict`` runs the network (same loading, same memory layout, batch norms
folded), on random input at the model's size. Stored in the run folder (``latency.json``) so a
report rebuilt later shows the same figures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from .devices import best_device_name
from .runs import read_json, write_json

LATENCY_FILE = "latency.json"
LATENCY_BATCH = 8


def measure_inference(run_dir: Path, device: Optional[str] = None, batch_size: int = LATENCY_BATCH,
                      repeats: int = 3) -> dict:
    """Latency of one image and throughput of a batch for the run's best model, on random input at
    the model's image size. Kept short (a warm-up and a few timed calls): it ranks models, it is no
    benchmark. Stored in ``latency.json`` in the run folder and reused for the same device, batch and layout.
    """
    import torch

    from .inference import for_inference, inference_layout
    from .model import load_classifier

    device = device or best_device_name()
    layout = inference_layout(torch.device(device))
    cache = Path(run_dir) / LATENCY_FILE
    if cache.is_file():
        try:
            stored = read_json(cache)
            if stored.get("device") == device and stored.get("batch_size") == batch_size \
                    and stored.get("layout") == str(layout):
                return stored
        except (OSError, ValueError):
            pass
    model, spec = load_classifier(run_dir / "best.safetensors", device=device)
    model = for_inference(model, torch.device(device))  # as predict runs it

    def timed(x) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        one = torch.randn(1, 3, spec.size, spec.size, device=device).contiguous(memory_format=layout)
        batch = torch.randn(batch_size, 3, spec.size, spec.size, device=device).contiguous(memory_format=layout)
        for _ in range(2):  # warm-up: allocator, kernel selection, caches
            timed(one), timed(batch)
        single = sorted(timed(one) for _ in range(2 * repeats + 1))[repeats]  # the median
        batched = sum(timed(batch) for _ in range(repeats))
    result = {"device": device, "batch_size": batch_size, "layout": str(layout), "image_size": spec.size,
              "latency_ms_per_image": 1000 * single, "images_per_second": batch_size * repeats / batched,
              "threads": torch.get_num_threads() if device == "cpu" else None}
    try:
        write_json(cache, result)
    except OSError:  # a read-only run folder: the report still has the figures
        pass
    return result


