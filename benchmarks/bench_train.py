"""Benchmark: `flowerfast train` against a plain PyTorch loop and plain fastai, end to end.

Not a test; prints the figures side by side with the ratios.

    python benchmarks/bench_train.py [--data ../shared/data/flowers] [--n 480] [--epochs 2] [--size 128]
                                     [--archs resnet152,vgg11_bn,resnet18] [--repeat 2]

On the same photos (a subset of ``--n``, equal per class, linked into a temporary folder), with the
same model, image size, batch size, epochs, learning rate and seed, from scratch (no pretrained
weights), it trains, alternately (a b c a b c ..., best of ``--repeat``), each in its own process:

  (a) a plain PyTorch loop as a user writes it: torchvision ImageFolder, random_split 80/20,
      RandomResizedCrop + flip + RandomErasing, Adam with OneCycleLR, fp32, 2 DataLoader workers;
  (b) plain fastai: ImageDataLoaders.from_folder, vision_learner + fit_one_cycle, fastai defaults;
  (c) `flowerfast train --no-pretrained` through the real CLI code path, its own defaults
      (precision auto, photo cache in the benchmark's temporary folder: cold on the first run,
      warm on later ones unless --cold-cache).

It prints, per architecture: whole-process wall time, training images/s (training images x epochs
/ wall time) and its ratio against (a), the in-process training time (first epoch to last, the
per-epoch validation included) and its ratio, the final validation accuracy, and peak memory. It
also measures this machine's fp32 and bf16 matrix-multiply peak and prints the fraction of it that
each contender's training reaches. Targets (issue): (c)/(a) >= 1.8x end to end for resnet152 and
vgg11_bn, (c)'s accuracy at most 1.5 points below (a)'s, (c)'s peak RSS no higher than (a)'s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import add_data_argument, machine_line, run_flowerfast

RESULT_TAG = "BENCH_TRAIN_RESULT "
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
NAMES = {"a": "(a) plain PyTorch", "b": "(b) plain fastai", "c": "(c) flowerfast train"}
TARGET_ARCHS = ("resnet152", "vgg11_bn")
TARGET_SPEEDUP = 1.8
TARGET_ACC_POINTS = 1.5
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_argument(ap)
    ap.add_argument("--n", type=int, default=480, help="photos to train and validate on, equal per class")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument(
        "--lr", type=float, default=3e-3, help="peak learning rate of all three (flowerfast's from-scratch default)"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--archs", default="resnet152,vgg11_bn,resnet18", help="comma-separated torchvision names")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each contender per architecture; the fastest counts")
    ap.add_argument("--contenders", default="a,b,c", help="any of a, b, c, comma-separated")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (a)")
    ap.add_argument("--cold-cache", action="store_true", help="give every (c) run a fresh, empty photo cache")
    ap.add_argument(
        "--flowerfast-args",
        default="",
        help="extra options for (c), written with '=': --flowerfast-args='--precision fp32'",
    )
    ap.add_argument("--threads-note", default="", help="free text printed with the results (load, threads, ...)")
    ap.add_argument("--matmul-n", type=int, default=2048, help="matrix side of the matmul peak measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (photo links, runs, logs)")
    # internal: one contender in this process
    ap.add_argument("--child", choices=("a", "b", "c"), help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# children: one contender each, reporting one JSON line


def own_peak_memory() -> dict:
    """Peak RSS of this process and of its largest finished child (DataLoader workers), in MB."""
    scale = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS
    mb = lambda v: v * scale / 2**20  # noqa: E731
    out = {
        "rss_mb": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "children_rss_mb": mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return out


def report(result: dict) -> None:
    result.update(own_peak_memory())
    print(RESULT_TAG + json.dumps(result), flush=True)


def child_plain(args) -> dict:
    """(a) A training script as one writes it from the PyTorch and torchvision docs."""
    import random

    import numpy as np
    import torch
    import torchvision
    from torch import nn
    from torch.utils.data import DataLoader, Subset, random_split
    from torchvision import datasets
    from torchvision import transforms as T

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    size = args.size
    train_tf = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            T.RandomErasing(),
        ]
    )
    valid_tf = T.Compose(
        [T.Resize(int(size * 1.14)), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    full = datasets.ImageFolder(args.root, transform=train_tf)
    train_set, valid_part = random_split(full, [0.8, 0.2], generator=torch.Generator().manual_seed(args.seed))
    valid_set = Subset(datasets.ImageFolder(args.root, transform=valid_tf), valid_part.indices)
    # a last training batch of one image would break BatchNorm; drop it only then
    train_loader = DataLoader(
        train_set, batch_size=args.bs, shuffle=True, num_workers=args.workers, drop_last=len(train_set) % args.bs == 1
    )
    valid_loader = DataLoader(valid_set, batch_size=args.bs, num_workers=args.workers)

    # from scratch, so the classifier is built for our classes directly (same as replacing it)
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=len(full.classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(train_loader)
    )
    loss_fn = nn.CrossEntropyLoss()
    accuracies = []
    started = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in valid_loader:
                pred = model(x.to(device)).argmax(dim=1).cpu()
                correct += int((pred == y).sum())
                total += len(y)
        accuracies.append(correct / total)
    loop = time.perf_counter() - started
    return {
        "n_train": len(train_set),
        "n_valid": len(valid_set),
        "loop_s": loop,
        "valid_accuracy": accuracies[-1],
        "epoch_accuracies": accuracies,
        "precision": "fp32",
        "workers": args.workers,
    }


def child_fastai(args) -> dict:
    """(b) fastai as its tutorials use it, with its defaults."""
    import torch
    import torchvision
    from fastai.vision.all import (
        ImageDataLoaders,
        RandomResizedCrop,
        accuracy,
        aug_transforms,
        set_seed,
        vision_learner,
    )

    set_seed(args.seed)
    dls = ImageDataLoaders.from_folder(
        args.root,
        valid_pct=0.2,
        seed=args.seed,
        item_tfms=RandomResizedCrop(args.size),
        batch_tfms=aug_transforms(),
        bs=args.bs,
        device=torch.device(args.device),
    )
    learn = vision_learner(dls, getattr(torchvision.models, args.arch), pretrained=False, metrics=accuracy)
    started = time.perf_counter()
    learn.fit_one_cycle(args.epochs, args.lr)
    loop = time.perf_counter() - started
    accuracies = [float(v[-1]) for v in learn.recorder.values]
    return {
        "n_train": len(dls.train_ds),
        "n_valid": len(dls.valid_ds),
        "loop_s": loop,
        "valid_accuracy": accuracies[-1],
        "epoch_accuracies": accuracies,
        "precision": "fp32",
        "workers": dls.train.num_workers,
    }


def flowerfast_argv(args) -> list[str]:
    return [
        "train",
        "--data",
        str(args.root),
        "--arch",
        args.arch,
        "--epochs",
        str(args.epochs),
        "--bs",
        str(args.bs),
        "--size",
        str(args.size),
        "--seed",
        str(args.seed),
        "--lr",
        repr(args.lr),
        "--no-pretrained",
        "--device",
        args.device,
        "--out",
        str(args.run_dir),
        "--cache-dir",
        str(args.cache_dir),
        *args.flowerfast_args.split(),
    ]


def child_flowerfast(args) -> dict:
    """(c) `flowerfast train`, run by the CLI's own entry point in this process."""
    run_flowerfast(flowerfast_argv(args))
    summary = json.loads((args.run_dir / "summary.json").read_text())
    config = json.loads((args.run_dir / "config.json").read_text())
    history = []
    history_csv = args.run_dir / "history.csv"
    if history_csv.is_file():
        import csv

        with history_csv.open() as f:
            history = [float(r["valid_accuracy"]) for r in csv.DictReader(f)]
    precision = config.get("precision") or ("mixed" if config.get("mixed_precision") else "fp32")
    return {
        "n_train": config.get("n_train"),
        "n_valid": config.get("n_valid"),
        "loop_s": summary["seconds"],
        "valid_accuracy": summary["final_valid_accuracy"],
        "epoch_accuracies": history,
        "precision": str(precision),
        "workers": config.get("workers"),
        "threads": config.get("threads"),
    }


