"""The comparison report: finished run folders in, report.md / report.json / report.html and plots out.

Everything is read back from the run folders (``history.csv``, ``summary.json``,
``valid_predictions.csv``, ``best.safetensors``), so a report can be rebuilt at any time from the
runs alone and says exactly what the files say. Runs are only compared when their ``split.csv``
files agree row for row: a paired comparison on different validation images means nothing.

Inference speed is the one thing measured here rather than read; the first measurement is stored
in the run folder (``latency.json``) and reused, so rebuilding a report gives the same numbers.
"""

from __future__ import annotations

import base64
import html
import re
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import FlowerfastError
from .progress import NullReporter, Reporter
from .runs import (atomic_write_bytes, atomic_write_text, check_output_dir, create_run_dir, default_run_dir,
                   read_csv, read_json, write_json)
from .stats import mcnemar_exact, paired_bootstrap_ci

FORMAT_VERSION = 1
ALPHA = 0.05
CI_LEVEL = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
RUN_FILES = ("split.csv", "history.csv", "summary.json", "valid_predictions.csv", "best.safetensors", "best.json")
CURVES_PLOT = "curves.png"
PER_CLASS_PLOT = "per-class-accuracy.png"


@dataclass
class RunRecord:
    """One finished run folder, read back: what the report is built from."""

    name: str
    run_dir: Path
    config: dict
    summary: dict
    history: list[dict]
    split: list[dict]
    predictions: list[dict]

    @property
    def classes(self) -> list[str]:
        return list(self.summary["classes"])


@dataclass
class Table:
    """A table as plain strings, rendered the same way to Markdown, HTML and the terminal."""

    headers: list[str]
    rows: list[list[str]]
    align_right: list[bool] = field(default_factory=list)


@dataclass
class ComparisonReport:
    """A comparison of models trained on one split. ``to_dict()`` is the content of ``report.json``.

    ``models``: one entry per run (name, arch, run folder, weights, per-epoch history, summary
    figures, inference speed, per-class accuracy, confusion matrix). ``pairs``: one entry per pair
    of models (paired accuracy difference with its bootstrap interval, McNemar's exact test and a
    one-sentence verdict). ``out`` and ``files`` say where the report was written.
    """

    models: list[dict]
    pairs: list[dict]
    split: dict
    settings: dict
    plots: dict
    out: Optional[Path] = None
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "flowerfast-comparison", "format_version": FORMAT_VERSION, "split": self.split,
                "settings": self.settings, "models": self.models, "pairs": self.pairs, "plots": self.plots}

    @property
    def verdicts(self) -> list[str]:
        return [p["verdict"] for p in self.pairs]

    def summary_table(self) -> Table:
        headers = ["model", "best valid acc", "best epoch", "final valid acc", "training time", "s/epoch",
                   "train images/s", "parameters", "model size", "latency/image", "inference images/s"]
        rows = []
        for m in self.models:
            s, inf = m["summary"], m["inference"]
            rows.append([m["name"], _pct(s["best_valid_accuracy"]), str(s["best_epoch"]),
                         _pct(s["final_valid_accuracy"]), f"{s['seconds']:.1f} s", f"{s['seconds_per_epoch']:.1f}",
                         _num(s["train_images_per_second"], ".1f"), f"{s['parameters'] / 1e6:.2f}M",
                         f"{s['model_bytes'] / 1e6:.1f} MB", f"{inf['latency_ms_per_image']:.1f} ms",
                         f"{inf['images_per_second']:.1f}"])
        return Table(headers, rows, [False] + [True] * (len(headers) - 1))

    def pairs_table(self) -> Table:
        level = f"{self.settings['ci_level']:.0%}"
        headers = ["model A", "model B", "images", "acc A", "acc B", "A - B", f"{level} CI", "only A right",
                   "only B right", "McNemar p"]
        rows = [[p["a"], p["b"], str(p["n_images"]), _pct(p["accuracy_a"]), _pct(p["accuracy_b"]),
                 _pp(p["difference"]), f"[{_pp(p['ci_low'])}, {_pp(p['ci_high'])}]", str(p["only_a_correct"]),
                 str(p["only_b_correct"]), _p(p["p_value"])[4:]] for p in self.pairs]
        return Table(headers, rows, [False, False] + [True] * (len(headers) - 2))

    def history_table(self, model: dict) -> Table:
        headers = ["epoch", "phase", "train acc (aug)", "train acc (clean)", "valid acc", "train loss",
                   "valid loss", "lr", "seconds"]
        rows = [[str(h["epoch"]), h["phase"], _pct(h["train_accuracy_aug"]), _pct(h["train_accuracy_clean"]),
                 _pct(h["valid_accuracy"]), _num(h["train_loss"], ".4f"), _num(h["valid_loss"], ".4f"),
                 _num(h["lr"], ".2e"), _num(h["seconds"], ".1f")] for h in model["history"]]
        return Table(headers, rows, [False, False] + [True] * (len(headers) - 2))

    def per_class_table(self) -> Table:
        classes = self.split["classes"]
        headers = ["class", "valid images", *[m["name"] for m in self.models]]
        counts = self.split["valid_per_class"]
        rows = [[c, str(counts.get(c, 0)), *[_pct(m["per_class_accuracy"].get(c)) for m in self.models]]
                for c in classes]
        return Table(headers, rows, [False] + [True] * (len(headers) - 1))


