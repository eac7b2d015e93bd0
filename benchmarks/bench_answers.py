"""Benchmark: how far a fine-tuned model's answers can be trusted. Not a test; prints the figures.

    python benchmarks/bench_answers.py [--data ../shared/data/flowers] [--model RUN] [--epochs N]

Without ``--model`` it first runs ``flowerfast train --data DATA`` (EfficientNet-Lite0 from the
ImageNet weights that install with flowerfast, flowerfast's defaults) into a temporary folder,
through the real CLI entry point. Then, on that run's validation split (photos it never trained on):

1. **Calibration**: expected calibration error (15 bins) and negative log-likelihood at
   temperature 1 and at the model's fitted temperature. The temperature was fitted on these very
   photos, so the fitted figures are in-sample; the held-out line fits a temperature on one half
   of the split and measures it on the other (both ways, averaged), which is what a user's new
   photos see.
2. **TTA**: ``evaluate`` without and with ``--tta``, side by side: accuracy, NLL, ECE, wall time,
   images/s, the answers TTA changed (fixed, broken) and the exact McNemar p-value of the change.
3. **Not a flower**: the 14 photos of scikit-image's sample data that are not flowers (a cat, a
   rocket, an astronaut, ...) against the validation flowers: the AUROC of each score that could
   stand behind "unknown" (maximum softmax probability, negative energy, maximum logit, and the
   familiarity that flowerfast saves in every model).
4. **Unknown at the suggested minimum confidence**: the lowest ``--min-confidence`` that is right
   ``--target-accuracy`` of the time on the validation split (as ``evaluate`` names it), and at it
   the share of not-flowers answered "unknown" and of flowers answered (and how often right), by
   the probability alone and by flowerfast's rule (probability and familiarity).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import add_data_argument, machine_line, run_flowerfast

REPOSITORY = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_argument(ap)
    ap.add_argument("--model", type=Path, default=None, help="a run folder to measure; default: train one on --data")
    ap.add_argument("--arch", default="tf_efficientnet_lite0", help="architecture trained when --model is not given")
    ap.add_argument("--epochs", type=int, default=None, help="epochs trained when --model is not given")
    ap.add_argument("--keep", type=Path, default=None, help="train into this folder instead of a temporary one")
    ap.add_argument("--target-accuracy", type=float, default=0.95)
    ap.add_argument("--bs", type=int, default=64)
    return ap.parse_args(argv)


def trained_run(args, tmp: Path) -> Path:
    """A run to measure: ``--model``, or one trained now by ``flowerfast train``."""
    if args.model is not None:
        return args.model
    out = args.keep or tmp / "run"
    argv = ["train", "--data", str(args.data), "--arch", args.arch, "--out", str(out)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    print(f"training: flowerfast {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    run_flowerfast(argv)
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def raw_scores(model, paths, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """The network's logits (before the temperature) and the familiarity of each photo, in order."""
    from flowerfast.models.familiarity import familiarity, pooled_features

    logits, familiar = [], []
    for start in range(0, len(paths), bs):
        images = torch.stack([model.preprocessing.load(p) for p in paths[start : start + bs]])
        with torch.inference_mode():
            feature_map, out = model.forward_parts(model.input_of(images))
            familiar.append(familiarity(pooled_features(feature_map), model.prototypes.to(model.device)).cpu())
        logits.append(out.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(familiar).numpy()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def held_out_calibration(logits: np.ndarray, targets: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """ECE and NLL of a temperature fitted on one random half of the photos and applied to the
    other, both ways, averaged: the figures new photos see."""
    from flowerfast.core.calibration import (
        expected_calibration_error,
        fit_temperature,
        negative_log_likelihood,
        rescaled,
    )

    order = np.random.default_rng(seed).permutation(len(targets))
    halves = order[: len(order) // 2], order[len(order) // 2 :]
    probs = softmax(logits)
    ece, nll = [], []
    for fit, check in (halves, halves[::-1]):
        temperature = fit_temperature(probs[fit], targets[fit])
        after = rescaled(probs[check], temperature)
        ece.append(expected_calibration_error(after, targets[check]))
        nll.append(negative_log_likelihood(after, targets[check]))
    return float(np.mean(ece)), float(np.mean(nll))


def report_calibration(model, result, logits: np.ndarray, targets: np.ndarray) -> None:
    cal = result.calibration
    ece, nll = held_out_calibration(logits, targets)
    print(f"\n1. calibration on the validation split ({cal.images} photos), temperature {cal.temperature:.3f}")
    print(f"   {'':36} {'ECE':>7} {'NLL':>7}")
    print(f"   {'temperature 1':36} {cal.ece_before:7.4f} {cal.nll_before:7.4f}")
    print(f"   {'fitted on these photos (in-sample)':36} {cal.ece_after:7.4f} {cal.nll_after:7.4f}")
    print(f"   {'fitted on the other half (held out)':36} {ece:7.4f} {nll:7.4f}")


def report_tta(run: Path, plain, plain_s: float, bs: int) -> None:
    from flowerfast import evaluate
    from flowerfast.core.stats import mcnemar_exact

    started = time.perf_counter()
    tta = evaluate(run, bs=bs, tta=True)
    tta_s = time.perf_counter() - started
    fixed = sum(p != t and q == t for p, q, t in zip(plain.predicted, tta.predicted, plain.labels))
    broken = sum(p == t and q != t for p, q, t in zip(plain.predicted, tta.predicted, plain.labels))
    changed = sum(p != q for p, q in zip(plain.predicted, tta.predicted))
    n = plain.n_images
    print(f"\n2. test-time augmentation on the validation split ({n} photos)")
    print(f"   {'':10} {'accuracy':>9} {'NLL':>7} {'ECE':>7} {'wall s':>7} {'images/s':>9}")
    for name, r, s in (("plain", plain, plain_s), ("--tta", tta, tta_s)):
        cal = r.calibration
        print(f"   {name:10} {r.accuracy:9.2%} {cal.nll_after:7.4f} {cal.ece_after:7.4f} {s:7.1f} {n / s:9.1f}")
    print(
        f"   --tta: {tta.accuracy - plain.accuracy:+.2%} accuracy at {tta_s / plain_s:.2f}x the time; "
        f"{changed} answers changed ({fixed} fixed, {broken} broken), exact McNemar p = {mcnemar_exact(broken, fixed):.3g}"
    )


def report_not_flowers(model, flowers: tuple, others: tuple) -> None:
    from flowerfast.core.selective import auroc, max_logit, max_probability, negative_energy

    (flower_logits, flower_fam), (other_logits, other_fam) = flowers, others
    t = model.spec.temperature
    print(f"\n3. flowers ({len(flower_fam)} validation photos) against {len(other_fam)} photos that are not flowers")
    print(f"   {'score (higher = flower)':36} {'AUROC':>6}")
    for name, score in (
        ("maximum softmax probability", max_probability),
        ("negative energy (logsumexp)", negative_energy),
        ("maximum logit", max_logit),
    ):
        print(f"   {name:36} {auroc(score(flower_logits, t), score(other_logits, t)):6.3f}")
    print(f"   {'familiarity (prototype cosine)':36} {auroc(flower_fam, other_fam):6.3f}")


def report_unknown(model, plain, flowers: tuple, others: tuple, target: float) -> None:
    from flowerfast.core.selective import coverage_at, gated, is_answered

    suggested = plain.selective.suggested
    threshold = model.familiar_threshold
    print(f"\n4. unknown answers; familiarity threshold {threshold:.4f}")
    if suggested is None:
        print(f"   no minimum confidence reaches {target:.0%} on the validation split: familiarity alone (P = 0)")
    p = suggested.min_confidence if suggested is not None else 0.0
    print(f"   suggested --min-confidence for {target:.0%} right on the validation split: {p:.3f}")
    (flower_logits, flower_fam), (other_logits, other_fam) = flowers, others
    flower_conf = softmax(flower_logits, model.spec.temperature).max(axis=1)
    other_conf = softmax(other_logits, model.spec.temperature).max(axis=1)
    print(f"   {'rule':34} {'not-flowers unknown':>20} {'flowers answered':>17} {'right of those':>15}")
    for name, p_rule, familiar in (
        (f"probability alone, P = {p:.3f}", p, False),
        ("familiarity alone (P = 0)", 0.0, True),
        (f"flowerfast: both, P = {p:.3f}", p, True),
    ):
        unknown = [not is_answered(c, p_rule, familiar and f < threshold) for c, f in zip(other_conf, other_fam)]
        unfamiliar = [familiar and f < threshold for f in flower_fam]
        cover = coverage_at(gated(flower_conf, unfamiliar), plain.correct, p_rule)
        right = f"{cover.accuracy:.1%}" if cover.accuracy is not None else "-"
        print(
            f"   {name:34} {sum(unknown):>11} of {len(unknown):<5} {cover.answered:>8} of {cover.images:<5} {right:>15}"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    from flowerfast import evaluate, load_model
    from tests.not_flowers import write_not_flowers

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-answers-") as tmp:
        run = trained_run(args, Path(tmp))
        model = load_model(run)
        if model.prototypes is None:
            raise SystemExit(f"{run} has no class prototypes: run `flowerfast calibrate {run}` first")
        started = time.perf_counter()
        plain = evaluate(run, bs=args.bs, target_accuracy=args.target_accuracy)
        plain_s = time.perf_counter() - started
        print(
            f"\nmodel: {run} ({model.spec.arch}, {model.spec.size} px), {plain.accuracy:.2%} on {plain.n_images} photos"
        )
        flowers = raw_scores(model, plain.files, args.bs)
        others = raw_scores(model, write_not_flowers(Path(tmp) / "not-flowers"), args.bs)
        targets = np.array([model.classes.index(label) for label in plain.labels])
        report_calibration(model, plain, flowers[0], targets)
        report_tta(run, plain, plain_s, args.bs)
        report_not_flowers(model, flowers, others)
        report_unknown(model, plain, flowers, others, args.target_accuracy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
