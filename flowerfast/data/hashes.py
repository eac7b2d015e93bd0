"""Fingerprints of photos, for finding copies: the SHA-256 of a file's bytes (byte-identical
copies) and a 64-bit difference hash of its pixels (near-identical ones), and the search for
pairs of close hashes.

Why a difference hash (``imagehash.dhash``): it compares each pixel of a 9x8 grey thumbnail with
its right-hand neighbour, so a copy re-encoded at another JPEG quality, resized, or slightly
brightened keeps its bits, while different photos rarely come within a few bits of each other (the
2,985 shared flowers hold 9 pairs of different files within 4 bits, 50 within 8). A copy mirrored,
rotated or cropped is a new photo to it, which is what training sees too.

Why decoded at most 128 px: the hash needs only 9x8 pixels, so the photo goes through the one
decode step of training (:func:`flowerfast.data.imagecache.decode`: RGB, upright, JPEGs decoded at
1/2 to 1/8 scale in draft mode) bounded at :data:`HASH_SIDE`. A photo of 128 px or less is
decoded whole and gets exactly ``imagehash.dhash``'s bits for the file; a big one costs a small
fraction of its full decode.

Why no cache: the SHA-256 needs every file's bytes read anyway, and on photos of the sizes
flowerfast trains at the decode a cache would save is cheap (the 2,985 shared flowers, 128 px
JPEGs, on one core of this project's CPU: 0.06 s to read and SHA-256 them all, 0.3 ms a photo to
decode and dhash). Phone photos cost more (the draft decode at 1/8 scale); a cache keyed by the
SHA-256 could then save most of it.

Why multi-index hashing: comparing every pair is quadratic. Cut the 64 bits into
``max_distance + 1`` bands (:func:`band_bounds`); two hashes within ``max_distance`` bits agree
exactly on at least one band, so only photos sharing a band's value are compared, found by
sorting on it. Measured on this project's CPU (one core, numpy): 100,000 random hashes in 0.08 s
(every pair, blockwise with ``np.bitwise_count``: 23 s); 98,500 hashes made by flipping bits of the
shared flowers' own, with their 340,000 close pairs, in 1.2 s; a Python double loop takes 0.8 s
for 3,000. Past 7 bits the bands are too narrow to be selective and every pair is compared, a
block of rows at a time, which is exact too.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.progress import Reporter
from flowerfast.data.folders import SkippedFile
from flowerfast.data.imagefiles import describe_error

HASH_SIDE = 128
"""The longest shorter side a photo is decoded at for its difference hash."""
DEFAULT_MAX_DISTANCE = 4
"""Hashes at most this many bits apart (of 64) are near-identical photos."""
MAX_BITS = 64
MIN_BAND_BITS = 8
"""Multi-index hashing pays while each band has at least this many bits (``max_distance`` up to
7); beyond, most photos share a band and comparing every pair is as quick."""
BLOCK_ELEMENTS = 1 << 22
"""Comparisons made in one numpy step of the all-pairs search (32 MB of XOR), whatever the number
of photos."""


@dataclass(frozen=True)
class PhotoHash:
    """What a photo is, for finding its copies: its bytes' SHA-256, its 64-bit difference hash and
    its size in pixels as stored (width and height before the EXIF orientation)."""

    sha256: str
    dhash: int
    width: int
    height: int


def hash_photo(path: Path) -> PhotoHash:
    """Read ``path`` once: the SHA-256 of its bytes, its size from the header, and the dhash of its
    pixels decoded at most :data:`HASH_SIDE` px. Raises what PIL or the file system raise."""
    import imagehash

    from flowerfast.data.imagecache import decode
    from flowerfast.data.imagefiles import open_image

    data = Path(path).read_bytes()
    with open_image(io.BytesIO(data)) as im:
        width, height = im.size
    small = decode(io.BytesIO(data), HASH_SIDE)
    return PhotoHash(hashlib.sha256(data).hexdigest(), int(str(imagehash.dhash(small)), 16), width, height)


def hash_photos(
    files: Sequence[Path], reporter: Optional[Reporter] = None
) -> tuple[dict[Path, PhotoHash], list[SkippedFile]]:
    """Every file's :class:`PhotoHash`, once each, one ``"hash"`` progress step per file; a file
    that cannot be read or decoded now (deleted or damaged since the scan) is returned as skipped
    with its reason instead."""
    hashes: dict[Path, PhotoHash] = {}
    skipped: list[SkippedFile] = []
    if reporter is not None:
        reporter.batches_started("hash", len(files))
    for path in files:
        if path not in hashes:
            try:
                hashes[path] = hash_photo(path)
            except Exception as exc:  # PIL raises many types for a bad file; each means "cannot check it"
                skipped.append(SkippedFile(path, describe_error(exc)))
        if reporter is not None:
            reporter.batch_done("hash")
    if reporter is not None:
        reporter.finished()
    return hashes, skipped


def _bit_counts(x):
    """Set bits of each uint64 (``np.bitwise_count`` from numpy 2; a byte table before it)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[np.ascontiguousarray(x).view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1)


