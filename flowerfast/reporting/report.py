"""The comparison report: finished run folders in, report.md / report.json / report.html and plots out.

Everything is read back from the run folders (:mod:`flowerfast.runs.finished`), so a report can be
rebuilt at any time from the runs alone and says exactly what the files say. Runs are only
compared when their ``split.csv`` files agree row for row: a paired comparison on different
validation images means nothing.

The comparison is held as dataclasses (:class:`ModelEntry`, :class:`PairResult`,
:class:`ComparisonReport`); ``ComparisonReport.to_dict()`` is ``report.json``. Plots come from
:mod:`flowerfast.core.plots` and the documents from :mod:`flowerfast.reporting.render`; this module decides the
figures and writes the files.

Inference speed is the one thing measured here rather than read; the first measurement is stored
in the run folder (``latency.json``) and reused, so rebuilding a report gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    create_run_dir,
    default_run_dir,
    write_json,
)
from flowerfast.core.plots import confusion_png, curves_png, per_class_png
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.core.stats import confusion_counts, mcnemar_exact, paired_bootstrap_ci
from flowerfast.infer.latency import default_device, measure_inference
from flowerfast.reporting.render import format_p_value, render_html, render_markdown
from flowerfast.runs.config import DEFAULT_WEIGHT_DECAY
from flowerfast.runs.finished import RunRecord, load_runs
from flowerfast.runs.folder import EpochRecord
from flowerfast.runs.resolved import ResolvedConfig

FORMAT_VERSION = 1
ALPHA = 0.05
CI_LEVEL = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CURVES_PLOT = "curves.png"
PER_CLASS_PLOT = "per-class-accuracy.png"
MCNEMAR_TEST = "McNemar exact (two-sided binomial on discordant pairs)"


@dataclass
class ModelSummary:
    """A run's headline figures as recorded in its folder (``model_bytes``: size of ``best.safetensors``)."""

    best_valid_accuracy: float
    best_epoch: int
    final_valid_accuracy: float
    seconds: float
    seconds_per_epoch: float
    train_images_per_second: Optional[float]
    parameters: int
    model_bytes: int
    device: Optional[str]


@dataclass
class ModelEntry:
    """One model of the comparison: where it comes from, what its run recorded and how fast it predicts.

    ``inference`` is :func:`flowerfast.infer.latency.measure_inference`'s dict as measured;
    ``confusion_matrix[i][j]`` counts validation images of class ``i`` predicted as class ``j``;
    ``confusion_plot`` is the file name of its plot in the report folder.
    """

    name: str
    arch: str
    run_dir: str
    pretrained: bool
    weights_source: str
    lr: Optional[float]
    epochs: int
    summary: ModelSummary
    inference: dict[str, Any]
    history: list[EpochRecord]
    per_class_accuracy: dict[str, Optional[float]]
    confusion_matrix: list[list[int]]
    confusion_plot: str
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    published_parameters: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["summary"] = dataclasses.asdict(self.summary)
        out["history"] = [h.to_dict() for h in self.history]
        return out


@dataclass
class PairResult:
    """The paired comparison of model ``a`` with model ``b`` on the same validation images.

    ``difference`` is accuracy A minus accuracy B with its bootstrap interval ``[ci_low, ci_high]``;
    the four counts split the images by which model got them right; ``p_value`` is McNemar's exact
    test on the discordant ones; ``verdict`` says it in one sentence.
    """

    a: str
    b: str
    n_images: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    both_correct: int
    only_a_correct: int
    only_b_correct: int
    both_wrong: int
    p_value: float
    significant: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ComparisonReport:
    """A comparison of models trained on one split. ``to_dict()`` is the content of ``report.json``.

    ``models``: one :class:`ModelEntry` per run. ``pairs``: one :class:`PairResult` per pair of
    models. ``split``: the data, classes and image counts; ``settings``: the statistics' settings;
    ``plots``: the plots' file names. ``out`` and ``files`` say where the report was written.
    """

    models: list[ModelEntry]
    pairs: list[PairResult]
    split: dict[str, Any]
    settings: dict[str, Any]
    plots: dict[str, Any]
    out: Optional[Path] = None
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "flowerfast-comparison",
            "format_version": FORMAT_VERSION,
            "split": self.split,
            "settings": self.settings,
            "models": [m.to_dict() for m in self.models],
            "pairs": [p.to_dict() for p in self.pairs],
            "plots": self.plots,
        }

    @property
    def verdicts(self) -> list[str]:
        return [p.verdict for p in self.pairs]


