"""Benchmark: one training process against several (torchrun, DDP), on the same job.

Not a test; prints the figures side by side with the ratio.

    python benchmarks/bench_distributed.py [--data ../shared/data/flowers] [--arch resnet18] [--size 64]
                                           [--epochs 2] [--processes 2] [--threads 2] [--device cpu]

The same job runs twice, each through the real CLI in its own process tree, from scratch (no
pretrained weights), with the same split, seed, learning rate and effective batch size:

  (1) ``flowerfast train`` in one process with ``--threads`` compute threads;
  (N) ``torchrun --nproc_per_node=N -m flowerfast train`` with ``--threads // N`` threads each
      (on a CPU; one GPU each with ``--device cuda``), each process a batch of ``--bs // N`` so
      that a step averages the same ``--bs`` images.

It prints, for each, the wall time of the whole command, the training images per second (training
images x epochs / the epochs' seconds, from ``summary.json``) and the best validation accuracy, then
the ratio of the two speeds. Photos are decoded every epoch (``--no-cache``), so neither run finds
the other's cache warm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name


def parse_args(argv=None):
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=here.parent / "shared" / "data" / "flowers",
        help="folder of class folders (default: ../shared/data/flowers next to the repository)",
    )
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bs", type=int, default=32, help="the effective batch: per process, --bs / --processes")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="compute threads of the single process, shared out")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--extra", default="", help="more flowerfast train options for both, written with '='")
    return ap.parse_args(argv)


def run(label: str, command: list[str], cwd: Path, env: dict) -> dict:
    print(f"{label}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    return {
        "wall": wall,
        "images_per_second": summary["train_images_per_second"],
        "valid_accuracy": summary["best_valid_accuracy"],
        "final_accuracy": summary["final_valid_accuracy"],
        "seconds": summary["seconds"],
        "run_dir": summary["run_dir"],
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.bs % args.processes:
        sys.exit(f"--bs {args.bs} does not divide among {args.processes} processes")
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    env = {**os.environ, "CI": "1"}
    common = [
        "train",
        "--data",
        str(Path(args.data).resolve()),
        "--arch",
        args.arch,
        "--size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--no-pretrained",
        "--device",
        args.device,
        "--no-cache",
        "--json",
        *[a for a in args.extra.split() if a],
    ]
    per_thread = max(1, args.threads // args.processes)
    load_before = os.getloadavg()[0]
    one = run(
        "(1) one process",
        [
            sys.executable,
            "-m",
            "flowerfast",
            *common,
            "--bs",
            str(args.bs),
            "--threads",
            str(args.threads),
            "--out",
            str(tmp / "one"),
        ],
        tmp,
        env,
    )
    many = run(
        f"(N) {args.processes} processes",
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.processes}",
            "-m",
            "flowerfast",
            *common,
            "--bs",
            str(args.bs // args.processes),
            "--threads",
            str(per_thread),
            "--out",
            str(tmp / "many"),
        ],
        tmp,
        {**env, "OMP_NUM_THREADS": str(per_thread)},
    )
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if torch.cuda.is_available() else ""
    print()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}; "
        f"python {platform.python_version()}; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"job: {args.arch} {args.size}px, {args.epochs} epochs, effective batch {args.bs}, seed {args.seed}, "
        f"from scratch, {args.device}, photos from {args.data}"
    )
    print(f"{'':46} {'wall s':>7} {'train img/s':>12} {'best valid acc':>15} {'final valid acc':>16}")
    rows = [
        (f"(1) 1 process x {args.threads} threads, bs {args.bs}", one),
        (f"(N) {args.processes} processes x {per_thread} thread(s), bs {args.bs // args.processes} each", many),
    ]
    for name, r in rows:
        print(
            f"{name:46} {r['wall']:7.1f} {r['images_per_second']:12.2f} {r['valid_accuracy']:15.1%} "
            f"{r['final_accuracy']:16.1%}"
        )
    print(
        f"speed (N)/(1): {many['images_per_second'] / one['images_per_second']:.2f}x training images/s, "
        f"{one['wall'] / many['wall']:.2f}x end to end"
    )
    print(f"best valid accuracy (N) - (1): {100 * (many['valid_accuracy'] - one['valid_accuracy']):+.1f} points")
    print(f"runs kept in {tmp}")


if __name__ == "__main__":
    main()
