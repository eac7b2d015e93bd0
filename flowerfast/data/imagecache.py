"""Photos decoded and reduced once, kept on disk, and the one decode step everything shares.

Why a cache: training opens every photo every epoch. A phone photo is 3 to 12 megapixels, and
decoding it and shrinking it to a few hundred pixels costs far more than the random crop, flips,
erasing and normalisation that follow. Those must differ every epoch; the decode and the reduction
never do, so they are done once per photo and image size and the pixels kept as an uncompressed
``.npy`` (reading one is a copy, not a decode). Later epochs, and later runs on the same photos at
the same size, skip the work.

Why one decode step: :func:`decode` turns a file into pixels for training with the cache, without
it (``--no-cache``) and for prediction (:mod:`flowerfast.infer.preprocessing`). The cache stores exactly
its output, so turning the cache on or off never changes a pixel a model sees, and a photo
predicted later is reduced exactly as it was in the training run's validation.

Why keyed by content: an entry's name is the SHA-256 of the file's bytes (plus the reduction's
bound and the decoder's version), so an edited photo is a miss and gets new pixels, while a photo
that was moved, renamed or copied to another data folder is still a hit. ``RECIPE`` is part of
the key: version 2 added the EXIF orientation, high-bit-depth scaling and white behind
transparency, so no pixels decoded the older way are ever served. Nothing ever has to be
invalidated by hand; deleting the folder is always safe.

Why it never stops a run: a cache folder that cannot be written (read-only, full, a file in the
way) gives one warning and training goes on decoding every time, as with ``--no-cache``.

No fastai or torchvision here (the inference side uses :func:`decode`); PIL and numpy are imported
inside the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from pathlib import Path

from flowerfast.core.files import atomic_write_bytes
from flowerfast.data.imagefiles import describe_error, open_image, to_rgb

CACHE_ENV = "FLOWERFAST_CACHE"
RECIPE = "flowerfast-decode-2"  # bump when decode() changes: old entries are then never read again


class CacheUnavailableWarning(UserWarning):
    """The photo cache folder cannot be written: photos are decoded every time instead."""


def load_size(size: int) -> int:
    """The bound on a photo's shorter side before training's random crops and validation's squash.

    ``2 * size``. Training's ``RandomResizedCrop(size, min_scale=0.35)`` crops between 35% and all
    of the photo's area, with a width/height ratio from 3/4 to 4/3; from a photo whose shorter side
    is ``2 * size``, even its smallest crop has a side of ``sqrt(0.35 * 3/4) * 2 * size``, about
    ``1.02 * size`` (``1.18 * size`` for a square crop), so every crop is still *reduced* to
    ``size`` and nothing is upscaled or blurred that the full photo would have kept sharp.
    Validation squashes the photo to ``size * 1.14`` or so, also a reduction. Anything bigger than
    ``2 * size`` is only pixels to decode and resize again every epoch.
    """
    return 2 * int(size)


def reduced_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the shorter side is ``max_side`` (aspect ratio kept, the longer
    side rounded with Python's ``round``); unchanged when the shorter side is ``max_side`` or less."""
    if min(width, height) <= max_side:
        return width, height
    if width <= height:
        return max_side, round(height * max_side / width)
    return round(width * max_side / height), max_side


# EXIF orientation (tag 0x0112) to the transpose that shows the photo upright, as
# PIL.ImageOps.exif_transpose maps them.
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def exif_orientation(im) -> int:
    """The image's EXIF orientation (1 to 8), 1 when it has none or its EXIF cannot be read."""
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF is common in the wild and never a reason to drop a photo
        return 1
    return value if value in _TRANSPOSE else 1


