"""What the benchmark scripts share: the photo set they read, the machine line they print, and
running ``flowerfast`` through its real CLI entry point inside a benchmark's child process."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

SHARED_FLOWERS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flowers"


def add_data_argument(ap) -> None:
    """``--data``, the folder of class folders every benchmark reads (the shared flowers by default)."""
    ap.add_argument(
        "--data",
        type=Path,
        default=SHARED_FLOWERS,
        help="folder of class folders (default: ../shared/data/flowers next to the repository)",
    )


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what Python knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: str = "cpu") -> str:
    """One line saying where the figures were measured: processor, cores, torch and its threads,
    the GPU when the benchmark runs on one, Python, and the load of the machine right now."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return (
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads{gpu}; python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}"
    )


def run_flowerfast(argv: list[str]) -> None:
    """``flowerfast ARGV`` through the CLI's own entry point, in this process (so the benchmark's
    child measures exactly what a user runs); a non-zero exit is raised as ``SystemExit``."""
    from flowerfast.cli import main

    sys.argv = ["flowerfast", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if code:
        raise SystemExit(code)
