"""Benchmark: what each recipe option buys within a fixed time, from pretrained and from random weights.

Not a test; prints the figures side by side.

    python benchmarks/bench_recipe.py [--data ../shared/data/flowers] [--budget 3m] [--groups pretrained,scratch]
                                      [--variants base,ls,mixup,cutmix,ema,progressive,trivial] [--threads N]

Every variant is one ``flowerfast train --time BUDGET`` in its own process, one after the other,
on the same photos, the same seeded stratified 80/20 split (``--split-file`` of a warm-up run,
which also fills a shared image cache, so no variant pays for decoding) and the same budget:

  pretrained: the default fine-tune (EfficientNet-Lite0 from the ImageNet weights that install
              with flowerfast, 128 px on these photos);
  scratch:    resnet18 from random weights (``--arch resnet18 --no-pretrained``), 128 px.

Each variant is the group's base plus one option (``--label-smoothing 0.1``, ``--mixup 0.2``,
``--cutmix 1.0``, ``--ema``, ``--progressive``, ``--augment trivial``), or ``--variants
"name=OPTIONS"`` for any other set. It prints each variant's best validation accuracy, its
difference from the group's base, the epochs the budget planned and its training and wall
seconds. Differences of a point or two between runs this short are within the noise of one seed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_data_argument, machine_line

GROUPS = {
    "pretrained": [],
    "scratch": ["--arch", "resnet18", "--no-pretrained"],
}
VARIANTS = {
    "base": "",
    "ls": "--label-smoothing 0.1",
    "mixup": "--mixup 0.2",
    "cutmix": "--cutmix 1.0",
    "ema": "--ema",
    "progressive": "--progressive 64,96,128",
    "trivial": "--augment trivial",
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_argument(ap)
    ap.add_argument("--budget", default="3m", help="each variant's --time")
    ap.add_argument("--groups", default="pretrained,scratch", help="pretrained and/or scratch, comma-separated")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="names of VARIANTS, or name=OPTIONS for options of your own (e.g. 'all=--ema --mixup 0.2')",
    )
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every variant (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write every variant's figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, logs)")
    return ap.parse_args(argv)


def variant_options(spec: str) -> tuple[str, list[str]]:
    """``name`` of :data:`VARIANTS` or ``name=OPTIONS``: its name and its options."""
    name, _, options = spec.partition("=")
    if not options and name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}, or name=OPTIONS")
    return name, shlex.split(options if options else VARIANTS[name])


def flowerfast(args: list[str], log: Path) -> float:
    """``python -m flowerfast ARGS`` in its own process, output to ``log``; its wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, "-m", "flowerfast", *args], stdout=fh, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"flowerfast {' '.join(args)} failed ({code}); see {log}")
    return time.perf_counter() - t0


def run_variant(group: str, spec: str, common: list[str], tmp: Path, budget: str) -> dict:
    name, options = variant_options(spec)
    out = tmp / f"{group}-{name}"
    wall = flowerfast(
        ["train", *GROUPS[group], *common, "--time", budget, *options, "--out", str(out)], tmp / f"{out.name}.log"
    )
    summary = json.loads((out / "summary.json").read_text())
    return {
        "group": group,
        "variant": name,
        "options": " ".join(options),
        "best": summary["best_valid_accuracy"],
        "final": summary["final_valid_accuracy"],
        "epochs": summary["epochs"],
        "train_seconds": summary["seconds"],
        "wall_seconds": wall,
        "best_is_average": summary.get("best_model_is_average"),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-recipe-"))
    threads = ["--threads", str(args.threads)] if args.threads else []
    common = ["--data", str(args.data), "--size", str(args.size), "--cache-dir", str(tmp / "cache"), *threads]
    print(machine_line(), flush=True)
    warm = [
        "train",
        *GROUPS["scratch"],
        *common,
        "--epochs",
        "1",
        "--clean-train-sample",
        "0",
        "--out",
        str(tmp / "warm"),
    ]
    flowerfast(warm, tmp / "warm.log")  # fills the cache; its split is every variant's
    common += ["--split-file", str(tmp / "warm" / "split.csv")]
    rows = []
    for group in args.groups.split(","):
        for spec in args.variants.split(","):
            row = run_variant(group, spec, common, tmp, args.budget)
            base = next((r["best"] for r in rows if r["group"] == group and r["variant"] == "base"), None)
            row["vs_base"] = row["best"] - base if base is not None else None
            rows.append(row)
            delta = f"{row['vs_base'] * 100:+.1f} points" if row["vs_base"] is not None else "base"
            print(
                f"{group:10s} {row['variant']:12s} best {row['best']:.1%} ({delta}), final {row['final']:.1%}, "
                f"{row['epochs']} epochs, {row['train_seconds']:.0f} s training, {row['wall_seconds']:.0f} s wall"
                + (", best = moving average" if row["best_is_average"] else ""),
                flush=True,
            )
    print("\n| group | variant | options | best valid accuracy | vs base | epochs | training s | wall s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        vs = f"{r['vs_base'] * 100:+.1f}" if r["vs_base"] is not None else ""
        print(
            f"| {r['group']} | {r['variant']} | `{r['options']}` | {r['best']:.1%} | {vs} | {r['epochs']} "
            f"| {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "budget": args.budget, "rows": rows}, indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"runs and logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