# --- formatting -------------------------------------------------------------------------------

def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _pp(value) -> str:
    """Percentage points, signed."""
    return f"{100 * value:+.1f} pp"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def verdict(a: str, b: str, difference: float, p: float, alpha: float = ALPHA) -> str:
    """One plain sentence: which model is better on this split, or that the data cannot tell."""
    if p < alpha and difference != 0:
        better, worse = (a, b) if difference > 0 else (b, a)
        return f"{better} is better than {worse} on this split ({_p(p)})"
    return f"no significant difference between {a} and {b} on this split ({_p(p)})"


# --- reading run folders ----------------------------------------------------------------------

def _float(text: str) -> Optional[float]:
    return None if text in ("", None) else float(text)


def load_run(run_dir: Path | str, name: Optional[str] = None) -> RunRecord:
    """Read a finished run folder; a clear error names the first missing file."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise FlowerfastError(f"run folder not found: {run_dir}")
    for f in RUN_FILES:
        if not (run_dir / f).is_file():
            raise FlowerfastError(f"{run_dir} is not a finished run folder: {f} is missing")
    try:
        history = [{"epoch": int(r["epoch"]), "phase": r["phase"], "train_loss": _float(r["train_loss"]),
                    "train_accuracy_aug": _float(r["train_accuracy_aug"]),
                    "train_accuracy_clean": _float(r.get("train_accuracy_clean", "")),
                    "valid_loss": _float(r["valid_loss"]), "valid_accuracy": _float(r["valid_accuracy"]),
                    "lr": _float(r["lr"]), "seconds": _float(r["seconds"])}
                   for r in read_csv(run_dir / "history.csv")]
        summary = read_json(run_dir / "summary.json")
        config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        split = read_csv(run_dir / "split.csv")
        predictions = read_csv(run_dir / "valid_predictions.csv")
    except (OSError, ValueError, KeyError) as exc:
        raise FlowerfastError(f"cannot read run folder {run_dir}: {type(exc).__name__}: {exc}") from None
    if not history:
        raise FlowerfastError(f"{run_dir / 'history.csv'} has no epochs")
    return RunRecord(name=name or str(summary.get("arch", run_dir.name)), run_dir=run_dir, config=config,
                     summary=summary, history=history, split=split, predictions=predictions)


def _unique_names(runs: Sequence[RunRecord]) -> None:
    """Name each model by its architecture; by its run folder where two share one."""
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


def check_same_split(runs: Sequence[RunRecord], show: int = 3) -> None:
    """Refuse runs whose ``split.csv`` differ, naming the runs and the first differing files."""
    def rows(run):
        return {r["file"]: (r["label"], r["is_valid"] in ("1", "True", "true")) for r in run.split}

    first = runs[0]
    base = rows(first)
    for other in runs[1:]:
        cur = rows(other)
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
                f"same split: {len(diffs)} row(s) of split.csv differ: {'; '.join(diffs[:show])}{more}")


# --- measurements -----------------------------------------------------------------------------

from .latency import measure_inference  # noqa: E402


def _per_class(run: RunRecord) -> tuple[dict, list[list[int]]]:
    classes = run.classes
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for p in run.predictions:
        matrix[index[p["label"]]][index[p["predicted"]]] += 1
    per_class = {c: (matrix[i][i] / sum(matrix[i]) if sum(matrix[i]) else None) for i, c in enumerate(classes)}
    return per_class, matrix


def compare_pair(a: RunRecord, b: RunRecord, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = CI_LEVEL, alpha: float = ALPHA) -> dict:
    """The paired comparison of two runs on their common validation images (matched by file)."""
    pa = {p["file"]: p for p in a.predictions}
    pb = {p["file"]: p for p in b.predictions}
    if set(pa) != set(pb):
        missing = sorted(set(pa) ^ set(pb))
        raise FlowerfastError(f"valid_predictions.csv of {a.name} and {b.name} cover different images "
                              f"({len(missing)} differ, e.g. {missing[0]})")
    files = sorted(pa)
    correct_a = [pa[f]["label"] == pa[f]["predicted"] for f in files]
    correct_b = [pb[f]["label"] == pb[f]["predicted"] for f in files]
    only_a = sum(x and not y for x, y in zip(correct_a, correct_b))
    only_b = sum(y and not x for x, y in zip(correct_a, correct_b))
    diff, lo, hi = paired_bootstrap_ci(correct_a, correct_b, n_resamples=n_resamples, seed=seed, level=level)
    p = mcnemar_exact(only_a, only_b)
    return {"a": a.name, "b": b.name, "n_images": len(files),
            "accuracy_a": sum(correct_a) / len(files), "accuracy_b": sum(correct_b) / len(files),
            "difference": diff, "ci_low": lo, "ci_high": hi,
            "both_correct": sum(x and y for x, y in zip(correct_a, correct_b)), "only_a_correct": only_a,
            "only_b_correct": only_b, "both_wrong": sum(not x and not y for x, y in zip(correct_a, correct_b)),
            "p_value": p, "significant": p < alpha, "verdict": verdict(a.name, b.name, diff, p, alpha)}


def _model_entry(run: RunRecord, inference: dict) -> dict:
    s = run.summary
    per_class, matrix = _per_class(run)
    return {
        "name": run.name, "arch": s.get("arch"), "run_dir": str(run.run_dir),
        "pretrained": s.get("pretrained"), "weights_source": s.get("weights_source"),
        "lr": s.get("lr"), "epochs": len(run.history),
        "summary": {
            "best_valid_accuracy": s["best_valid_accuracy"], "best_epoch": s["best_epoch"],
            "final_valid_accuracy": s["final_valid_accuracy"], "seconds": s["seconds"],
            "seconds_per_epoch": s["seconds_per_epoch"], "train_images_per_second": s.get("train_images_per_second"),
            "parameters": s["parameters"], "model_bytes": (run.run_dir / "best.safetensors").stat().st_size,
            "device": s.get("device"),
        },
        "inference": inference,
        "history": run.history,
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix,
        "confusion_plot": _confusion_name(run.name),
    }


def _confusion_name(name: str) -> str:
    return "confusion-" + re.sub(r"[^A-Za-z0-9._-]+", "-", name) + ".png"


# --- building and writing ---------------------------------------------------------------------

def build_report(run_dirs: Sequence[Path | str], reporter: Optional[Reporter] = None) -> ComparisonReport:
    """Read, check and compare the runs; writes nothing but the runs' ``latency.json`` cache."""
    reporter = reporter or NullReporter()
    if len(run_dirs) < 2:
        raise FlowerfastError(f"a comparison needs at least 2 run folders (got {len(run_dirs)})")
    resolved = [Path(d).expanduser().resolve() for d in run_dirs]
    dupes = sorted({str(d) for d in resolved if resolved.count(d) > 1})
    if dupes:
        raise FlowerfastError(f"run folder given more than once: {dupes[0]}")
    runs = [load_run(d) for d in resolved]
    _unique_names(runs)
    check_same_split(runs)
    classes = runs[0].classes
    for r in runs[1:]:
        if r.classes != classes:
            raise FlowerfastError(f"{r.name} was trained on classes {r.classes}, {runs[0].name} on {classes}")
    models = []
    for r in runs:
        reporter.stage(f"measuring inference speed of {r.name}")
        models.append(_model_entry(r, measure_inference(r.run_dir)))
    reporter.stage("comparing predictions on the validation images")
    pairs = [compare_pair(a, b) for a, b in combinations(runs, 2)]
    valid = [row for row in runs[0].split if row["is_valid"] in ("1", "True", "true")]
    cfg = runs[0].config
    split = {"data": cfg.get("data"), "classes": classes, "n_train": len(runs[0].split) - len(valid),
             "n_valid": len(valid), "valid_per_class": {c: sum(row["label"] == c for row in valid) for c in classes},
             "seed": cfg.get("seed"), "preset_split": cfg.get("preset_split")}
    settings = {"alpha": ALPHA, "ci_level": CI_LEVEL, "bootstrap_resamples": N_RESAMPLES,
                "bootstrap_seed": BOOTSTRAP_SEED, "test": "McNemar exact (two-sided binomial on discordant pairs)"}
    plots = {"curves": CURVES_PLOT, "per_class_accuracy": PER_CLASS_PLOT,
             "confusion": {m["name"]: m["confusion_plot"] for m in models}}
    return ComparisonReport(models=models, pairs=pairs, split=split, settings=settings, plots=plots)


