"""Benchmark: the training batches of ``--batch-crop`` against fastai's photo-by-photo transforms.

Not a test; prints the figures side by side with the ratios.

    python benchmarks/bench_batchcrop.py [--data ../shared/data/flowers] [--size 64] [--min-scale 0.75]
                                         [--arch resnet10t_050] [--epochs 3] [--repeat 2]

On the same split (seed 42), image size, batch size and photo cache (warm after the first epoch,
photos kept in memory from then on), it times, alternately (a b a b ..., best of ``--repeat``):

  (a) the photo path: fastai's DataLoader with flowerfast's item transforms (the random resized
      crop in PIL, then a tensor per photo) and batch transforms (flips, warps, lighting,
      normalisation, erasing);
  (b) ``--batch-crop``: the same batch transforms, the crop cut per batch with the flips and
      warps in one resampling.

For each it prints the seconds an epoch of training batches takes to make (the first epoch, which
fills the cache and the memory, apart from the later ones), and with ``--arch`` the seconds of the
same epoch with a training step (forward, backward, AdamW; channels-last) on each batch, so the
share of the step that the data costs is seen next to it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import add_data_argument, machine_line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_argument(ap)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--min-scale", type=float, default=0.75)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--arch", default="resnet10t_050", help="network for the training step ('' for none)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first warms the cache")
    ap.add_argument("--repeat", type=int, default=2)
    return ap.parse_args(argv)


def epoch_seconds(dl, step=None) -> float:
    """One epoch of ``dl``'s training batches, made (and trained on, with ``step``), in seconds."""
    start = time.perf_counter()
    for xb, yb in dl:
        if step is not None:
            step(xb, yb)
    return time.perf_counter() - start


def training_step(arch: str, n_classes: int):
    import timm
    import torch

    from flowerfast.models import smallnets

    smallnets.register()  # flowerfast's own networks (resnet10t_050) in timm's registry
    model = timm.create_model(arch, pretrained=False, num_classes=n_classes).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        x = xb.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
        loss_fn(model(x), yb.as_subclass(torch.Tensor)).backward()
        opt.step()

    return step


def measure(args, batch_crop: bool, cache_dir: str) -> dict:
    from flowerfast.data.loaders import load_data

    data = load_data(
        args.data, size=args.size, bs=args.bs, cache_dir=cache_dir, min_scale=args.min_scale, batch_crop=batch_crop
    )
    dl = data.dls.train
    first = epoch_seconds(dl)
    later = min(epoch_seconds(dl) for _ in range(max(args.epochs - 1, 1)))
    step = training_step(args.arch, len(data.classes)) if args.arch else None
    trained = min(epoch_seconds(dl, step) for _ in range(max(args.epochs - 1, 1))) if step else None
    return {"first": first, "later": later, "trained": trained, "batches": len(dl), "photos": data.n_train}


def main(argv=None) -> None:
    args = parse_args(argv)
    print(machine_line())
    names = {False: "(a) photo by photo", True: "(b) --batch-crop"}
    best: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for batch_crop in (False, True):
                got = measure(args, batch_crop, tmp)
                old = best.get(batch_crop)
                best[batch_crop] = got if old is None else {k: min(v, old[k]) if v else v for k, v in got.items()}
    a, b = best[False], best[True]
    print(
        f"{a['photos']} training photos, {a['batches']} batches of {args.bs} at {args.size} px a side, best of {args.repeat}"
    )
    print(f"{'':24} {'first epoch s':>14} {'later epochs s':>15} {'with the step s':>16}")
    for key in (False, True):
        r = best[key]
        trained = f"{r['trained']:.2f}" if r["trained"] else "-"
        print(f"{names[key]:24} {r['first']:14.2f} {r['later']:15.2f} {trained:>16}")
    print(f"(a)/(b): batches {a['later'] / b['later']:.2f}x faster", end="")
    if a["trained"]:
        print(f", epoch with {args.arch}'s training step {a['trained'] / b['trained']:.2f}x faster")
    else:
        print()


if __name__ == "__main__":
    main()
