"""Run folders and the files in them: safe creation, atomic writes, JSON and CSV helpers.

Every file a run writes goes through :func:`atomic_write_text` / :func:`atomic_write_bytes`: it is
written beside its target and renamed into place, so an interrupted run never leaves a half-written
``config.json`` or model file, and a failed write never damages what was there before.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import FlowerfastError

def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all at once: temp file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV with a header row and Unix line ends, as one string."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    return atomic_write_text(path, csv_text(header, rows))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def default_run_dir(prefix: str, base: Path = Path("runs")) -> Path:
    """``runs/<prefix>-<timestamp>``, with a numeric suffix if two runs start in the same second."""
    candidate = base / f"{prefix}-{timestamp()}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = base / f"{prefix}-{timestamp()}-{n}"
    return candidate


def check_output_dir(path: Path) -> Path:
    """Fail early, before any training, if ``path`` cannot become a fresh run folder.

    A folder that already holds a run is refused rather than overwritten: nothing a user already
    has is ever replaced by a new run.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FlowerfastError(f"output path exists and is not a folder: {path}")
    if path.is_dir() and any(path.iterdir()):
        raise FlowerfastError(f"output folder {path} is not empty: choose a new --out so nothing there is overwritten")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise FlowerfastError(f"output folder is not writable: {path} (no write permission on {probe})")
    return path


def create_run_dir(path: Path, unique: bool = False) -> Path:
    """Create the output folder. ``unique`` (for default names, which nobody chose): if another run
    took the name in the meantime, take the next free ``-2``, ``-3``... instead of failing; the
    folder is claimed with an exclusive ``mkdir``, so two runs started together never share one."""
    if not unique:
        path = check_output_dir(path)
    try:
        if not unique:
            path.mkdir(parents=True, exist_ok=True)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        base, n = path, 1
        while True:
            try:
                path.mkdir()
                return path
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
    except OSError as exc:
        raise FlowerfastError(f"cannot create output folder {path}: {exc.strerror}") from None
