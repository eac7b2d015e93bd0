"""Rendering a comparison for people: the tables, report.md and report.html.

The figures are computed in :mod:`flowerfast.reporting.report`; this module only turns them into text. Each
table is built once as plain strings (:class:`Table`) and shown the same way in Markdown, in HTML
and in the terminal, so the three never disagree. The documents themselves are Jinja2 templates
(``flowerfast/templates/report.md.j2`` and ``report.html.j2``): the HTML one escapes every value
(autoescape), and inline markup such as code and bold is written in each template rather than
converted from Markdown, so nothing a run folder contains can turn into markup.

Nothing here imports :mod:`flowerfast.reporting.report`: the report (``ComparisonReport``, its
``ModelEntry`` and ``PairResult`` objects) is passed in.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

HTML_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px}"
    "td.r{text-align:right}th{background:#f3f3f3}img{max-width:100%}"
)


# --- formatting of single figures -------------------------------------------------------------


def format_percent(value: Optional[float]) -> str:
    """``0.2`` as ``20.0%``; ``-`` for a missing figure."""
    return "-" if value is None else f"{100 * value:.1f}%"


def format_points(value: float) -> str:
    """A difference of two accuracies in percentage points, signed: ``-5.0 pp``."""
    return f"{100 * value:+.1f} pp"


def format_number(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_p_value(p: float) -> str:
    """For a sentence: ``p < 0.001`` or ``p = 0.24``."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def format_p_cell(p: float) -> str:
    """For a table column headed with p: ``< 0.001`` or ``0.24``."""
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


# --- tables -----------------------------------------------------------------------------------


@dataclass
class Table:
    """A table as plain strings, rendered the same way to Markdown, HTML and the terminal."""

    headers: list[str]
    rows: list[list[str]]
    align_right: list[bool] = field(default_factory=list)

    @property
    def alignment(self) -> list[bool]:
        """Right-alignment of each column (all left where none was given)."""
        return self.align_right or [False] * len(self.headers)


def spread(median: Optional[float], low: Optional[float], high: Optional[float], fmt: str, unit: str = "") -> str:
    """``12.3 ms (11.8-13.1)``: a measured figure with the range of its repeats."""
    if median is None:
        return "-"
    text = f"{median:{fmt}}{unit}"
    return text + (f" ({low:{fmt}}-{high:{fmt}})" if low is not None and high is not None else "")


def summary_table(models: Sequence[Any]) -> Table:
    """One row per model: accuracy, training time and speed, size, inference speed (median of
    the repeats, with their range)."""
    headers = [
        "model",
        "best valid acc",
        "best epoch",
        "final valid acc",
        "training time",
        "s/epoch",
        "train images/s",
        "parameters (this model)",
        "parameters (flowerfast archs)",
        "model size",
        "latency/image (range)",
        "inference images/s (range)",
    ]
    rows = []
    for m in models:
        s, inf = m.summary, m.inference
        published = getattr(m, "published_parameters", None)
        rows.append(
            [
                m.name,
                format_percent(s.best_valid_accuracy),
                str(s.best_epoch),
                format_percent(s.final_valid_accuracy),
                f"{s.seconds:.1f} s",
                f"{s.seconds_per_epoch:.1f}",
                format_number(s.train_images_per_second, ".1f"),
                f"{s.parameters / 1e6:.2f}M",
                f"{published / 1e6:.2f}M" if published else "-",
                f"{s.model_bytes / 1e6:.1f} MB",
                spread(inf["latency_ms_per_image"], inf.get("latency_ms_min"), inf.get("latency_ms_max"), ".1f", " ms"),
                spread(
                    inf["images_per_second"], inf.get("images_per_second_min"), inf.get("images_per_second_max"), ".1f"
                ),
            ]
        )
    return Table(headers, rows, [False] + [True] * (len(headers) - 1))


def settings_table(models: Sequence[Any]) -> Table:
    """One row per training setting, one column per model: what each model was trained with."""
    names = list(models[0].training) if models else []
    rows = [[name, *[format_setting(m.training.get(name)) for m in models]] for name in names]
    return Table(["setting", *[m.name for m in models]], rows, [False] * (len(models) + 1))


def format_setting(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}"
    return str(value)


