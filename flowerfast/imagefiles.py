"""Finding image files on disk and telling whether each one can be read.

Shared by training (scanning a data folder) and inference (the paths given to ``predict``), so
both agree on what counts as an image: the extensions below, hidden files and folders ignored,
and an unreadable file reported with its reason rather than crashing the run.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Optional

from .errors import FlowerfastError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def image_files_under(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), hidden files and folders ignored, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found.extend(Path(dirpath) / name for name in filenames if is_image_name(name))
    return sorted(found)


def describe_error(exc: BaseException) -> str:
    """An exception as one line: ``TypeName: first line of the message``."""
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]


def check_image(path: Path) -> Optional[str]:
    """Return why ``path`` is not a usable image, or ``None`` if it is.

    ``verify`` catches broken headers; a reduced-size decode (JPEG draft mode, cheap even for big
    photos) catches truncated data that ``verify`` lets through.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))
            im.load()
    except Exception as exc:  # PIL raises many types for bad files; every one means "skip it"
        return describe_error(exc)
    return None


def collect_image_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files, folders (recursive; hidden and non-image files ignored) and globs, in order, once each.

    A file named explicitly is kept whatever its extension: if it is not an image, it is reported
    as unreadable rather than silently dropped.
    """
    paths = list(paths)
    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found.extend(image_files_under(p))
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(glob.glob(str(p), recursive=True)) if glob.has_magic(str(p)) else []
            if not matches:
                raise FlowerfastError(f"no such file or folder: {raw}")
            for m in map(Path, matches):
                if m.is_dir():
                    found.extend(image_files_under(m))
                elif m.is_file() and is_image_name(m.name):
                    found.append(m)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise FlowerfastError(f"no images found in {', '.join(str(p) for p in paths)}")
    return unique