def run_child(args) -> int:
    fn = {"a": child_plain, "b": child_fastai, "c": child_flowerfast}[args.child]
    report(fn(args))
    return 0


# ------------------------------------------------------------------------------------------------
# parent: data subset, matmul peak, FLOPs, alternation, table


def make_subset(data: Path, n: int, into: Path) -> tuple[list[str], int]:
    """Link the first n // classes photos (sorted by name) of every class folder into ``into``."""
    classes = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise SystemExit(f"need at least two class folders in {data}")
    per_class = n // len(classes)
    if per_class < 1:
        raise SystemExit(f"--n {n} is smaller than the number of classes ({len(classes)})")
    total = 0
    for folder in classes:
        photos = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )[:per_class]
        if len(photos) < per_class:
            raise SystemExit(f"{folder} has only {len(photos)} photos; lower --n")
        (into / folder.name).mkdir(parents=True)
        for p in photos:
            (into / folder.name / p.name).symlink_to(p.resolve())
        total += len(photos)
    return [c.name for c in classes], total


def matmul_peak(dtype, n: int, device: str) -> float:
    """Best FLOP/s of an n x n matrix product in ``dtype`` over a few runs."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    t = time.perf_counter()
    torch.mm(a, b)
    sync()
    once = max(time.perf_counter() - t, 1e-6)
    reps = max(1, min(50, int(0.3 / once)))  # about 0.3 s per timing
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best


def train_flops_per_image(arch: str, n_classes: int, size: int) -> float:
    """FLOPs of one training step (forward + backward) per image, for the torchvision model as (a)
    builds it; (b) and (c) put other heads on the same body, which is nearly all of the work."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    model = getattr(torchvision.models, arch)(weights=None, num_classes=n_classes).train()
    x = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