def pairs_table(pairs: Sequence[Any], ci_level: float) -> Table:
    """One row per pair of models: paired accuracies, difference with its interval, McNemar's p."""
    headers = [
        "model A",
        "model B",
        "images",
        "acc A",
        "acc B",
        "A - B",
        f"{ci_level:.0%} CI",
        "only A right",
        "only B right",
        "McNemar p",
    ]
    rows = [
        [
            p.a,
            p.b,
            str(p.n_images),
            format_percent(p.accuracy_a),
            format_percent(p.accuracy_b),
            format_points(p.difference),
            f"[{format_points(p.ci_low)}, {format_points(p.ci_high)}]",
            str(p.only_a_correct),
            str(p.only_b_correct),
            format_p_cell(p.p_value),
        ]
        for p in pairs
    ]
    return Table(headers, rows, [False, False] + [True] * (len(headers) - 2))


def history_table(history: Sequence[Any]) -> Table:
    """One row per epoch of one run, as its ``history.csv`` says."""
    headers = [
        "epoch",
        "phase",
        "train acc (aug)",
        "train acc (clean)",
        "valid acc",
        "train loss",
        "valid loss",
        "lr",
        "seconds",
    ]
    rows = [
        [
            str(h.epoch),
            h.phase,
            format_percent(h.train_accuracy_aug),
            format_percent(h.train_accuracy_clean),
            format_percent(h.valid_accuracy),
            format_number(h.train_loss, ".4f"),
            format_number(h.valid_loss, ".4f"),
            format_number(h.lr, ".2e"),
            format_number(h.seconds, ".1f"),
        ]
        for h in history
    ]
    return Table(headers, rows, [False, False] + [True] * (len(headers) - 2))


def per_class_table(models: Sequence[Any], classes: Sequence[str], valid_per_class: Mapping[str, int]) -> Table:
    """One row per class: its validation images and each model's accuracy on them."""
    headers = ["class", "valid images", *[m.name for m in models]]
    rows = [
        [c, str(valid_per_class.get(c, 0)), *[format_percent(m.per_class_accuracy.get(c)) for m in models]]
        for c in classes
    ]
    return Table(headers, rows, [False] + [True] * (len(headers) - 1))


# --- documents --------------------------------------------------------------------------------

_environment: Optional[Environment] = None


def template_environment() -> Environment:
    """The package's templates; ``*.html.j2`` autoescaped, Markdown left as written."""
    global _environment
    if _environment is None:
        _environment = Environment(
            loader=PackageLoader("flowerfast", "templates"),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _environment


def _context(rep: Any) -> dict[str, Any]:
    """Everything both templates show, computed once."""
    split = rep.split
    classes = split["classes"]
    return {
        "title": "Model comparison: " + " vs ".join(m.name for m in rep.models),
        "split": split,
        "split_kind": (
            "given train/valid folders"
            if split.get("preset_split")
            else f"{'stratified random' if split.get('stratify') else 'random'} split, seed {split.get('seed')}"
        ),
        "mixed_weights": len({bool(m.pretrained) for m in rep.models}) > 1,
        "models": [
            {"entry": m, "history": history_table(m.history), "lr": format_number(m.lr, ".2e")} for m in rep.models
        ],
        "inference": rep.models[0].inference,
        "summary": summary_table(rep.models),
        "training": settings_table(rep.models),
        "machine_load": machine_load_note(rep.models[0].inference),
        "pairs": pairs_table(rep.pairs, rep.settings["ci_level"]),
        "n_paired": rep.pairs[0].n_images,
        "ci_level": f"{rep.settings['ci_level']:.0%}",
        "settings": rep.settings,
        "verdicts": rep.verdicts,
        "per_class": per_class_table(rep.models, classes, split["valid_per_class"]),
        "plots": rep.plots,
    }


def machine_load_note(inference: Mapping[str, Any]) -> str:
    """How busy the machine was while speed was measured: the figures mean less on a loaded one."""
    load, cores = inference.get("load_average"), inference.get("cpu_count")
    if load is None:
        return "machine load not recorded"
    return f"load average {load:.2f} on {cores} CPU cores while measuring"


def render_markdown(rep: Any) -> str:
    """report.md: summary, verdicts, plots and each model's per-epoch table."""
    return template_environment().get_template("report.md.j2").render(_context(rep))


def render_html(rep: Any, images: Mapping[str, bytes]) -> str:
    """report.html: the same content as report.md, self-contained (plots inline as base64 PNG).
    ``images`` maps each plot's file name (as in ``rep.plots``) to its PNG bytes."""
    inline = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii") for name, data in images.items()}
    return template_environment().get_template("report.html.j2").render(_context(rep), images=inline, style=HTML_STYLE)
