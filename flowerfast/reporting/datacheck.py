"""``flowerfast check``'s library side: a data folder checked (:mod:`flowerfast.data.checks`), its
likely label errors when a model is given (:mod:`flowerfast.reporting.labelissues`), and the
report, ``check.json`` and a self-contained ``check.html`` showing the photos concerned.

Why the page shows thumbnails: whether two photos are one photo, or a photo is a daisy, is seen in
a glance and argued about in words. Each photo listed is embedded as a small JPEG (a base64 data
URI, :data:`THUMB_SIDE` px), so the page can be mailed or archived without the data folder; a
section lists at most :data:`MAX_LISTED` entries (``check.json`` has them all), which bounds the
page for a folder full of copies.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_text, check_output_dir, create_run_dir, write_json
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.data.checks import MIN_SIDE, DataCheck, check_folder, check_split
from flowerfast.data.folders import ImageFolder, default_data_dir
from flowerfast.data.hashes import DEFAULT_MAX_DISTANCE
from flowerfast.data.labelfiles import scan_data
from flowerfast.reporting.labelissues import DEFAULT_TOP, check_label_options, find_label_issues
from flowerfast.runs.config import DEFAULTS
from flowerfast.runs.folder import relative_path

CHECK_JSON = "check.json"
CHECK_HTML = "check.html"
FOLDS_DIR = "folds"
THUMB_SIDE = 96
THUMB_QUALITY = 80
MAX_LISTED = 200


@dataclass(frozen=True)
class CheckFiles:
    """The files a check wrote."""

    out_dir: Path
    json: Path
    html: Path


def check_data(
    data: Optional[Path | str | ImageFolder] = None,
    out: Optional[Path | str] = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_side: int = MIN_SIDE,
    valid_pct: float = DEFAULTS.valid_pct,
    seed: int = DEFAULTS.seed,
    stratify: bool = DEFAULTS.stratify,
    split_file: Optional[Path | str] = None,
    model: Optional[Path | str] = None,
    folds: Optional[int] = None,
    top: int = DEFAULT_TOP,
    reporter: Optional[Reporter] = None,
    labels: Optional[Path | str] = None,
    multi_label: bool = False,
    **train_options,
) -> DataCheck:
    """Check a data folder (the embedded sample by default; or an :class:`ImageFolder` already
    scanned) against the split ``flowerfast train`` would make with the same ``valid_pct``,
    ``seed``, ``stratify`` and ``split_file``: unreadable files, byte-identical and
    near-identical photos (difference hashes at most ``max_distance`` bits apart) within a class,
    across classes and across the split, photos whose shorter side is under ``min_side`` pixels,
    and class balance. With ``model`` (a run folder), or ``folds`` (K models trained with its
    options, or the defaults), the ``top`` likely label errors (cleanlab, the ``cleanlab`` extra);
    ``train_options`` (``threads``, ``device``) override the fold runs' options. ``labels`` and
    ``multi_label`` read the photos' labels from a table, as ``train`` does
    (:func:`flowerfast.data.labelfiles.scan_data`); label errors need one label per photo.

    With ``out``, ``check.json`` and ``check.html`` are written into that new folder (and the fold
    runs into ``out/folds/``); without it nothing is written but the fold runs, in a temporary
    folder removed afterwards.
    """
    reporter = reporter or NullReporter()
    if model is not None or folds is not None:
        check_label_options(model, folds, top)  # before the scan, not after minutes of work
        if multi_label:
            raise FlowerfastError(
                "likely label errors are ranked for one label per photo: leave out $model and $folds "
                "to check a multi-label folder",
                parameters=("model", "folds"),
            )
    out_dir = check_output_dir(Path(out)) if out is not None else None
    if isinstance(data, ImageFolder):
        folder = data
    else:
        root = data if data is not None else default_data_dir()
        folder = scan_data(root, labels=labels, multi_label=multi_label, reporter=reporter)
    rows, split = check_split(folder, valid_pct=valid_pct, seed=seed, stratify=stratify, split_file=split_file)
    check = check_folder(folder, rows, split, max_distance=max_distance, min_side=min_side, reporter=reporter)
    if out_dir is not None:
        out_dir = create_run_dir(out_dir)
    if model is not None or folds is not None:
        work = out_dir / FOLDS_DIR if out_dir is not None and folds is not None else None
        fold_options = {**({"labels": Path(labels)} if labels is not None else {}), **train_options}
        check.label_issues = find_label_issues(check, model, folds, top, work, reporter, **fold_options)
    if out_dir is not None:
        write_check(check, out_dir)
    return check


def write_check(check: DataCheck, out_dir: Path | str) -> CheckFiles:
    """``check.json`` (everything, paths relative to the data folder) and ``check.html`` (the
    findings with thumbnails) in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        out_dir = create_run_dir(out_dir)
    json_path = write_json(out_dir / CHECK_JSON, check.to_dict())
    html_path = atomic_write_text(out_dir / CHECK_HTML, render_check_html(check))
    return CheckFiles(out_dir, json_path, html_path)


def thumbnail_uri(path: Path) -> Optional[str]:
    """A ``data:image/jpeg;base64,...`` thumbnail of ``path`` (shorter side :data:`THUMB_SIDE`
    px at most, decoded as training decodes it), or ``None`` when it cannot be read."""
    from flowerfast.data.imagecache import decode

    try:
        img = decode(path, THUMB_SIDE)
        img.thumbnail((2 * THUMB_SIDE, 2 * THUMB_SIDE))  # a panorama stays small too
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=THUMB_QUALITY)
    except Exception:  # a photo gone or damaged since the check: the page says so instead
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_check_html(check: DataCheck) -> str:
    """The page: counts, then each finding with its photos' thumbnails, labels and sides."""
    from flowerfast.reporting.render import HTML_STYLE, template_environment

    thumbs: dict[Path, Optional[str]] = {}

    def photo(p) -> dict[str, Any]:
        if p.file not in thumbs:
            thumbs[p.file] = thumbnail_uri(p.file)
        return {"file": relative_path(p.file, check.root), "label": p.label, "side": p.side, "thumb": thumbs[p.file]}

    def copies(groups) -> list[dict[str, Any]]:
        return [
            {"where": g.where, "distance": g.distance, "photos": [photo(p) for p in g.photos]}
            for g in groups[:MAX_LISTED]
        ]

    issues = check.label_issues
    context = {
        "title": f"Data check: {check.root}",
        "style": HTML_STYLE + THUMB_STYLE,
        "check": check,
        "counts": check.counts(),
        "unreadable": [(relative_path(s.path, check.root), s.reason) for s in check.unreadable[:MAX_LISTED]],
        "identical": copies(check.identical),
        "near": copies(check.near),
        "tiny": [{**photo(t.photo), "width": t.width, "height": t.height} for t in check.tiny[:MAX_LISTED]],
        "balance": [(c, n.get("train", 0), n.get("valid", 0)) for c, n in sorted(check.class_counts.items())],
        "issues": issues,
        "suspects": [{**photo(s.photo), "suspect": s} for s in issues.suspects] if issues is not None else [],
        "max_listed": MAX_LISTED,
    }
    return template_environment().get_template("check.html.j2").render(context)


THUMB_STYLE = (
    ".copies{display:flex;gap:1em;flex-wrap:wrap;margin:.5em 0 1em}.photo{font-size:85%;max-width:220px}"
    ".photo img{display:block;height:96px;width:auto}.photo code{word-break:break-all}.where{font-weight:bold}"
)
