"""Photos on disk to batches of images for the network: each file decoded by a model's own
preprocessing, in worker processes when a GPU computes, an unreadable file reported with its
reason instead of ending the job. Shared by prediction, Grad-CAM and calibration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from flowerfast.data.imagefiles import describe_error
from flowerfast.runs.config import MAX_LOADER_WORKERS


class ImageFileDataset(torch.utils.data.Dataset):
    """Opens one image per item with ``load`` (path to ``uint8`` tensor, e.g. a
    :meth:`Preprocessing.load`); a file that fails yields its reason instead."""

    def __init__(self, paths: Sequence[Path], load: Callable[[Path], torch.Tensor]):
        self.paths = list(paths)
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.load(self.paths[i]), None
        except Exception as exc:  # every decode failure means "report this file, go on"
            return i, None, describe_error(exc)


def collate_images(items):
    """Batch the readable images; keep the indices and reasons of the others."""
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, x, err in items if err is not None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


def default_workers(n_images: int, bs: int, device: torch.device) -> int:
    """Decoding processes: on a CUDA GPU, one per core (up to 8), once there are a few batches to feed it.

    On a CPU the network itself uses every core and decoding these photos costs a few percent of
    its time, so extra processes would only compete with it: decode in the main process.
    """
    if device.type != "cuda" or n_images < 2 * bs:
        return 0
    return max(1, min(MAX_LOADER_WORKERS, (os.cpu_count() or 1)))
