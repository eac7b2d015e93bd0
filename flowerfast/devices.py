"""Which device computes, and how many processes feed it: decided here for every command."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .config import DEVICES, MAX_LOADER_WORKERS
from .errors import FlowerfastError


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def best_device_name() -> str:
    """CUDA, then Apple MPS, then the CPU: what ``auto`` means on this machine."""
    if torch.cuda.is_available():
        return "cuda"
    if mps_available():
        return "mps"
    return "cpu"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the best device here; an explicit device must exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(best_device_name())
    if name == "cuda" and not torch.cuda.is_available():
        raise FlowerfastError("--device cuda was asked for, but no CUDA GPU is available (try --device auto)")
    if name == "mps" and not mps_available():
        raise FlowerfastError("--device mps was asked for, but Apple MPS is not available (try --device auto)")
    if name not in DEVICES:
        raise FlowerfastError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)


def resolve_workers(workers: Optional[int], device: torch.device) -> int:
    """Data-loading processes for training: on a CPU they would fight the model for cores, on a GPU
    they feed it."""
    if workers is not None:
        return workers
    if device.type == "cpu":
        return 0
    return min(MAX_LOADER_WORKERS, os.cpu_count() or 1)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer around them measures the work and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
