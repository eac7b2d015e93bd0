"""``flowerfast check``: what is wrong with a data folder (copies, leakage, tiny photos, class
balance, likely label errors), before training on it. A thin layer over
:func:`flowerfast.reporting.datacheck.check_data`; the exit status is 0 whatever it finds (it is a
report), non-zero only for input it cannot check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flowerfast.cli import options as o
from flowerfast.cli.app import app
from flowerfast.cli.failures import user_errors
from flowerfast.cli.output import console, make_reporter, print_json
from flowerfast.data.checks import MIN_SIDE
from flowerfast.data.hashes import DEFAULT_MAX_DISTANCE
from flowerfast.reporting.labelissues import DEFAULT_TOP
from flowerfast.runs.config import DEFAULTS as D

EXAMPLES = 3
"""Examples of each finding printed; check.json and check.html have them all."""


@app.command(epilog="Example: flowerfast check photos/ --max-distance 6 --out runs/photos-check")
def check(
    data: Annotated[
        Optional[Path],
        typer.Argument(
            help="Folder of class folders (or train/ + valid/), as train's --data takes it. Default: the embedded sample photos.",
            show_default=False,
            metavar="[DATA]",
        ),
    ] = None,
    out: Annotated[
        Optional[Path], o.out_option("Folder for check.json and check.html. Default: runs/check-<timestamp>.")
    ] = None,
    max_distance: Annotated[
        int,
        typer.Option(
            "--max-distance",
            metavar="BITS",
            help="Photos whose difference hashes (64 bits) are at most this many bits apart are near-identical.",
        ),
    ] = DEFAULT_MAX_DISTANCE,
    min_side: Annotated[
        int, typer.Option("--min-side", metavar="PIXELS", help="Photos whose shorter side is below this are tiny.")
    ] = MIN_SIDE,
    labels: o.Labels = D.labels,
    multi_label: o.MultiLabel = D.multi_label,
    valid_pct: o.ValidPct = D.valid_pct,
    seed: o.Seed = D.seed,
    stratify: o.Stratify = D.stratify,
    split_file: o.SplitFile = D.split_file,
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            metavar="RUN",
            help='A training run: rank its validation photos for likely label errors with cleanlab (pip install "flowerfast\\[cleanlab]").',
            show_default=False,
        ),
    ] = None,
    folds: Annotated[
        Optional[int],
        typer.Option(
            "--folds",
            metavar="K",
            help="Rank every photo instead: train K models (with --model's options, else train's defaults), each holding out a fold.",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", metavar="N", help="Likely label errors to list.")] = DEFAULT_TOP,
    threads: o.Threads = D.threads,
    json_: o.Json = False,
) -> None:
    """Check a data folder before training: unreadable files, byte-identical and near-identical photos
    (within a class, under two labels, across the train/valid split), tiny photos, class balance;
    with --model or --folds, likely label errors. Writes check.json and check.html."""
    reporter = make_reporter(to_stderr=True)
    with user_errors():
        from flowerfast.core.files import default_run_dir
        from flowerfast.reporting.datacheck import CHECK_HTML, CHECK_JSON, check_data

        out_dir = out if out is not None else default_run_dir("check")
        result = check_data(
            data,
            out=out_dir,
            max_distance=max_distance,
            min_side=min_side,
            valid_pct=valid_pct,
            seed=seed,
            stratify=stratify,
            split_file=split_file,
            model=model,
            folds=folds,
            top=top,
            reporter=reporter,
            labels=labels,
            multi_label=multi_label,
            **({"threads": threads} if threads is not None else {}),
        )
    if json_:
        print_json({**result.to_dict(), "out": str(out_dir)})
        return
    for line in summary_lines(result):
        console.print(line, markup=False)
    console.print(f"report: {out_dir / CHECK_JSON}, {out_dir / CHECK_HTML}", markup=False)


def summary_lines(result) -> list[str]:
    """The findings in a few lines each: counts, then the first examples, paths relative to DATA."""
    from flowerfast.runs.folder import relative_path

    c = result.counts()

    def where(p) -> str:
        return f"{relative_path(p.file, result.root)} ({p.label}{', ' + p.side if p.side else ''})"

    lines = [
        f"data: {result.root}  ({result.photos} photos, {len(result.classes)} classes; {result.split}; "
        f"checked in {result.seconds:.1f}s)",
        f"unreadable files: {c['unreadable']}",
    ]
    lines += [f"  {relative_path(s.path, result.root)}: {s.reason}" for s in result.unreadable[:EXAMPLES]]
    lines.append(
        f"byte-identical: {c['identical_groups']} group(s) of {c['identical_photos']} photos; "
        f"{c['identical_cross_class']} under two labels, {c['identical_straddling_split']} across the split"
    )
    lines += [f"  {g.where}: " + " = ".join(where(p) for p in g.photos) for g in result.identical[:EXAMPLES]]
    lines.append(
        f"near-identical (within {result.max_distance} bits): {c['near_pairs']} pair(s); "
        f"{c['near_cross_class']} under two labels, {c['near_straddling_split']} across the split"
    )
    lines += [
        f"  {g.where}, {g.distance} bit(s): " + " ~ ".join(where(p) for p in g.photos) for g in result.near[:EXAMPLES]
    ]
    lines.append(f"validation photos with a copy in training: {c['validation_photos_with_a_copy_in_training']}")
    lines.append(f"tiny photos (shorter side under {result.min_side} px): {c['tiny']}")
    lines += [f"  {where(t.photo)}: {t.width}x{t.height}" for t in result.tiny[:EXAMPLES]]
    counts = result.class_counts
    listed = ", ".join(f"{k} {counts[k]['train']}/{counts[k]['valid']}" for k in result.classes if k in counts)
    lines.append(f"classes (train/valid): {listed}")
    lines += [f"  warning: {w}" for w in result.balance_warnings]
    issues = result.label_issues
    if issues is not None:
        lines.append(
            f"likely label errors (cleanlab, {issues.method}): {issues.found} of {issues.ranked} photos; "
            f"the first {min(len(issues.suspects), EXAMPLES * 3)}:"
        )
        lines += [
            f"  {where(s.photo)}: model says {s.predicted} {s.probability:.0%}, {s.photo.label} {s.label_probability:.0%}"
            for s in issues.suspects[: EXAMPLES * 3]
        ]
    return lines