def write_report(rep: ComparisonReport, out: Path) -> ComparisonReport:
    """Write report.json, the PNG plots, report.md and report.html into ``out`` (which must exist)."""
    out = Path(out)
    files = [write_json(out / "report.json", rep.to_dict())]
    images = {CURVES_PLOT: curves_png(rep.models), PER_CLASS_PLOT: per_class_png(rep.models, rep.split["classes"])}
    for m in rep.models:
        images[m["confusion_plot"]] = confusion_png(m["name"], rep.split["classes"], m["confusion_matrix"])
    for name, data in images.items():
        files.append(atomic_write_bytes(out / name, data))
    files.append(atomic_write_text(out / "report.md", render_markdown(rep)))
    files.append(atomic_write_text(out / "report.html", render_html(rep, images)))
    rep.out, rep.files = out, files
    return rep


def report(run_dirs: Sequence[Path | str], out: Optional[Path | str] = None,
           reporter: Optional[Reporter] = None) -> ComparisonReport:
    """Compare finished runs made on the same split and write the report into a new folder ``out``
    (default ``runs/report-<timestamp>``). Refuses runs whose ``split.csv`` differ."""
    out_dir = check_output_dir(Path(out) if out is not None else default_run_dir("report"))
    rep = build_report(run_dirs, reporter)
    return write_report(rep, create_run_dir(out_dir))


