"""Finding image files on disk, telling whether each one can be read, and opening it safely.

Shared by training (scanning a data folder) and inference (the paths given to ``predict``), so
both agree on what counts as an image: the extensions below, hidden files and folders ignored,
and an unreadable file reported with its reason rather than crashing the run.

Why the walk is careful with links and special files: a real photo folder is not always a tidy
tree. A link back to its own folder (``ln -s . self``) would make ``os.walk`` find every photo
dozens of times; a link to the parent (``ln -s .. up``) would pull the other classes' photos in
under this class's name; a FIFO named ``x.jpg`` would hang the scan forever the moment it is
opened. So every real folder and file is taken at most once (by its real path, real paths before
links to them), a link whose target lies outside the folder being scanned is skipped and reported,
and anything that is not a regular file is skipped without being opened.

Why a pixel limit (:data:`MAX_PIXELS`, ``$FLOWERFAST_MAX_PIXELS``): a file of a few kilobytes can
declare a size of gigapixels (a "decompression bomb"); decoding it would take minutes and all the
memory. :func:`open_image` checks the declared size before anything is decoded.

Why the mode conversion is here (:func:`to_rgb`): :func:`check_image` must accept exactly what
:func:`flowerfast.data.imagecache.decode` can turn into pixels, so both use the same conversion.
"""

from __future__ import annotations

import glob
import os
import stat
import warnings
from pathlib import Path
from typing import Iterable, Optional

from flowerfast.core.errors import FlowerfastError, first_line

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

MAX_PIXELS = 50_000_000
"""The default limit on an image's declared width x height (50 megapixels: above any phone or
consumer camera photo); larger images are skipped and reported, never decoded."""
MAX_PIXELS_ENV = "FLOWERFAST_MAX_PIXELS"

BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited on: a fixed white, in training and prediction."""

HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the limit; it was not decoded."""


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def is_inside(real: str, top: str) -> bool:
    """Whether real path ``real`` is ``top`` or lies under it (both already resolved)."""
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _special_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def find_images(
    folder: Path, seen: Optional[set] = None, data_root: Optional[Path] = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder`` (recursively, sorted) and the ``(path, reason)`` of those skipped.

    Hidden files and folders are ignored, and so are files without an image extension. Links are
    followed, but every real folder and file is taken once: ``seen`` holds the real paths already
    taken (pass the same set to several calls to take each file once across them all), and a real
    path is preferred to a link to it. A link to a photo is taken wherever the photo is (folders of
    links to photos are a common way to make a subset). Skipped and reported: a link to a folder
    outside ``folder`` (``data_root``, when given, only words the reason), a broken link or unreadable
    entry named like an image, a special file (FIFO, socket, device) named like an image (never
    opened), a folder that cannot be listed.
    """
    walk = FolderWalk(Path(folder), seen=set() if seen is None else seen, data_root=data_root)
    walk.run()
    return sorted(walk.files), walk.problems


class FolderWalk:
    """The state of :func:`find_images` over one folder: breadth first over real folders, links
    followed only once every real path has been taken (so a real path wins over a link to it)."""

    def __init__(self, folder: Path, seen: set, data_root: Optional[Path] = None):
        self.folder, self.seen = folder, seen
        self.top = os.path.realpath(folder)
        self.data_top = os.path.realpath(data_root) if data_root is not None else None
        self.files: list[Path] = []
        self.problems: list[tuple[Path, str]] = []
        self.folders: list[tuple[Path, str]] = []  # (path as found, its real path)
        self.links: list[Path] = []

    def run(self) -> None:
        if self.top in self.seen:
            return
        self.seen.add(self.top)
        self.folders.append((self.folder, self.top))
        while self.folders or self.links:
            if self.folders:
                self.list_folder(*self.folders.pop(0))
            else:
                self.follow_link(self.links.pop(0))

    def take(self, path: Path, real: str, mode: int) -> None:
        if real in self.seen:
            return  # a loop, or a second path to a folder or file already taken
        if stat.S_ISDIR(mode):
            self.seen.add(real)
            self.folders.append((path, real))
        elif not is_image_name(path.name):
            return
        elif not stat.S_ISREG(mode):
            self.problems.append((path, f"{_special_kind(mode)}, not an image file: skipped without opening it"))
        else:
            self.seen.add(real)
            self.files.append(path)

    def list_folder(self, path: Path, real_dir: str) -> None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.problems.append((path, f"folder cannot be read: {describe_error(exc)}"))
            return
        for entry in entries:
            if is_hidden(entry.name):
                continue
            child = path / entry.name
            try:
                if entry.is_symlink():
                    self.links.append(child)
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                if is_image_name(entry.name):
                    self.problems.append((child, describe_error(exc)))
                continue
            self.take(child, os.path.join(real_dir, entry.name), mode)

    def follow_link(self, link: Path) -> None:
        try:
            mode = os.stat(link).st_mode
        except OSError as exc:
            if is_image_name(link.name):
                self.problems.append((link, f"broken link: {describe_error(exc)}"))
            return
        if not stat.S_ISDIR(mode) and not is_image_name(link.name):
            return
        real = os.path.realpath(link)
        if stat.S_ISDIR(mode) and not is_inside(real, self.top):  # a linked photo may live anywhere; a folder may not
            where = (
                "its class folder"
                if self.data_top is not None and is_inside(real, self.data_top)
                else ("the data folder" if self.data_top is not None else f"the folder {self.folder}")
            )
            self.problems.append((link, f"link leads out of {where} (to {real}): not followed"))
            return
        self.take(link, real, mode)


def image_files_under(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted: :func:`find_images`'s files (each real
    file once, no folder link out of ``folder`` followed, special files never opened)."""
    return find_images(folder)[0]


def describe_error(exc: BaseException) -> str:
    """An exception as one line: ``TypeName: first line of the message``."""
    return f"{type(exc).__name__}: {first_line(exc)}"


def max_pixels() -> int:
    """The pixel limit: ``$FLOWERFAST_MAX_PIXELS`` when set (a positive whole number), else
    :data:`MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise FlowerfastError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, not {raw!r}")
    return value


def _too_large(width: int, height: int, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit of "
        f"{limit / 1e6:g} megapixels: not decoded (set {MAX_PIXELS_ENV} to change the limit)"
    )


def open_image(path):
    """``PIL.Image.open(path)`` (a path or a binary file object), refused before any decoding when
    it is not a regular file or declares more than :func:`max_pixels` pixels.

    Raises :class:`ImageTooLargeError` for too many pixels (Pillow's own decompression-bomb warning
    and error are replaced by it), ``OSError`` for a special file. The caller closes the image.
    """
    from PIL import Image

    limit = max_pixels()
    if isinstance(path, (str, os.PathLike)):
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{_special_kind(mode)}, not an image file: not opened")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # a limit raised by the user: Pillow must not refuse below it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"over the limit of {limit / 1e6:g} megapixels: not decoded "
                f"(set {MAX_PIXELS_ENV} to change the limit; Pillow: {exc})"
            ) from None
    if im.width * im.height > limit:
        im.close()
        raise _too_large(im.width, im.height, limit)
    return im


def _to_8_bits(im):
    """A one-band high-bit-depth image as mode ``L``, scaled by its value range: 16-bit modes (and
    ``I`` with values in 0..65535) divided by 257, so 0..65535 maps to 0..255; ``F`` with values in
    0..1 multiplied by 255; anything else stretched from its own minimum and maximum."""
    import numpy as np
    from PIL import Image

    a = np.asarray(im).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")


def to_rgb(im):
    """A loaded ``PIL.Image`` of any mode as a new RGB image.

    High-bit-depth modes (``I;16``, ``I;16B``, ``I``, ``F``) are scaled to 8 bits
    (:func:`_to_8_bits`); transparency (RGBA, LA, PA, a palette or grey with a transparent colour)
    is composited on :data:`BACKGROUND`; CMYK, palette, YCbCr, grey and 1-bit are converted by PIL.
    """
    from PIL import Image

    if im.mode in HIGH_BIT_DEPTH_MODES:
        return _to_8_bits(im).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return im.convert("RGB")


def check_image(path: Path) -> Optional[str]:
    """Return why ``path`` is not a usable image, or ``None`` if it is.

    Refused without decoding: a special file, an image over the pixel limit. ``verify`` catches
    broken headers; a reduced-size decode (JPEG draft mode, cheap even for big photos) and the
    conversion to RGB that :func:`flowerfast.data.imagecache.decode` makes catch truncated data that
    ``verify`` lets through and modes that cannot become RGB.
    """
    max_pixels()  # a bad $FLOWERFAST_MAX_PIXELS is the user's error, not this file's
    try:
        with open_image(path) as im:
            im.verify()
        with open_image(path) as im:
            im.draft(None, (64, 64))
            im.load()
            to_rgb(im)
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