def close_pairs(hashes: Sequence[int], max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for every ``i < j`` whose hashes are at most ``max_distance`` bits
    apart, sorted: by multi-index hashing when its bands are wide enough to be selective, else by
    comparing every pair (see the module's docstring). Both are exact."""
    import numpy as np

    values = np.array([int(h) for h in hashes], dtype=np.uint64)
    if MAX_BITS // (max_distance + 1) >= MIN_BAND_BITS:
        found = _banded_pairs(values, max_distance)
    else:
        found = _all_pairs(values, max_distance)
    return sorted(found)


def band_bounds(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, bits)`` of ``max_distance + 1`` bands covering the 64 bits, as equal as can be:
    two hashes at most ``max_distance`` bits apart differ in at most that many bands, so by the
    pigeonhole principle they agree on one band exactly."""
    n = max_distance + 1
    widths = [MAX_BITS // n + (1 if b < MAX_BITS % n else 0) for b in range(n)]
    shifts = [sum(widths[:b]) for b in range(n)]
    return list(zip(shifts, widths))


def _banded_pairs(values, max_distance: int) -> set[tuple[int, int, int]]:
    """Multi-index hashing: for each band, the photos sorted by that band's bits, and each photo
    compared only with the photos after it that share the band (``offset`` steps along the sorted
    order, as long as any run of equal bands is that long)."""
    import numpy as np

    found: set[tuple[int, int, int]] = set()
    for shift, bits in band_bounds(max_distance):
        keys = (values >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        offset = 1
        while offset < len(order):
            same = np.nonzero(ranked[offset:] == ranked[:-offset])[0]
            if not len(same):
                break  # no run of equal bands is longer than offset
            a, b = order[same], order[same + offset]
            distance = _bit_counts(values[a] ^ values[b])
            close = distance <= max_distance
            for i, j, d in zip(a[close].tolist(), b[close].tolist(), distance[close].tolist()):
                found.add((min(i, j), max(i, j), int(d)))
            offset += 1
    return found


def _all_pairs(values, max_distance: int) -> set[tuple[int, int, int]]:
    """Every hash against every later one, a block of rows at a time (at most
    :data:`BLOCK_ELEMENTS` comparisons in one numpy step)."""
    import numpy as np

    n = len(values)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    found: set[tuple[int, int, int]] = set()
    for start in range(0, n, block):
        rows = values[start : start + block]
        distance = _bit_counts(rows[:, None] ^ values[None, start:])
        r, c = np.nonzero(distance <= max_distance)
        later = c > r  # column c is photo start + c, row r photo start + r: keep each pair once
        for i, j in zip(r[later].tolist(), c[later].tolist()):
            found.add((start + i, start + j, int(distance[i, j])))
    return found