# --- plots (matplotlib's Agg canvas, no pyplot: no global state, no display needed) -----------

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_png(models: list[dict]) -> bytes:
    """Loss and accuracy per epoch, every model on the same two panels (one colour per model)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, m in enumerate(models):
        color = f"C{i}"
        epochs = [h["epoch"] for h in m["history"]]
        loss_ax.plot(epochs, [h["train_loss"] for h in m["history"]], "-o", color=color, ms=3,
                     label=f"{m['name']} train")
        loss_ax.plot(epochs, [h["valid_loss"] for h in m["history"]], "--s", color=color, ms=3,
                     label=f"{m['name']} valid")
        acc_ax.plot(epochs, [h["valid_accuracy"] for h in m["history"]], "-o", color=color, ms=3,
                    label=f"{m['name']} valid")
        clean = [(e, h["train_accuracy_clean"]) for e, h in zip(epochs, m["history"])
                 if h["train_accuracy_clean"] is not None]
        if clean:
            acc_ax.plot(*zip(*clean), "--s", color=color, ms=3, label=f"{m['name']} train (clean)")
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def confusion_png(name: str, classes: list[str], matrix: list[list[int]]) -> bytes:
    """Counts of true class (rows) against predicted class (columns) on the validation images."""
    import numpy as np

    n = len(classes)
    side = min(12, 2.5 + 0.45 * n)
    fig = _figure(side, side)
    ax = fig.subplots()
    data = np.asarray(matrix)
    ax.imshow(data, cmap="Blues")
    if n <= 30:
        top = data.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(data[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if data[i, j] > top / 2 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix: {name}")
    fig.tight_layout()
    return _png(fig)


def per_class_png(models: list[dict], classes: list[str]) -> bytes:
    """Validation accuracy per class, the models' bars side by side."""
    import numpy as np

    fig = _figure(max(6, 1 + 0.9 * len(classes) * max(1, len(models)) / 2), 4)
    ax = fig.subplots()
    x = np.arange(len(classes))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        values = [m["per_class_accuracy"].get(c) or 0.0 for c in classes]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=m["name"], color=f"C{i}")
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
    ax.set(ylabel="validation accuracy", ylim=(0, 1.05), title="per-class validation accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --- rendering --------------------------------------------------------------------------------

def _md_table(t: Table) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|")
    align = t.align_right or [False] * len(t.headers)
    lines = ["| " + " | ".join(cell(h) for h in t.headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _title(rep: ComparisonReport) -> str:
    return "Model comparison: " + " vs ".join(m["name"] for m in rep.models)


def _intro(rep: ComparisonReport) -> list[str]:
    s = rep.split
    seed = "given train/valid folders" if s.get("preset_split") else f"random split, seed {s.get('seed')}"
    return [f"Data: `{s.get('data')}`: {s['n_train']} training and {s['n_valid']} validation images, "
            f"{len(s['classes'])} classes ({seed}). Every model was trained and scored on exactly this split "
            f"(identical `split.csv`).",
            "Weights: " + "; ".join(f"{m['name']} from {m['weights_source']}" for m in rep.models) + "."
            + (" **Warning: some models started from pretrained weights and some from random ones, so the "
               "comparison is not like for like.**" if len({bool(m["pretrained"]) for m in rep.models}) > 1 else "")]


def _method_note(rep: ComparisonReport) -> str:
    st = rep.settings
    return (f"Paired on the same {rep.pairs[0]['n_images']} validation images (matched by file). "
            f"A - B is the accuracy difference in percentage points with a {st['ci_level']:.0%} paired bootstrap "
            f"interval ({st['bootstrap_resamples']} resamples of the images, seed {st['bootstrap_seed']}); "
            f"p is McNemar's exact test on the images only one model gets right; alpha = {st['alpha']}.")


def render_markdown(rep: ComparisonReport) -> str:
    """report.md: summary, verdicts, plots and each model's per-epoch table."""
    inf = rep.models[0]["inference"]
    parts = [f"# {_title(rep)}", "\n\n".join(_intro(rep)),
             "## Summary", _md_table(rep.summary_table()),
             f"Latency: one image per call; inference images/s: batches of {inf['batch_size']}; random input at the "
             f"model's image size on {inf['device']}. Training time and images/s as recorded by each run.",
             "## Paired comparison", _md_table(rep.pairs_table()), _method_note(rep),
             "\n".join(f"- **{v}**" for v in rep.verdicts),
             "## Training curves", f"![loss and accuracy per epoch]({rep.plots['curves']})",
             "## Per-class validation accuracy", _md_table(rep.per_class_table()),
             f"![per-class accuracy]({rep.plots['per_class_accuracy']})"]
    for m in rep.models:
        parts += [f"## {m['name']}",
                  f"Run folder: `{m['run_dir']}`; weights: {m['weights_source']}; peak lr {_num(m['lr'], '.2e')}; "
                  f"best epoch {m['summary']['best_epoch']} of {m['epochs']}.",
                  _md_table(rep.history_table(m)),
                  f"![confusion matrix of {m['name']}]({m['confusion_plot']})"]
    return "\n\n".join(parts) + "\n"


def _html_table(t: Table) -> str:
    align = t.align_right or [False] * len(t.headers)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td{' class=r' if r else ''}>{html.escape(c)}</td>" for c, r in zip(row, align))
                   + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _md_inline(text: str) -> str:
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def render_html(rep: ComparisonReport, images: dict[str, bytes]) -> str:
    """report.html: the same content as report.md, self-contained (plots inline as base64 PNG)."""
    title = html.escape(_title(rep))
    parts = [f"<h1>{title}</h1>", *[f"<p>{_md_inline(p)}</p>" for p in _intro(rep)],
             "<h2>Summary</h2>", _html_table(rep.summary_table()),
             "<h2>Paired comparison</h2>", _html_table(rep.pairs_table()), f"<p>{_md_inline(_method_note(rep))}</p>",
             "<ul>" + "".join(f"<li><strong>{html.escape(v)}</strong></li>" for v in rep.verdicts) + "</ul>",
             "<h2>Training curves</h2>", _img(images[rep.plots["curves"]], "loss and accuracy per epoch"),
             "<h2>Per-class validation accuracy</h2>", _html_table(rep.per_class_table()),
             _img(images[rep.plots["per_class_accuracy"]], "per-class accuracy")]
    for m in rep.models:
        parts += [f"<h2>{html.escape(m['name'])}</h2>",
                  f"<p>Run folder: <code>{html.escape(m['run_dir'])}</code>; weights: "
                  f"{html.escape(str(m['weights_source']))}; best epoch {m['summary']['best_epoch']} of {m['epochs']}.</p>",
                  _html_table(rep.history_table(m)), _img(images[m["confusion_plot"]], f"confusion matrix of {m['name']}")]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px}"
             "td.r{text-align:right}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style>"
            f"</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