class TreeMemory:
    """Peak summed PSS of a process and its descendants, sampled from /proc (Linux only).

    PSS shares pages between the processes that map them, so forked workers are not counted twice
    as RSS sums would."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self.ok = Path(f"/proc/{pid}/smaps_rollup").exists()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.ok:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.ok:
            self._thread.join()

    def _tree(self) -> list[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [p for p, pp in parents.items() if pp in frontier]
            tree.extend(frontier)
        return tree

    def _run(self):
        while not self._stop.wait(self.interval):
            total = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
                except (OSError, ValueError):
                    pass
            self.peak_kb = max(self.peak_kb, total)

    @property
    def peak_mb(self):
        return self.peak_kb / 1024 if self.ok and self.peak_kb else None


def run_contender(args, who: str, arch: str, root: Path, tmp: Path, index: int) -> dict:
    run_dir = tmp / "runs" / f"{who}-{arch}-{index}"
    cache_dir = tmp / ("cache" if not args.cold_cache else f"cache-{arch}-{index}")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        who,
        "--arch",
        arch,
        "--root",
        str(root),
        "--run-dir",
        str(run_dir),
        "--cache-dir",
        str(cache_dir),
        "--epochs",
        str(args.epochs),
        "--size",
        str(args.size),
        "--bs",
        str(args.bs),
        "--lr",
        repr(args.lr),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
    ]
    if args.flowerfast_args:
        cmd.append(f"--flowerfast-args={args.flowerfast_args}")
    log = tmp / "logs" / f"{who}-{arch}-{index}.log"
    log.parent.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as tree:
            proc.wait()
        wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(text.splitlines()[-25:])
        print(f"  {NAMES[who]} {arch} failed (exit {proc.returncode}); log {log}:\n{tail}", flush=True)
        return {"who": who, "arch": arch, "failed": True, "wall_s": wall, "log": str(log)}
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result.update(who=who, arch=arch, wall_s=wall, tree_pss_mb=tree.peak_mb, failed=False)
    shutil.rmtree(run_dir, ignore_errors=True)  # model files: hundreds of MB for resnet152
    return result


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def print_arch(arch, runs_by_who, args, flops, peaks) -> dict:
    """The table of one architecture; returns the best run of each contender."""
    best = {}
    for who, runs in runs_by_who.items():
        good = [r for r in runs if not r["failed"]]
        if good:
            best[who] = min(good, key=lambda r: r["wall_s"])
    if not best:
        print(f"{arch}: every run failed")
        return best
    any_run = next(iter(best.values()))
    print(
        f"\n{arch} {args.size}px, {any_run['n_train']} train / {any_run['n_valid']} valid images, {args.epochs} "
        f"epochs, bs {args.bs}, lr {args.lr:g}, from scratch, {args.device}; best of {args.repeat} by wall time"
    )
    header = (
        f"{'':22} {'wall s':>7} {'train img/s':>11} {'vs (a)':>7} {'loop s':>7} {'loop img/s':>10} "
        f"{'vs (a)':>7} {'valid acc':>9} {'RSS MB':>7} {'child MB':>8} {'tree PSS':>8}  precision  runs (wall s)"
    )
    print(header)
    base = best.get("a")
    for who in runs_by_who:
        r = best.get(who)
        if r is None:
            print(f"{NAMES[who]:22} failed")
            continue
        r["img_s"] = r["n_train"] * args.epochs / r["wall_s"]
        r["loop_img_s"] = r["n_train"] * args.epochs / r["loop_s"] if r.get("loop_s") else None
        r["rss_total_mb"] = r["rss_mb"] + r["children_rss_mb"]
        vs = r["img_s"] / (base["n_train"] * args.epochs / base["wall_s"]) if base else None
        vs_loop = (
            r["loop_img_s"] / (base["n_train"] * args.epochs / base["loop_s"])
            if base and r["loop_img_s"] and base.get("loop_s")
            else None
        )
        r["ratio_vs_a"], r["loop_ratio_vs_a"] = vs, vs_loop
        walls = " ".join(f"{x['wall_s']:.0f}" if not x["failed"] else "fail" for x in runs_by_who[who])
        gpu = f"  GPU {r['gpu_mb']:.0f} MB" if r.get("gpu_mb") else ""
        print(
            f"{NAMES[who]:22} {r['wall_s']:7.1f} {r['img_s']:11.2f} {fmt(vs, '6.2f') + 'x':>7} "
            f"{fmt(r.get('loop_s'), '7.1f'):>7} {fmt(r['loop_img_s'], '10.2f'):>10} "
            f"{(fmt(vs_loop, '6.2f') + 'x') if vs_loop else '-':>7} {r['valid_accuracy']:9.1%} "
            f"{r['rss_mb']:7.0f} {r['children_rss_mb']:8.0f} {fmt(r.get('tree_pss_mb'), '8.0f'):>8}  "
            f"{r.get('precision', '-'):9}  {walls}{gpu}"
        )
    if "c" in best and args.repeat > 1 and not args.cold_cache:
        print("  (c)'s photo cache is cold on its first run and warm on later ones; the best run is shown")
    if flops:
        print(f"  training FLOPs per image (forward + backward, torchvision {arch}): {flops / 1e9:.2f} G")
        for who, r in best.items():
            whole = flops * r["n_train"] * args.epochs / r["wall_s"]
            loop = flops * r["n_train"] * args.epochs / r["loop_s"] if r.get("loop_s") else None
            r["gflops_whole"], r["gflops_loop"] = whole / 1e9, (loop / 1e9 if loop else None)
            fractions = "  ".join(
                f"{k} peak {whole / v:.1%} (loop {fmt(loop / v if loop else None, '.1%')})"
                for k, v in peaks.items()
                if v
            )
            print(
                f"  {NAMES[who]:22} {whole / 1e9:7.1f} GFLOP/s whole process, "
                f"{fmt(loop / 1e9 if loop else None, '.1f')} in the loop;  {fractions}"
            )
    return best


def print_targets(all_best: dict) -> None:
    print("\ntargets:")
    for arch, best in all_best.items():
        a, c = best.get("a"), best.get("c")
        if not (a and c):
            print(f"  {arch}: needs (a) and (c)")
            continue
        speed = c["img_s"] / a["img_s"]
        acc = (c["valid_accuracy"] - a["valid_accuracy"]) * 100
        rss_c, rss_a = c["rss_total_mb"], a["rss_total_mb"]
        note = "" if arch in TARGET_ARCHS else " (quick check; the targets are set for resnet152 and vgg11_bn)"
        print(f"  {arch}{note}")
        print(
            f"    speed (c)/(a) end to end {speed:.2f}x (target >= {TARGET_SPEEDUP}x): "
            f"{'met' if speed >= TARGET_SPEEDUP else 'NOT met'}"
        )
        print(
            f"    valid accuracy (c) - (a) {acc:+.1f} points (target >= -{TARGET_ACC_POINTS}): "
            f"{'met' if acc >= -TARGET_ACC_POINTS else 'NOT met'}"
        )
        for label, vc, va in (
            ("peak RSS of the process", c["rss_mb"], a["rss_mb"]),
            ("peak RSS, process + largest child", rss_c, rss_a),
        ):
            print(f"    {label}, (c) {vc:.0f} MB vs (a) {va:.0f} MB (target <=): {'met' if vc <= va else 'NOT met'}")
        if c.get("tree_pss_mb") and a.get("tree_pss_mb"):
            pss_c, pss_a = c["tree_pss_mb"], a["tree_pss_mb"]
            print(
                f"    peak PSS of the process tree, (c) {pss_c:.0f} MB vs (a) {pss_a:.0f} MB (target <=): "
                f"{'met' if pss_c <= pss_a else 'NOT met'}"
            )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(NAMES)
    if unknown or not contenders:
        print(f"--contenders takes a, b and c (got {args.contenders!r})")
        return 2
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if not args.data.is_dir():
        print(f"data folder not found: {args.data} (pass --data)")
        return 1

    import torch
    import torchvision

    for arch in archs:
        if not callable(getattr(torchvision.models, arch, None)):
            print(f"unknown torchvision architecture: {arch}")
            return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda, but torch sees no CUDA device")
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        classes, total = make_subset(args.data, args.n, tmp / "photos")
        print(machine_line(args.device))
        if args.threads_note:
            print(f"note: {args.threads_note}")
        print(
            f"{total} photos ({total // len(classes)} per class, {len(classes)} classes) from {args.data}, "
            f"linked under {tmp / 'photos'}"
        )
        shown = argparse.Namespace(
            **{
                **vars(args),
                "root": tmp / "photos",
                "arch": "ARCH",
                "run_dir": tmp / "runs" / "RUN",
                "cache_dir": tmp / "cache",
            }
        )
        print(f"(c) runs: flowerfast {' '.join(flowerfast_argv(shown))}")
        for p in (tmp / "photos").rglob("*"):  # every photo read once: no contender pays for a cold disk
            if p.is_file():
                p.read_bytes()

        peaks = {
            "fp32": matmul_peak(torch.float32, args.matmul_n, args.device),
            "bf16": matmul_peak(torch.bfloat16, args.matmul_n, args.device),
        }
        print(
            f"matmul peak ({args.matmul_n}x{args.matmul_n}, {args.device}, {torch.get_num_threads()} threads): "
            f"fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s",
            flush=True,
        )

        all_best, all_runs = {}, []
        for arch in archs:
            flops = train_flops_per_image(arch, len(classes), args.size)
            runs = {who: [] for who in contenders}
            for i in range(args.repeat):
                for who in contenders:
                    r = run_contender(args, who, arch, tmp / "photos", tmp, i)
                    runs[who].append(r)
                    all_runs.append(r)
                    if not r["failed"]:
                        print(
                            f"  {arch} run {i + 1}/{args.repeat} {NAMES[who]}: {r['wall_s']:.1f}s, "
                            f"valid acc {r['valid_accuracy']:.1%}",
                            flush=True,
                        )
            all_best[arch] = print_arch(arch, runs, args, flops, peaks)
        print_targets(all_best)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine_line(args.device),
                        "note": args.threads_note,
                        "options": {k: str(v) for k, v in vars(args).items()},
                        "matmul_peak_flops": peaks,
                        "runs": all_runs,
                        "best": all_best,
                    },
                    indent=2,
                    default=str,
                )
            )
            print(f"figures written to {args.json}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
