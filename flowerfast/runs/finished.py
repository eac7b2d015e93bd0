"""A set of finished runs to compare: read back, named, and checked to be comparable.

A comparison only means something when every run was trained and scored on the same images with
the same classes, so this module refuses anything else before a single figure is computed. Each
run is read through :class:`flowerfast.runs.folder.RunFolder`, which owns the files' names and
formats: nothing here parses a CSV or JSON file by hand, so a run reads back here exactly as it
does everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.runs.folder import CONFIG, HISTORY, EpochRecord, RunFolder, RunSummary, SplitRow, ValidPrediction
from flowerfast.runs.resolved import ResolvedConfig


@dataclass
class RunRecord:
    """One finished run folder, read back: what a comparison is built from."""

    name: str
    folder: RunFolder
    config: ResolvedConfig
    summary: RunSummary
    history: list[EpochRecord]
    split: list[SplitRow]
    predictions: list[ValidPrediction]

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def classes(self) -> list[str]:
        return list(self.summary.classes)

    @property
    def valid_rows(self) -> list[SplitRow]:
        return [row for row in self.split if row.is_valid]


def load_run(run_dir: Path | str, name: Optional[str] = None) -> RunRecord:
    """Read a finished run folder; a clear error names the first missing or unreadable file."""
    folder = RunFolder.open(run_dir)
    folder.check_finished()
    try:
        history = folder.read_history()
        summary = folder.read_summary()
        config = folder.read_config()
        if config is None:
            raise FileNotFoundError(f"{folder.file(CONFIG)} is missing")
        split = folder.read_split()
        predictions = folder.read_valid_predictions()
    except (OSError, ValueError, KeyError) as exc:
        raise FlowerfastError(f"cannot read run folder {folder.path}: {type(exc).__name__}: {exc}") from None
    if not history:
        raise FlowerfastError(f"{folder.file(HISTORY)} has no epochs")
    if summary.multi_label:
        raise FlowerfastError(
            f"{folder.path} is a multi-label run: a comparison's accuracy and paired test need one label per photo; "
            f"score multi-label runs with flowerfast evaluate (F1 and mAP)"
        )
    return RunRecord(
        name=name or str(summary.arch),
        folder=folder,
        config=config,
        summary=summary,
        history=history,
        split=split,
        predictions=predictions,
    )


def name_uniquely(runs: Sequence[RunRecord]) -> None:
    """Name each model by its architecture; by its run folder where two share one; then number
    whatever still clashes (``name-2``, ``name-3``)."""
    archs = [r.name for r in runs]
    for r in runs:
        if archs.count(r.name) > 1:
            r.name = r.run_dir.name
    seen: dict[str, int] = {}
    for r in runs:
        n = seen.get(r.name, 0)
        seen[r.name] = n + 1
        if n:
            r.name = f"{r.name}-{n + 1}"


def _split_by_file(run: RunRecord) -> dict[str, tuple[str, bool]]:
    return {row.file.as_posix(): (row.label, row.is_valid) for row in run.split}


def check_same_split(runs: Sequence[RunRecord], show: int = 3) -> None:
    """Refuse runs whose ``split.csv`` differ, naming the runs and the first differing files."""
    first = runs[0]
    base = _split_by_file(first)
    for other in runs[1:]:
        cur = _split_by_file(other)
        diffs = []
        for f in sorted(set(base) | set(cur)):
            a, b = base.get(f), cur.get(f)
            if a == b:
                continue
            if a is None:
                diffs.append(f"{f} only in {other.name}")
            elif b is None:
                diffs.append(f"{f} only in {first.name}")
            elif a[0] != b[0]:
                diffs.append(f"{f} is {a[0]} in {first.name}, {b[0]} in {other.name}")
            else:
                side = {True: "valid", False: "train"}
                diffs.append(f"{f} is {side[a[1]]} in {first.name}, {side[b[1]]} in {other.name}")
        if diffs:
            more = f" and {len(diffs) - show} more" if len(diffs) > show else ""
            raise FlowerfastError(
                f"runs {first.name} ({first.run_dir}) and {other.name} ({other.run_dir}) were not trained on the "
                f"same split: {len(diffs)} row(s) of split.csv differ: {'; '.join(diffs[:show])}{more}"
            )


def check_same_classes(runs: Sequence[RunRecord]) -> None:
    """Refuse runs whose models know different classes (or the same ones in another order)."""
    classes = runs[0].classes
    for r in runs[1:]:
        if r.classes != classes:
            raise FlowerfastError(f"{r.name} was trained on classes {r.classes}, {runs[0].name} on {classes}")


def load_runs(run_dirs: Sequence[Path | str]) -> list[RunRecord]:
    """Read at least two distinct finished run folders, name them uniquely and check that they
    share one split and one list of classes."""
    if len(run_dirs) < 2:
        raise FlowerfastError(f"a comparison needs at least 2 run folders (got {len(run_dirs)})")
    resolved = [Path(d).expanduser().resolve() for d in run_dirs]
    dupes = sorted({str(d) for d in resolved if resolved.count(d) > 1})
    if dupes:
        raise FlowerfastError(f"run folder given more than once: {dupes[0]}")
    runs = [load_run(d) for d in resolved]
    name_uniquely(runs)
    check_same_split(runs)
    check_same_classes(runs)
    return runs
