"""Photos on disk to batches of images for the network: each file decoded by a model's own
preprocessing, in worker processes when a GPU computes, an unreadable file reported with its
reason instead of ending the job. Shared by prediction, Grad-CAM and calibration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
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


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of decoded images (on the CPU), copied by numpy on one thread.

    Why: torch copies a batch of this size on its whole thread pool, whose threads then spin for a
    while on the cores the network is about to use. Where ONNX Runtime or OpenVINO computes the
    network in a pool of its own, that spinning cost the server about a quarter of its requests/s
    (an OpenVINO int8 Lite0 on two cores); for a torch network the copy costs the same either way.
    """
    first = images[0].numpy()
    batch = np.empty((len(images), *first.shape), dtype=first.dtype)  # C order, as torch.stack gives
    for i, image in enumerate(images):
        batch[i] = image.numpy()
    return torch.from_numpy(batch)


def collate_images(items):
    """Batch the readable images; keep the indices and reasons of the others."""
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, x, err in items if err is not None]
    images = stack_images([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


def default_workers(n_images: int, bs: int, device: torch.device) -> int:
    """Decoding processes: on a CUDA GPU, one per core (up to 8), once there are a few batches to feed it.

    On a CPU the network itself uses every core and decoding these photos costs a few percent of
    its time, so extra processes would only compete with it: decode in the main process.
    """
    if device.type != "cuda" or n_images < 2 * bs:
        return 0
    return max(1, min(MAX_LOADER_WORKERS, (os.cpu_count() or 1)))
