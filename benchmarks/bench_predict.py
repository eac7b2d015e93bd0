"""Benchmark: ``flowerfast`` batched prediction against fastai's per-image ``learn.predict`` and
against a hand-written batched PyTorch loop, plus the CLI's start-up time. Not a test.

    python benchmarks/bench_predict.py [--data ../shared/data/flowers] [--n 1000] [--model RUN]

Without ``--model`` a resnet18 is trained for one epoch from scratch on the embedded sample (the
weights do not change the speed). Targets: at least 10x fastai's loop, at least 0.9x the plain loop.

It also times the network alone, as flowerfast runs it, on batches decoded beforehand: a predictor
that decodes the photos cannot beat that, so "network alone / fastai" bounds what batching gains
over fastai on this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

import flowerfast
from flowerfast.data.imagefiles import image_files_under
from flowerfast.hardware.devices import resolve_device, synchronize
from flowerfast.infer.batches import ImageFileDataset, collate_images, default_workers
from flowerfast.infer.preprocessing import normalise, preprocess
from flowerfast.models.classifier import load_classifier
from flowerfast.runs.folder import SplitRow


def parse_args():
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "flowers")
    ap.add_argument("--n", type=int, default=1000, help="photos to predict")
    ap.add_argument("--fastai-n", type=int, default=100, help="photos for fastai's per-image loop (it is slow)")
    ap.add_argument("--model", type=Path, default=None, help="run folder or model file; default: train one")
    ap.add_argument("--size", type=int, default=128, help="image size of the model trained when --model is not given")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each contender; the fastest counts")
    return ap.parse_args()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def best_of(repeat, fn):
    """The output and the shortest time of ``repeat`` runs (the least disturbed by other processes)."""
    runs = [timed(fn) for _ in range(repeat)]
    return runs[0][0], min(t for _, t in runs)


def plain_loop(network, spec, paths, bs, workers, device):
    """What one would write by hand: a Dataset, a DataLoader, no_grad, softmax."""
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(paths, partial(preprocess, size=spec.size)),
        batch_size=bs,
        num_workers=workers,
        collate_fn=collate_images,
    )
    out = []
    with torch.no_grad():
        for _, images, _ in loader:
            x = normalise(images.to(device), spec.mean, spec.std)
            out.append(torch.softmax(network(x), dim=-1).cpu())
    return torch.cat(out)


def network_alone(model, paths, bs, repeat):
    """The loaded model's network on batches decoded and normalised beforehand (images/s)."""
    network, device = model.network, model.device
    dataset = ImageFileDataset(paths, model.preprocessing.load)
    decoded = [image for _, image, error in (dataset[i] for i in range(len(dataset))) if error is None]
    x = model.preprocessing.to_input(torch.stack(decoded).to(device)).contiguous(memory_format=model.memory_format)

    def run():
        for i in range(0, len(x), bs):
            network(x[i : i + bs])
        synchronize(device)

    with torch.inference_mode():
        network(x[:bs])
        _, secs = best_of(repeat, run)
    return len(x) / secs


def fastai_learner(model_path, spec, paths, device):
    """A fastai Learner around the same weights, with flowerfast's training transforms."""
    from safetensors.torch import load_file

    from flowerfast.data.loaders import FlowerData, build_dataloaders
    from flowerfast.models.classifier import model_paths
    from flowerfast.training.learner import create_learner

    rows = [SplitRow(p, spec.classes[i % len(spec.classes)], i % 5 == 0) for i, p in enumerate(paths)]
    dls = build_dataloaders(rows, spec.classes, size=spec.size, bs=16)
    data = FlowerData(
        dls=dls, classes=spec.classes, rows=rows, skipped=[], root=paths[0].parent, preset_split=False, bs=16
    )
    bundle = create_learner(
        data, arch=spec.arch, size=spec.size, pretrained=False, device=device, mixed_precision=False
    )
    bundle.learn.model.load_state_dict(load_file(str(model_paths(model_path)[0])))
    return bundle.learn