def verdict(a: str, b: str, difference: float, p: float, alpha: float = ALPHA) -> str:
    """One plain sentence: which model is better on this split, or that the data cannot tell."""
    if p < alpha and difference != 0:
        better, worse = (a, b) if difference > 0 else (b, a)
        return f"{better} is better than {worse} on this split ({format_p_value(p)})"
    return f"no significant difference between {a} and {b} on this split ({format_p_value(p)})"


def compare_pair(
    a: RunRecord,
    b: RunRecord,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
    alpha: float = ALPHA,
) -> PairResult:
    """The paired comparison of two runs on their common validation images (matched by file)."""
    pa = {p.file: p for p in a.predictions}
    pb = {p.file: p for p in b.predictions}
    if set(pa) != set(pb):
        missing = sorted(set(pa) ^ set(pb))
        raise FlowerfastError(
            f"valid_predictions.csv of {a.name} and {b.name} cover different images "
            f"({len(missing)} differ, e.g. {missing[0]})"
        )
    files = sorted(pa)
    correct_a = [pa[f].correct for f in files]
    correct_b = [pb[f].correct for f in files]
    pairs = list(zip(correct_a, correct_b))
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    diff, lo, hi = paired_bootstrap_ci(correct_a, correct_b, n_resamples=n_resamples, seed=seed, level=level)
    p = mcnemar_exact(only_a, only_b)
    return PairResult(
        a=a.name,
        b=b.name,
        n_images=len(files),
        accuracy_a=sum(correct_a) / len(files),
        accuracy_b=sum(correct_b) / len(files),
        difference=diff,
        ci_low=lo,
        ci_high=hi,
        both_correct=sum(x and y for x, y in pairs),
        only_a_correct=only_a,
        only_b_correct=only_b,
        both_wrong=sum(not x and not y for x, y in pairs),
        p_value=p,
        significant=p < alpha,
        verdict=verdict(a.name, b.name, diff, p, alpha),
    )


def confusion_plot_name(name: str) -> str:
    """The file name of a model's confusion plot: its name with anything unsafe in a file name replaced."""
    return "confusion-" + re.sub(r"[^A-Za-z0-9._-]+", "-", name) + ".png"


def model_entry(run: RunRecord, inference: dict[str, Any]) -> ModelEntry:
    """A run's entry in the report, from its files and its measured inference speed."""
    s = run.summary
    classes = run.classes
    matrix = confusion_counts([p.label for p in run.predictions], [p.predicted for p in run.predictions], classes)
    per_class = {c: (matrix[i][i] / sum(matrix[i]) if sum(matrix[i]) else None) for i, c in enumerate(classes)}
    figures = ModelSummary(
        best_valid_accuracy=s.best_valid_accuracy,
        best_epoch=s.best_epoch,
        final_valid_accuracy=s.final_valid_accuracy,
        seconds=s.seconds,
        seconds_per_epoch=s.seconds_per_epoch,
        train_images_per_second=s.train_images_per_second,
        parameters=s.parameters,
        model_bytes=run.folder.best_model.stat().st_size,
        device=s.device,
    )
    return ModelEntry(
        name=run.name,
        arch=s.arch,
        run_dir=str(run.run_dir),
        pretrained=s.pretrained,
        weights_source=s.weights_source,
        lr=s.lr,
        epochs=len(run.history),
        summary=figures,
        inference=inference,
        history=run.history,
        per_class_accuracy=per_class,
        confusion_matrix=matrix,
        confusion_plot=confusion_plot_name(run.name),
        training=training_settings(run.config, s),
        published_parameters=published_parameters(s.arch),
    )


def training_settings(config: ResolvedConfig, summary) -> dict[str, Any]:
    """What a run was trained with, as the report shows it: image size, batch size, epochs
    (frozen + full, and where it stopped early), learning rate, precision and the augmentation."""
    from flowerfast.data.loaders import augmentation_description

    size = config.size
    return {
        "image size": size,
        "batch size": config.bs,
        "epochs": summary.epochs,
        "frozen epochs": config.freeze_epochs,
        "peak lr": config.lr,
        "body lr": config.body_lr if config.pretrained else None,
        "precision": config.precision,
        "split": "stratified" if config.options.stratify else "random",
        "augmentation": (
            augmentation_description(size, config.min_scale, config.options.augment, config.options.batch_crop)
            if size
            else None
        ),
        "recipe": recipe_description(config.options) or None,
    }


