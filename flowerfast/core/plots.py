"""Every plot flowerfast draws, as PNG bytes: training curves, per-class accuracy, confusion
matrices, the grid of mistakes and the learning-rate finder's curve.

One module, so a confusion matrix looks the same in an evaluation and in a comparison, and so
every plot is drawn the same safe way: a :class:`matplotlib.figure.Figure` on its own Agg canvas,
never pyplot. That keeps plotting free of global state (no backend switch with
``matplotlib.use``, no figure registry to leak into, no display needed), so it is safe in a
library, in threads and on servers. Functions return bytes and write nothing: the caller writes
them through :mod:`flowerfast.core.files`, atomically. Nothing from flowerfast is imported: the models
(:class:`flowerfast.reporting.report.ModelEntry`) and mistakes (:class:`flowerfast.infer.evaluate.Mistake`)
are passed in.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LR_FIND_COLORS = {"valley": "#d62728", "slide": "#2ca02c", "minimum": "#9467bd", "steep": "#ff7f0e"}
LR_FIND_LABELS = {"minimum": "minimum / 10 (fastai's rule: a tenth of the lowest loss's lr)"}


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = None) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


LINE_STYLES = {
    "train": dict(ls="-", marker="o"),
    "train (augmented)": dict(ls="-", marker="o"),
    "train (clean)": dict(ls=":", marker="^"),
    "valid": dict(ls="--", marker="s"),
}
"""One line style per kind of figure, the same in every panel and every plot: solid circles are
training batches, dashed squares validation, dotted triangles the clean training sample. Colour
tells the models apart."""


def curves_png(models: Sequence[Any]) -> bytes:
    """Loss and accuracy per epoch for each model (``.name``, ``.history``): one colour per model,
    one line style per kind (:data:`LINE_STYLES`). The loss axis is logarithmic when the losses
    span more than a factor of 20, so a large first epoch does not flatten the rest."""
    fig = new_figure(11, 4.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    losses = []
    for i, m in enumerate(models):
        color = f"C{i}"
        prefix = f"{m.name} " if len(models) > 1 else ""
        epochs = [h.epoch for h in m.history]
        for kind, values in (
            ("train", [h.train_loss for h in m.history]),
            ("valid", [h.valid_loss for h in m.history]),
        ):
            loss_ax.plot(epochs, values, color=color, ms=3, label=prefix + kind, **LINE_STYLES[kind])
            losses += [v for v in values if v is not None and math.isfinite(v) and v > 0]
        acc_ax.plot(
            epochs,
            [h.train_accuracy_aug for h in m.history],
            color=color,
            ms=3,
            label=prefix + "train (augmented)",
            **LINE_STYLES["train (augmented)"],
        )
        clean = [(h.epoch, h.train_accuracy_clean) for h in m.history if h.train_accuracy_clean is not None]
        if clean:
            acc_ax.plot(*zip(*clean), color=color, ms=3, label=prefix + "train (clean)", **LINE_STYLES["train (clean)"])
        acc_ax.plot(
            epochs,
            [h.valid_accuracy for h in m.history],
            color=color,
            ms=3,
            label=prefix + "valid",
            **LINE_STYLES["valid"],
        )
    log = bool(losses) and max(losses) / min(losses) > 20
    if log:
        loss_ax.set_yscale("log")
    loss_ax.set(title="loss" + (" (log scale)" if log else ""), xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return figure_png(fig)


def per_class_png(models: Sequence[Any], classes: Sequence[str]) -> bytes:
    """Validation accuracy per class, the models' bars side by side, each labelled with its
    value; a bar of 0% is drawn as a visible outline at the axis, not left out."""
    fig = new_figure(max(6, 1 + 0.9 * len(classes) * max(1, len(models)) / 2), 4)
    ax = fig.subplots()
    x = np.arange(len(classes))
    width = 0.8 / len(models)
    label_bars = len(classes) * len(models) <= 40
    for i, m in enumerate(models):
        values = [m.per_class_accuracy.get(c) or 0.0 for c in classes]
        bars = ax.bar(
            x - 0.4 + width * (i + 0.5), values, width, label=m.name, color=f"C{i}", edgecolor=f"C{i}", linewidth=1.5
        )
        for bar, value in zip(bars, values):
            if value == 0:  # a zero-height bar: mark it so "0%" is seen, not mistaken for "no data"
                ax.plot([bar.get_x(), bar.get_x() + bar.get_width()], [0.004, 0.004], color=f"C{i}", lw=3)
            if label_bars:
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    value + 0.015,
                    f"{value:.0%}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    tilt = len(classes) > 8
    ax.set_xticks(x, list(classes), rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set(ylabel="validation accuracy", ylim=(0, 1.1), title="per-class validation accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def _draw_confusion(ax, classes: Sequence[str], data: np.ndarray, title: str, fmt) -> None:
    n = len(classes)
    ax.imshow(data, cmap="Blues", vmin=0)
    if n <= 30:
        top = float(data.max()) if data.size else 0.0
        top = top or 1.0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    fmt(data[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if data[i, j] > top / 2 else "black",
                )
    ax.set_xticks(range(n), list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), list(classes), fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def confusion_png(
    title: str, classes: Sequence[str], matrix: Sequence[Sequence[int]], normalised: bool = False
) -> bytes:
    """Counts of true class (rows) against predicted class (columns), each cell labelled when
    there are at most 30 classes. Used by ``evaluate``, training runs and the comparison report.
    ``normalised`` adds a second panel with each row divided by its total (the share of each
    true class given each answer; the diagonal is per-class recall)."""
    n = len(classes)
    side = min(12, 2.5 + 0.45 * n)
    data = np.asarray(matrix, dtype=np.int64).reshape(n, n)
    if not normalised:
        fig = new_figure(side, side)
        _draw_confusion(fig.subplots(), classes, data, title, str)
        fig.tight_layout()
        return figure_png(fig)
    fig = new_figure(2 * side, side + 0.4, layout="constrained")
    counts_ax, shares_ax = fig.subplots(1, 2)
    totals = data.sum(axis=1, keepdims=True)
    shares = np.divide(data, totals, out=np.zeros(data.shape, dtype=float), where=totals > 0)
    _draw_confusion(counts_ax, classes, data, "counts", str)
    _draw_confusion(shares_ax, classes, shares, "share of each true class", lambda v: f"{v:.0%}")
    fig.suptitle(title)
    return figure_png(fig)


def grid_columns(n: int, widest: int) -> int:
    """Columns for a grid of ``n`` pictures, at most ``widest``: a count that fills every row
    when one down to half the width does, so a grid has no empty cells where it can help it."""
    cols = min(widest, n)
    for c in range(cols, max(1, cols // 2) - 1, -1):
        if n % c == 0:
            return c
    return cols


def mistakes_png(mistakes: Sequence[Any], columns: int = 4, pictures: Optional[Sequence[Any]] = None) -> bytes:
    """A grid of wrongly classified images, each titled with its true class, the predicted class
    and the probability the model gave that (wrong) class. Only as many cells as images.
    ``pictures`` (PIL images, one per mistake) are drawn instead of the files: Grad-CAM overlays."""
    if not mistakes:
        raise ValueError("no mistakes to plot")
    from PIL import Image

    n = len(mistakes)
    cols = grid_columns(n, columns)
    rows = (n + cols - 1) // cols
    # constrained layout sizes the rows around the three-line titles, so none is cut off
    fig = new_figure(3 * cols, 3.6 * rows, layout="constrained")
    for k, m in enumerate(mistakes):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.axis("off")
        if pictures is not None:
            ax.imshow(pictures[k].convert("RGB"))
        else:
            with Image.open(m.path) as im:
                im.thumbnail((256, 256))
                ax.imshow(im.convert("RGB"))
        ax.set_title(
            f"true {m.true}, predicted {m.predicted}\nP({m.predicted}) = {m.probability:.1%}\n{m.path.name}", fontsize=8
        )
    return figure_png(fig)


def _loss_at(lrs: Sequence[float], losses: Sequence[float], lr: float) -> float:
    best = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(lr)))
    return losses[best]


def lr_find_png(
    lrs: Sequence[float], losses: Sequence[float], suggestions: Mapping[str, float], title: str = ""
) -> bytes:
    """Loss against a log-scale learning rate, each suggestion marked and labelled."""
    fig = new_figure(7, 4.5, dpi=110)
    ax = fig.subplots()
    ax.plot(lrs, losses, color="#1f77b4", lw=1.6, label="loss (smoothed)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    finite = [loss for loss in losses if math.isfinite(loss)]
    if finite:
        lo, hi = min(finite), min(max(finite), min(finite) + 3 * (sorted(finite)[len(finite) // 2] - min(finite) + 0.1))
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    for name, lr in suggestions.items():
        ax.plot(
            [lr],
            [_loss_at(lrs, losses, lr)],
            "o",
            color=LR_FIND_COLORS.get(name, "k"),
            ms=8,
            label=f"{LR_FIND_LABELS.get(name, name)}: {lr:.2e}",
        )
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(title or "learning-rate finder")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    return figure_png(fig)


def batch_png(images: Any, labels: Sequence[str], columns: int = 8, title: str = "") -> bytes:
    """A grid of images (``N x H x W x 3`` floats in [0, 1]) each titled with its label: a
    training batch as the model sees it, after augmentation (``show-batch``). Only as many cells
    as images."""
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    cols = grid_columns(n, columns)
    rows = (n + cols - 1) // cols
    fig = new_figure(1.6 * cols, 1.8 * rows + (0.4 if title else 0), layout="constrained")
    for k in range(n):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.clip(images[k], 0, 1))
        ax.set_title(labels[k], fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def reliability_png(title: str, curves: Mapping[str, Sequence[tuple[float, float, int]]]) -> bytes:
    """The reliability diagram: accuracy against confidence, per confidence bin, for each named
    set of bins (``{"before (T=1)": bins, "after (T=1.4)": bins}``, bins as
    :func:`flowerfast.core.calibration.reliability_bins` gives them). On the diagonal a model's
    confidence is its accuracy; below it, it is over-confident. Marker size follows the count."""
    fig = new_figure(5.5, 5.2, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name, bins in curves.items():
        filled = [(c, a, n) for c, a, n in bins if n]
        if not filled:
            continue
        conf, acc, counts = zip(*filled)
        total = sum(counts)
        ax.plot(conf, acc, marker="o", linewidth=1.5, label=name)
        ax.scatter(conf, acc, s=[20 + 400 * n / total for n in counts], alpha=0.25)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return figure_png(fig)


def risk_coverage_png(
    title: str, coverage: Sequence[float], risk: Sequence[float], target_risk: float, chosen: Sequence[tuple]
) -> bytes:
    """The risk-coverage curve: of the photos answered (coverage, from the most confident down),
    the share answered wrongly. ``target_risk`` is drawn as a line, and each ``(label, coverage,
    risk)`` of ``chosen`` (the suggested and the given minimum confidence) as a point."""
    fig = new_figure(5.5, 4.4, layout="constrained")
    ax = fig.add_subplot()
    ax.step(coverage, risk, where="post", linewidth=1.5, label="answering the most confident first")
    ax.axhline(target_risk, color="0.5", linestyle="--", linewidth=1, label=f"target: {1 - target_risk:.0%} right")
    for label, cov, r in chosen:
        ax.scatter([cov], [r], s=50, zorder=3, label=label)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, max(0.05, 1.1 * max(risk, default=0.0), 1.1 * target_risk))
    ax.set_xlabel("coverage (share of photos answered)")
    ax.set_ylabel("risk (share of answers wrong)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return figure_png(fig)