def main() -> int:
    args = parse_args()
    if not args.data.is_dir():
        print(f"data folder not found: {args.data} (pass --data)")
        return 1
    paths = image_files_under(args.data)[: args.n]
    if not paths:
        print(f"no images in {args.data}")
        return 1
    torch.set_num_threads(torch.get_num_threads())
    model_path = args.model
    if model_path is None:
        model_path = Path(tempfile.mkdtemp(prefix="bench-predict-")) / "run"
        _, secs = timed(
            lambda: flowerfast.train(arch="resnet18", epochs=1, size=args.size, pretrained=False, out=model_path, bs=32)
        )
        print(f"trained resnet18 at {args.size}px on the embedded sample in {secs:.0f}s: {model_path}")
    device = resolve_device(args.device)
    model = flowerfast.load_model(model_path, device=device)
    plain_network, _ = load_classifier(model_path, device=device)  # as a hand-written script has it
    workers = default_workers(len(paths), args.bs, device)
    print(
        f"{len(paths)} photos from {args.data}; {model.spec.arch} {model.spec.size}px; {device}, "
        f"{torch.get_num_threads()} CPU threads, bs {args.bs}, {workers} decode workers"
    )

    for p in paths:  # read every photo once so no timed loop pays for a cold disk cache
        p.read_bytes()
    model.predict(paths[: args.bs], bs=args.bs)  # warm up
    plain_loop(plain_network, model.spec, paths[: args.bs], args.bs, workers, device)
    preds, t_ff = best_of(args.repeat, lambda: model.predict(paths, bs=args.bs))
    _, t_plain = best_of(args.repeat, lambda: plain_loop(plain_network, model.spec, paths, args.bs, workers, device))
    ff_rate, plain_rate = len(paths) / t_ff, len(paths) / t_plain
    alone_rate = network_alone(model, paths[:512], args.bs, args.repeat)

    learn = fastai_learner(model_path, model.spec, paths, device)
    sub = paths[: args.fastai_n]
    learn.predict(sub[0])
    fa_out, t_fa = best_of(args.repeat, lambda: [learn.predict(p) for p in sub])
    fa_rate = len(sub) / t_fa
    agree = sum(str(o[0]) == p.predicted for o, p in zip(fa_out, preds))
    ours = model.predict(sub, top_k=len(model.classes))
    max_diff = max(
        float((o[2].cpu() - torch.tensor([dict(p.top_k)[c] for c in model.classes])).abs().max())
        for o, p in zip(fa_out, ours)
    )

    print(f"flowerfast predict API      {ff_rate:8.1f} images/s  ({t_ff:.1f}s for {len(paths)})")
    print(f"(a) fastai learn.predict    {fa_rate:8.1f} images/s  ({t_fa:.1f}s for {len(sub)}, one image at a time)")
    print(f"(b) plain PyTorch loop      {plain_rate:8.1f} images/s  ({t_plain:.1f}s for {len(paths)})")
    print(f"    network alone           {alone_rate:8.1f} images/s  (decoded beforehand: the ceiling)")
    print(
        f"speed-up vs (a): {ff_rate / fa_rate:.1f}x (target >= 10x; ceiling here {alone_rate / fa_rate:.1f}x)   "
        f"vs (b): {ff_rate / plain_rate:.2f}x (target >= 0.9x)"
    )
    print(f"same label as fastai on {agree}/{len(sub)} images; max probability difference {max_diff:.1e}")

    photo = str(paths[0])
    cli = [sys.executable, "-m", "flowerfast", "predict", str(model_path), photo, "--json", "--device", str(device)]
    torch_only = [sys.executable, "-c", "import torch"]
    t_cli = min(timed(lambda: subprocess.run(cli, capture_output=True, check=True))[1] for _ in range(args.repeat))
    t_torch = min(
        timed(lambda: subprocess.run(torch_only, capture_output=True, check=True))[1] for _ in range(args.repeat)
    )
    print(
        f"CLI start-up: `flowerfast predict` on one photo {t_cli:.2f}s vs `python -c 'import torch'` "
        f"{t_torch:.2f}s ({t_cli - t_torch:+.2f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
