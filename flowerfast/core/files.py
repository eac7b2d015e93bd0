"""Run folders and the files in them: safe creation, atomic writes, JSON and CSV helpers.

Every file a run writes goes through :func:`atomic_write_text` / :func:`atomic_write_bytes`: it is
written beside its target and renamed into place, so an interrupted run never leaves a half-written
``config.json`` or model file, and a failed write never damages what was there before.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional, Sequence

from flowerfast.core.errors import FlowerfastError

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` all at once: ``write`` fills a temporary file in the same folder, which is
    flushed, fsynced and renamed into place. A reader sees the old file or the new one, never a
    mix; a failed or interrupted write leaves the old one as it was.

    Temporary files a killed process left behind for the same name are removed first (the
    writer's process id is in the name, so a write still going on elsewhere is left alone). A
    failed write is a :class:`WriteError`: a one-line :class:`FlowerfastError` naming the file (and
    for a full disk the free space), and still an ``OSError`` for callers that get by without the
    file (a cache, a best-effort figure).
    """
    path = Path(path)
    remove_stale_temp_files(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = os_error_behind(exc) if isinstance(exc, Exception) else None  # never hide Ctrl-C
        if cause is not None:
            raise write_error(path, cause) from None
        raise
    return path


def os_error_behind(exc: BaseException) -> Optional[OSError]:
    """The OSError that caused ``exc``, if any: a writer such as ``torch.save`` may report a failed
    write as its own error (a RuntimeError raised while it was closing the file)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove ``.<name>.<pid>.*.tmp`` beside ``path`` whose writing process is gone: what a write
    of ``path`` killed mid-way (kill -9, power loss) leaves behind. Only this file's own temporary
    files are touched, and none of a process still running (two DataLoader workers may write the
    same cache entry at once)."""
    removed = []
    prefix = f".{Path(path).name}."
    for tmp in Path(path).parent.glob(f"{glob_escape(prefix)}*{TEMP_SUFFIX}"):
        if writer_alive(tmp.name[len(prefix) :]):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def writer_alive(rest: str) -> bool:
    """Whether the process whose id starts ``rest`` (``<pid>.<random>.tmp``) is running."""
    pid = rest.split(".", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours to signal
        return True
    return True


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


class WriteError(FlowerfastError, OSError):
    """A write that failed: one line for a person (a :class:`FlowerfastError`), and an ``OSError``
    with the original ``errno`` and ``strerror`` for code that can do without the file."""

    def __init__(self, message: str, cause: OSError):
        super().__init__(message)
        self.errno, self.strerror = cause.errno, cause.strerror


def write_error(path: Path, exc: OSError) -> WriteError:
    """One sentence for a failed write: which file, why, and for a full disk how much is free."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(Path(path).parent)
        room = f" ({format_bytes(free)} free)" if free is not None else ""
        return WriteError(
            f"disk full: cannot write {path}{room}; files already written are intact. "
            "Free some space and resume the run (flowerfast train --resume)",
            exc,
        )
    reason = exc.strerror or str(exc)
    return WriteError(f"cannot write {path}: {reason}", exc)


def free_bytes(folder: Path) -> Optional[int]:
    """Free space on the file system holding ``folder`` (its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def format_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start work whose files cannot fit: ``needed`` bytes for ``what`` in ``folder``."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise FlowerfastError(
            f"not enough free space in {folder}: {format_bytes(free)} free, {what} needs about "
            f"{format_bytes(needed)}. Free some space or choose another $out",
            parameters=("out",),
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    """UTF-8; a file name that is not valid UTF-8 (Python keeps its bytes as surrogates) is
    written back as those same bytes, so it reads back as the same name."""
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return json.load(fh)


def json_default(obj: Any) -> Any:
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
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
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
        raise FlowerfastError(
            f"output folder {path} is not empty: choose a new $out so nothing there is overwritten", parameters=("out",)
        )
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
