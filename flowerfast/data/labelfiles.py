"""Labels from a table instead of class folders: a CSV of files and labels, the classification
exports of Label Studio (JSON, JSON-MIN and CSV) and of Roboflow (its multi-label CSV, ``_classes.csv``,
one per split folder), read into the same :class:`~flowerfast.data.folders.ImageFolder` a scan of
class folders gives, so the split, training and ``split.csv`` do not care where labels came from.

Why a resolver for file names: a label file names photos the way its tool saw them. A CSV written
by hand names them relative to the data folder; Label Studio names an upload
``/data/upload/3/1a2b3c4d-daisy_12.jpg`` (an 8-hex prefix added), a local file
``/data/local-files/?d=photos/daisy/12.jpg`` and cloud storage by URL. Each name is tried as a path
under the data folder, then by its shorter tails (``photos/daisy/12.jpg``, ``daisy/12.jpg``), then by
its bare file name, with and without Label Studio's upload prefix, when that name is unique.
A photo named but not found is skipped and reported, as an unreadable one is.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import parse_qs, unquote, urlparse

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import Reporter
from flowerfast.data.folders import VALID_FOLDER_NAMES, ImageFolder, SkippedFile, scan_image_folder
from flowerfast.data.imagefiles import check_image, image_files_under, is_inside
from flowerfast.runs.records import LABEL_SEPARATOR, parse_bool

LABEL_FORMATS = ("csv", "label-studio", "roboflow")
"""The label files ``--labels`` reads, by the name the error messages and the README use."""
FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_path", "path", "fname", "name")
LABEL_COLUMNS = ("label", "labels", "class", "classes", "category", "tags", "choice", "choices")
SPLIT_COLUMNS = ("is_valid", "split")
ROBOFLOW_FILE = "_classes.csv"
MULTI_LABEL_SEPARATORS = re.compile(r"[;|,\s]+")
"""How several labels share one cell: ``;``, ``|``, ``,`` or spaces (fastai's habit), e.g. ``rose;tulip``."""
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
VALID_SPLIT_NAMES = ("valid", "val", "validation")
UNUSED_SPLIT_NAMES = ("test",)


@dataclass(frozen=True)
class LabelledPhoto:
    """One row of a label file: the photo as the file names it, its labels, its side if given."""

    name: str
    labels: tuple[str, ...]
    is_valid: Optional[bool] = None
    base: Optional[Path] = None  # the folder the name is relative to, when not the data folder


def cell_labels(text: str, multi_label: bool) -> tuple[str, ...]:
    """A label cell's labels: a Label Studio ``{"choices": [...]}`` cell, several separated labels
    (multi-label), or the whole cell as one class name (single-label: names may hold spaces)."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            return tuple(str(c).strip() for c in json.loads(text).get("choices", []))
        except (ValueError, AttributeError):
            pass
    if not text:
        return ()
    if multi_label:
        return tuple(dict.fromkeys(p for p in MULTI_LABEL_SEPARATORS.split(text) if p))
    return (text,)


def split_side(text: str, where: str) -> Optional[bool]:
    """A split cell as ``is_valid``: train, valid/val/validation or 1/0/true/false; ``None`` for test rows."""
    value = (text or "").strip().lower()
    if value in UNUSED_SPLIT_NAMES:
        return None
    if value == "train":
        return False
    if value in VALID_SPLIT_NAMES:
        return True
    try:
        return parse_bool(value)
    except ValueError:
        raise FlowerfastError(f"{where}: the split must be train, valid or test (or 1/0), not {text!r}") from None


def _column(header: list[str], names: tuple[str, ...]) -> Optional[str]:
    by_lower = {h.strip().lower(): h for h in header}
    return next((by_lower[n] for n in names if n in by_lower), None)


def read_csv_labels(path: Path, multi_label: bool) -> list[LabelledPhoto]:
    """A CSV with a file column and a label column (see :data:`FILE_COLUMNS`, :data:`LABEL_COLUMNS`;
    an optional ``is_valid`` or ``split`` column presets the split), or Roboflow's one-hot CSV."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        records = list(csv.reader(fh))
    if not records or not records[0]:
        raise FlowerfastError(f"{path} is empty: expected a header such as file,label")
    header, body = [h.strip() for h in records[0]], [r for r in records[1:] if any(c.strip() for c in r)]
    file_col, label_col = _column(header, FILE_COLUMNS), _column(header, LABEL_COLUMNS)
    if file_col is not None and label_col is None and is_one_hot(header, body):
        return one_hot_rows(header, body, path.parent)
    if file_col is None or label_col is None:
        raise FlowerfastError(
            f"{path} has no {'file' if file_col is None else 'label'} column (its header: {', '.join(header)}): "
            f"name one of {', '.join(FILE_COLUMNS if file_col is None else LABEL_COLUMNS)}"
        )
    split_col = _column(header, SPLIT_COLUMNS)
    rows = []
    for line, record in enumerate(body, start=2):
        cells = dict(zip(header, record + [""] * (len(header) - len(record))))
        side = split_side(cells[split_col], f"{path}, line {line}") if split_col else None
        if split_col and side is None:
            continue  # a test row: not for training
        rows.append(LabelledPhoto(cells[file_col].strip(), cell_labels(cells[label_col], multi_label), side))
    return rows


def is_one_hot(header: list[str], body: list[list[str]]) -> bool:
    """Roboflow's multi-label export: ``filename`` then one column per class holding 0 or 1."""
    return len(header) >= 2 and all(c.strip() in ("0", "1") for r in body for c in r[1:])


def one_hot_rows(header: list[str], body: list[list[str]], base: Path) -> list[LabelledPhoto]:
    classes = header[1:]
    return [
        LabelledPhoto(r[0].strip(), tuple(c for c, v in zip(classes, r[1:]) if v.strip() == "1"), base=base)
        for r in body
    ]


def read_label_studio(path: Path, multi_label: bool) -> list[LabelledPhoto]:
    """Label Studio's JSON export (tasks with their annotations: the latest one not cancelled is
    taken) or its JSON-MIN export (one object per task, the choice under the control's name)."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlowerfastError(f"cannot read {path} as Label Studio JSON: {exc}") from None
    if not isinstance(tasks, list):
        raise FlowerfastError(f"{path} is not a Label Studio export (expected a JSON list of tasks)")
    rows = []
    for task in tasks:
        if not isinstance(task, dict):
            raise FlowerfastError(f"{path} is not a Label Studio export (a task is not a JSON object)")
        if "annotations" in task or "data" in task:
            name, labels = _full_task(task)
        else:
            name, labels = _min_task(task)
        if name is None:
            raise FlowerfastError(f"{path}: task {task.get('id', '?')} names no image")
        rows.append(LabelledPhoto(name, tuple(dict.fromkeys(labels))))
    return rows


def _full_task(task: dict) -> tuple[Optional[str], list[str]]:
    data = task.get("data") or {}
    name = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    for annotation in reversed(done):
        for result in annotation.get("result") or []:
            if result.get("type") == "choices":
                return name, [str(c) for c in result.get("value", {}).get("choices", [])]
    return name, []


def _min_task(task: dict) -> tuple[Optional[str], list[str]]:
    name = task.get("image") or next(
        (v for k, v in task.items() if isinstance(v, str) and k not in ("annotator", "created_at", "updated_at")), None
    )
    for key in ("choice", "choices", "label", "class"):
        value = task.get(key)
        if isinstance(value, str):
            return name, [value]
        if isinstance(value, dict):
            return name, [str(c) for c in value.get("choices", [])]
        if isinstance(value, list):
            return name, [str(c) for c in value]
    return name, []


def read_label_file(path: Path | str, multi_label: bool = False) -> list[LabelledPhoto]:
    """The rows of a label file of any format in :data:`LABEL_FORMATS`, told apart by content."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FlowerfastError(f"labels file not found: {path}")
    if path.suffix.lower() == ".json":
        return read_label_studio(path, multi_label)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return read_csv_labels(path, multi_label)
    raise FlowerfastError(
        f"{path}: labels are read from a .csv (a file,label table, Label Studio's CSV or Roboflow's {ROBOFLOW_FILE}) "
        f"or a .json (Label Studio's JSON or JSON-MIN export)"
    )


class PhotoResolver:
    """A label file's photo names to files under the data folder (see the module's docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: Optional[dict[str, list[Path]]] = None

    def by_name(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            self._by_name = {}
            for f in image_files_under(self.root):
                self._by_name.setdefault(f.name, []).append(f)
        return self._by_name

    def resolve(self, name: str, base: Optional[Path] = None) -> Optional[Path]:
        text = unquote(name.strip())
        url = urlparse(text)
        if url.query and "d" in parse_qs(url.query):
            text = parse_qs(url.query)["d"][0]
        elif url.scheme and len(url.scheme) > 1:  # s3://, https://, gs:// (a one-letter scheme is a drive)
            text = url.path
        parts = [p for p in PurePosixPath(text.replace("\\", "/")).parts if p not in ("/", "")]
        for top in [base] if base is not None else []:
            if (top / Path(*parts)).is_file():
                return top / Path(*parts)
        for start in range(len(parts)):
            candidate = self.root.joinpath(*parts[start:])
            if candidate.is_file() and is_inside(str(candidate.resolve()), str(self.root.resolve())):
                return candidate
        if not parts:
            return None
        for file_name in dict.fromkeys([parts[-1], UPLOAD_PREFIX.sub("", parts[-1])]):
            found = self.by_name().get(file_name, [])
            if len(found) > 1:
                raise FlowerfastError(
                    f"{name!r} could be {found[0]} or {found[1]}: name it by its path under {self.root}"
                )
            if found:
                return found[0]
        return None


def roboflow_export(root: Path) -> Optional[list[tuple[Path, bool]]]:
    """The ``_classes.csv`` of each split folder of a Roboflow multi-label export (train, then
    valid), or ``None`` when ``root`` is not one."""
    train = root / "train" / ROBOFLOW_FILE
    if not train.is_file():
        return None
    tables = [(train, False)]
    tables += [(root / n / ROBOFLOW_FILE, True) for n in VALID_FOLDER_NAMES if (root / n / ROBOFLOW_FILE).is_file()]
    return tables


def labelled_photos(root: Path, labels: Optional[Path], multi_label: bool) -> tuple[list[LabelledPhoto], str]:
    """The rows of ``labels`` or of the Roboflow export at ``root``, and where they came from."""
    if labels is not None:
        return read_label_file(labels, multi_label), str(labels)
    tables = roboflow_export(root)
    rows = []
    for table, is_valid in tables:
        rows += [
            LabelledPhoto(r.name, r.labels, is_valid, base=table.parent) for r in read_csv_labels(table, multi_label)
        ]
    return rows, f"{root}/*/{ROBOFLOW_FILE}"


def scan_data(
    data: Path | str,
    labels: Optional[Path | str] = None,
    multi_label: bool = False,
    check: bool = True,
    reporter: Optional[Reporter] = None,
) -> ImageFolder:
    """The photos and labels of a data folder in any form flowerfast reads: class folders (or
    ``train/`` and ``valid/`` folders of them, :func:`~flowerfast.data.folders.scan_image_folder`),
    a label file naming photos under it (``labels``), or a Roboflow multi-label export found at
    ``data``. ``multi_label`` lets a photo carry several labels (or none)."""
    root = Path(data).expanduser()
    if labels is None and (not root.is_dir() or roboflow_export(root) is None):
        if multi_label:
            raise FlowerfastError(
                "$multi_label needs labels from a table: give $labels (a CSV or a Label Studio export) "
                "or a Roboflow multi-label export as the data folder",
                parameters=("multi_label", "labels"),
            )
        return scan_image_folder(root, check=check, reporter=reporter)
    if not root.is_dir():
        raise FlowerfastError(f"data folder not found: {root}" if not root.exists() else f"not a folder: {root}")
    rows, source = labelled_photos(root, Path(labels).expanduser() if labels is not None else None, multi_label)
    return labelled_folder(root, rows, source, multi_label, check, reporter)


def labelled_folder(
    root: Path, rows: list[LabelledPhoto], source: str, multi_label: bool, check: bool, reporter: Optional[Reporter]
) -> ImageFolder:
    """The rows' photos found, checked and labelled: missing and unreadable ones in ``skipped``."""
    resolver, skipped = PhotoResolver(root), []
    found: dict[Path, LabelledPhoto] = {}
    if reporter is not None:
        reporter.batches_started("scan", len(rows))
    for row in rows:
        path = resolver.resolve(row.name, row.base) if row.name else None
        reason = f"named in {source}, not found under {root}" if path is None else None
        if path is not None and path in found and found[path].labels != row.labels:
            raise FlowerfastError(
                f"{source} labels {path} twice, differently ({describe(found[path].labels)} and {describe(row.labels)})"
            )
        if reason is None and not row.labels and not multi_label:
            reason = f"no label in {source}"
        if reason is None and check and path not in found:
            reason = check_image(path)
        if reason is None:
            found.setdefault(path, row)
        else:
            skipped.append(SkippedFile(path if path is not None else root / row.name, reason))
        if reporter is not None:
            reporter.batch_done("scan")
    if reporter is not None:
        reporter.finished()
    return folder_of(root, found, skipped, source, multi_label)


def describe(labels: tuple[str, ...]) -> str:
    return LABEL_SEPARATOR.join(labels) or "no label"


def folder_of(
    root: Path, found: dict[Path, LabelledPhoto], skipped: list, source: str, multi_label: bool
) -> ImageFolder:
    if not found:
        example = f" (e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise FlowerfastError(f"{source} names no readable photo under {root}{example}")
    several = next((p for p, r in found.items() if len(r.labels) > 1), None)
    if several is not None and not multi_label:
        raise FlowerfastError(
            f"{source} gives {several} several labels ({describe(found[several].labels)}): "
            f"train with $multi_label, or give one label per photo",
            parameters=("multi_label",),
        )
    odd = next((c for r in found.values() for c in r.labels if LABEL_SEPARATOR in c), None)
    if odd is not None:
        raise FlowerfastError(f"{source}: class names cannot hold {LABEL_SEPARATOR!r} (got {odd!r})")
    classes = sorted({c for r in found.values() for c in r.labels})
    if len(classes) < (1 if multi_label else 2):
        raise FlowerfastError(f"{source} names only {len(classes)} class(es): classification needs at least two")
    sides = {r.is_valid is None for r in found.values()}
    if len(sides) > 1:
        raise FlowerfastError(f"{source} gives a split for some photos and not others: give it for all or none")
    files = list(found)
    preset = None if sides == {True} else [bool(found[f].is_valid) for f in files]
    return ImageFolder(
        root=root,
        classes=classes,
        files=files,
        labels=[LABEL_SEPARATOR.join(found[f].labels) for f in files],
        skipped=skipped,
        preset_split=preset,
        multi_label=multi_label,
    )
