"""Which device computes, and how many processes feed it: decided here for every command."""

from __future__ import annotations

import os
from typing import Optional

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.runs.config import DEVICES, MAX_LOADER_WORKERS


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
        raise FlowerfastError(
            "$device=cuda was asked for, but no CUDA GPU is available (try $device=auto)", parameters=("device",)
        )
    if name == "mps" and not mps_available():
        raise FlowerfastError(
            "$device=mps was asked for, but Apple MPS is not available (try $device=auto)", parameters=("device",)
        )
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


X86 = ("x86_64", "amd64", "i686", "i386")
ARM = ("aarch64", "arm64")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (``flags`` on x86, ``Features`` on Arm); empty
    where ``/proc/cpuinfo`` does not exist."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def native_bf16_from_flags(flags: set[str], machine: str) -> Optional[bool]:
    """Whether CPU ``flags`` include bf16 arithmetic in hardware: AVX512-BF16 or AMX-BF16 on x86,
    BF16 on Arm; ``None`` when the flags do not tell (none listed, another architecture)."""
    if not flags:
        return None
    if machine in X86:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    if machine in ARM:
        return "bf16" in flags
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm).
    Without it bf16 is emulated and slower than fp32.

    Why the CPU's own flags first: oneDNN's ``_is_mkldnn_bf16_supported`` answers yes on any
    AVX-512 CPU, Skylake and Cascade Lake included, which have no bf16 instructions and would
    train in slow, emulated bf16. Where no flags can be read (macOS), oneDNN's answer stands.
    """
    import platform

    native = native_bf16_from_flags(cpu_flags(), platform.machine().lower())
    if native is not None:
        return native
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def choose_precision(requested: str, device_type: str, cpu_bf16: bool, cuda_bf16: bool, depthwise: bool = False) -> str:
    """The training precision for a device, as a pure decision (tested case by case).

    ``auto``: bf16 autocast where the hardware has bf16 (twice the throughput of fp32 on such a
    CPU, and on Ampere or newer GPUs, with fp32's range, so no loss scaling); fp16 with loss
    scaling on older GPUs; fp32 elsewhere (Apple MPS, CPUs without bf16). On a CPU, a network
    built of depthwise convolutions (``depthwise``: EfficientNet, MobileNet) trains in fp32: there
    oneDNN's bf16 backward pass of those convolutions is the slower one (EfficientNet-Lite0 at 128
    px on an AMX Xeon, 1 thread: 74 s an fp32 epoch against 110 s in bf16). An explicit request is
    honoured where it can run at all.
    """
    if requested == "fp32":
        return "fp32"
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if cuda_bf16 else "fp16"
        if device_type == "cpu" and cpu_bf16:
            return "fp32" if depthwise else "bf16"
        return "fp32"
    if requested == "fp16" and device_type != "cuda":
        raise FlowerfastError(
            "$precision=fp16 needs a CUDA GPU (it trains with loss scaling there); use $precision=bf16 or fp32",
            parameters=("precision",),
        )
    if requested == "bf16":
        if device_type == "cuda" and not cuda_bf16:
            raise FlowerfastError(
                "$precision=bf16: this GPU has no bf16; use $precision=fp16 or fp32", parameters=("precision",)
            )
        if device_type not in ("cpu", "cuda"):
            raise FlowerfastError(
                f"$precision=bf16 is not supported on {device_type}; use fp32", parameters=("precision",)
            )
    return requested


AUTO_PRECISION_ENV = "FLOWERFAST_AUTO_PRECISION"
"""What ``precision="auto"`` means when set (``fp32``, ``bf16`` or ``fp16``): one precision on
every machine, for a CI or a test suite whose numbers must not depend on the CPU it lands on."""


def resolve_precision(requested: str, device: torch.device, training_network=None) -> str:
    """:func:`choose_precision` with this machine's capabilities (and, for training, the network's
    kind of convolutions); ``auto`` is ``$FLOWERFAST_AUTO_PRECISION`` where that is set."""
    pinned = os.environ.get(AUTO_PRECISION_ENV)
    if requested == "auto" and pinned:
        if pinned not in ("fp32", "bf16", "fp16"):
            raise FlowerfastError(f"{AUTO_PRECISION_ENV} must be fp32, bf16 or fp16 (got {pinned!r})")
        requested = pinned
    return choose_precision(
        requested,
        device.type,
        cpu_bf16=device.type == "cpu" and cpu_has_native_bf16(),
        cuda_bf16=device.type == "cuda" and cuda_has_bf16(),
        depthwise=training_network is not None and has_depthwise_convolutions(training_network),
    )


def has_depthwise_convolutions(network) -> bool:
    """Whether ``network`` has depthwise convolutions (one group per input channel)."""
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in network.modules())


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The dtype autocast runs in for a precision; ``None`` for fp32 (no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def preferred_layout(device: torch.device) -> torch.memory_format:
    """Channels-last (NHWC) on CPUs and CUDA GPUs, whose convolution libraries (oneDNN, cuDNN) run
    faster in it, above all in bf16; the usual NCHW elsewhere. For training and inference alike."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def use_threads(threads: Optional[int]) -> int:
    """Set torch's compute threads when asked; return the number in use. torch's own default (one
    per core) is right for a training process whose data loading runs in the main process."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