def recipe_description(options) -> str:
    """The recipe options a run was given beyond the defaults, in words."""
    parts = [
        f"time budget {options.time_budget:g} s" if options.time_budget else "",
        f"label smoothing {options.label_smoothing:g}" if options.label_smoothing else "",
        f"weight decay {options.weight_decay:g}" if options.weight_decay != DEFAULT_WEIGHT_DECAY else "",
        f"MixUp alpha {options.mixup:g}" if options.mixup else "",
        f"CutMix alpha {options.cutmix:g}" if options.cutmix else "",
        f"weight average (decay {options.ema_decay:g})" if options.ema else "",
        f"progressive sizes {','.join(map(str, options.progressive))}" if options.progressive else "",
    ]
    return "; ".join(p for p in parts if p)


def published_parameters(arch: str) -> Optional[int]:
    """The parameter count ``flowerfast archs`` shows: the network with its ImageNet classifier
    (a fine-tuned model replaces that classifier with a smaller head)."""
    from flowerfast.models.pretrained import published_facts

    return published_facts(arch)[0]


def split_facts(run: RunRecord) -> dict[str, Any]:
    """The shared split as ``report.json`` states it: data, classes, sizes, how it was made."""
    classes = run.classes
    valid = run.valid_rows
    cfg = run.config
    return {
        "data": cfg.data,
        "classes": classes,
        "n_train": len(run.split) - len(valid),
        "n_valid": len(valid),
        "valid_per_class": {c: sum(row.label == c for row in valid) for c in classes},
        "seed": cfg.options.seed,
        "preset_split": cfg.preset_split,
        "stratify": cfg.options.stratify,
    }


def build_report(
    run_dirs: Sequence[Path | str], reporter: Optional[Reporter] = None, precision: str = "fp32"
) -> ComparisonReport:
    """Read, check and compare the runs; writes nothing but the runs' ``latency.json`` cache.
    ``precision`` is the one inference speed is measured in (``fp32`` unless asked)."""
    reporter = reporter or NullReporter()
    runs = load_runs(run_dirs)
    models = []
    device = default_device(runs[0].run_dir)  # one device for all: their speeds sit side by side
    for r in runs:
        reporter.stage(f"measuring inference speed of {r.name}")
        models.append(model_entry(r, measure_inference(r.run_dir, device=device, precision=precision)))
    reporter.stage("comparing predictions on the validation images")
    pairs = [compare_pair(a, b) for a, b in combinations(runs, 2)]
    settings = {
        "alpha": ALPHA,
        "ci_level": CI_LEVEL,
        "bootstrap_resamples": N_RESAMPLES,
        "bootstrap_seed": BOOTSTRAP_SEED,
        "test": MCNEMAR_TEST,
    }
    plots = {
        "curves": CURVES_PLOT,
        "per_class_accuracy": PER_CLASS_PLOT,
        "confusion": {m.name: m.confusion_plot for m in models},
    }
    return ComparisonReport(models=models, pairs=pairs, split=split_facts(runs[0]), settings=settings, plots=plots)


def draw_plots(rep: ComparisonReport) -> dict[str, bytes]:
    """Every plot of the report as PNG bytes, by file name."""
    classes = rep.split["classes"]
    images = {CURVES_PLOT: curves_png(rep.models), PER_CLASS_PLOT: per_class_png(rep.models, classes)}
    for m in rep.models:
        images[m.confusion_plot] = confusion_png(f"confusion matrix: {m.name}", classes, m.confusion_matrix)
    return images


def write_report(rep: ComparisonReport, out: Path) -> ComparisonReport:
    """Write report.json, the PNG plots, report.md and report.html into ``out`` (which must exist)."""
    out = Path(out)
    files = [write_json(out / "report.json", rep.to_dict())]
    images = draw_plots(rep)
    for name, data in images.items():
        files.append(atomic_write_bytes(out / name, data))
    files.append(atomic_write_text(out / "report.md", render_markdown(rep)))
    files.append(atomic_write_text(out / "report.html", render_html(rep, images)))
    rep.out, rep.files = out, files
    return rep


def report(
    run_dirs: Sequence[Path | str],
    out: Optional[Path | str] = None,
    reporter: Optional[Reporter] = None,
    precision: str = "fp32",
) -> ComparisonReport:
    """Compare finished runs made on the same split and write the report into a new folder ``out``
    (default ``runs/report-<timestamp>``). Refuses runs whose ``split.csv`` differ."""
    out_dir = check_output_dir(Path(out) if out is not None else default_run_dir("report"))
    rep = build_report(run_dirs, reporter, precision=precision)
    return write_report(rep, create_run_dir(out_dir))