def decode(path, max_side: int):
    """One image file (a path or a binary file object) to an RGB ``PIL.Image``, upright, its
    shorter side at most ``max_side``.

    :func:`~flowerfast.data.imagefiles.open_image` opens it (special files and images over the pixel
    limit are refused before anything is decoded); PIL decodes it (a JPEG in draft mode, at 1/2,
    1/4 or 1/8 scale when that still leaves at least the target size: much faster for big photos);
    :func:`~flowerfast.data.imagefiles.to_rgb` makes it RGB (16-bit and other high-bit-depth images
    scaled to 8 bits by their value range, transparency composited on white, CMYK and palettes
    converted); PIL's bilinear filter resizes it to :func:`reduced_size`; and its EXIF orientation
    is applied (the transpose ``PIL.ImageOps.exif_transpose`` would make, done on the reduced
    pixels). A photo whose shorter side is ``max_side`` or less is only converted, never
    upscaled. This is the single decode step of training (with and without the cache) and of
    prediction.
    """
    from PIL import Image

    with open_image(path) as im:
        target = reduced_size(im.width, im.height, max_side)
        if target != im.size:
            im.draft(None, target)  # JPEG only (other formats ignore it); never below target
        im.load()
        orientation = exif_orientation(im)
        img = to_rgb(im)  # a new plain Image, detached from the file
    if img.size != target:
        img = img.resize(target, Image.BILINEAR)
    if orientation != 1:
        img = img.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    return img


def default_cache_dir() -> Path:
    """``$FLOWERFAST_CACHE``, else ``$XDG_CACHE_HOME/flowerfast/images``, else
    ``~/.cache/flowerfast/images``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flowerfast" / "images"


@functools.lru_cache(maxsize=1)
def _decoder_version() -> str:
    """The recipe plus Pillow's and libjpeg's versions: another decoder may give other pixels."""
    import PIL
    from PIL import features

    return f"{RECIPE}|Pillow {PIL.__version__}|jpeg {features.version('jpg')}"


class ImageCache:
    """:func:`decode`'s output for ``max_side``, kept under ``folder``.

    Entries live at ``<folder>/<max_side>/<key[:2]>/<key>.npy`` (``uint8``, height x width x 3),
    ``key`` the SHA-256 of the decoder's version, ``max_side`` and the file's bytes. Writes are
    atomic (temp file beside the entry, then rename), so DataLoader workers writing the same entry
    at once, or a run killed mid-write, never leave a broken entry; an unreadable entry anyway is a
    miss and is written again. ``hits`` and ``misses`` count this process's lookups (each DataLoader
    worker has its own). The object pickles, for worker processes.
    """

    def __init__(self, folder: Path | str, max_side: int):
        self.folder = Path(folder).expanduser()
        self.max_side = int(max_side)
        self.hits = 0
        self.misses = 0
        self.writable = True
        self._warned = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._give_up(describe_error(exc))
            return
        if not os.access(self.root, os.W_OK | os.X_OK):
            self._give_up("no write permission")

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, max_side={self.max_side})"

    @property
    def root(self) -> Path:
        """The folder of this ``max_side``'s entries."""
        return self.folder / str(self.max_side)

    def key(self, data: bytes) -> str:
        h = hashlib.sha256()
        h.update(f"{_decoder_version()}|{self.max_side}|".encode())
        h.update(data)
        return h.hexdigest()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, path: Path | str):
        """The photo at ``path`` as :func:`decode` gives it: from the cache, or decoded and stored."""
        data = Path(path).read_bytes()
        entry = self.entry(self.key(data))
        img = self._read(entry)
        if img is not None:
            self.hits += 1
            return img
        self.misses += 1
        img = decode(io.BytesIO(data), self.max_side)
        if self.writable:
            self._write(entry, img)
        return img

    def _read(self, entry: Path):
        import numpy as np
        from PIL import Image

        try:
            array = np.load(entry, allow_pickle=False)
        except Exception:  # not there yet; or truncated, garbage, unreadable: a miss, written again
            return None
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            return None
        return Image.fromarray(array)

    def _write(self, entry: Path, img) -> None:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(img, dtype=np.uint8), allow_pickle=False)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(entry, buf.getvalue())
        except OSError as exc:
            self._give_up(describe_error(exc))

    def _give_up(self, reason: str) -> None:
        """Stop writing (reading what is there goes on) and warn, once per process."""
        self.writable = False
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"the photo cache {self.root} cannot be written ({reason}): photos are decoded "
                f"every epoch instead (slower, same pixels); use --cache-dir or --no-cache",
                CacheUnavailableWarning,
                stacklevel=3,
            )
