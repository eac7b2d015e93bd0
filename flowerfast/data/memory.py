"""Decoded photos kept in the process (:class:`PhotoMemory`), each checked against its file's
:func:`file_stamp` before it is used again: the image loader keeps PIL photos in one, the batch
crop its canvases (:mod:`flowerfast.data.batchcrop`).
"""

from __future__ import annotations

import os

MEMORY_BYTES = 1 << 30  # decoded photos an ImageLoader keeps in memory: 1 GiB (ImageNet-sized: ~2,000)


def file_stamp(path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten: inode, size and modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class PhotoMemory:
    """Decoded photos kept in this process, up to ``budget`` bytes of pixels, each under its path
    and :func:`file_stamp`: with the cache on, the photos of a small data set are decoded (or
    read from the cache folder) once per run instead of once per epoch.

    Why: the cache folder spares the decode but still reads, hashes and parses each photo's files
    every epoch, about half a millisecond a photo, which is the cost of a small network's training
    step on a CPU. Why a stamp and not the content's hash: hashing is most of that cost; a photo
    that is rewritten, replaced or deleted changes its stamp (a deleted one fails the ``stat``),
    so it is read again, or skipped, as without the memory. Photos beyond the budget are simply
    not kept (with shuffled epochs no photo is likelier than another to come next). Not pickled:
    each DataLoader worker starts with an empty memory.
    """

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.clear()

    def clear(self) -> None:
        self.used = 0
        self.photos: dict[str, tuple[tuple, object, int]] = {}  # path -> (stamp, image, bytes)

    def __getstate__(self):
        return {"budget": self.budget, "used": 0, "photos": {}}

    def get(self, path, stamp: tuple):
        """What is kept for ``path`` if its stamp is still ``stamp``, else ``None``; the kept
        object itself, which the caller copies before anything may change it."""
        kept = self.photos.get(str(path))
        if kept is None or kept[0] != stamp:
            return None
        return kept[1]

    def remember(self, path, read, nbytes):
        """What ``read(path)`` gives, kept for ``path`` under its stamp (``nbytes(photo)``: its
        size) and given again while the stamp holds; read every time with no budget. The stamp
        raises for a photo gone since the scan, as reading it would."""
        if self.budget <= 0:
            return read(path)
        stamp = file_stamp(path)
        photo = self.get(path, stamp)
        if photo is None:
            photo = read(path)
            self.keep(path, stamp, photo, nbytes(photo))
        return photo

    def keep(self, path, stamp: tuple, photo, nbytes: int) -> None:
        """Keep ``photo`` (``nbytes`` of pixels) for ``path`` if the budget has room for it."""
        key = str(path)
        old = self.photos.pop(key, None)
        self.used -= old[2] if old is not None else 0
        if self.used + nbytes <= self.budget:
            self.photos[key] = (stamp, photo, nbytes)
            self.used += nbytes
