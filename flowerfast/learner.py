"""From data and an architecture name to a fastai Learner, on the right device.

The network is assembled by :mod:`flowerfast.model` (so saved models rebuild without fastai) and
handed to fastai's ``vision_learner`` as a ready backbone with a custom head; fastai supplies the
Adam optimiser, the body/head parameter groups used for freezing, and ``fit_one_cycle``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from .archs import WeightsInfo, load_backbone
from .config import DEFAULTS
from .data import FlowerData
from .devices import resolve_device
from .model import ModelSpec, assemble_classifier


@contextlib.contextmanager
def learner_workspace() -> Iterator[Path]:
    """A scratch folder for a Learner (fastai's ``lr_find`` saves and restores the weights there),
    removed on every way out: success, an error, Ctrl-C, or SIGTERM turned into an exception by the
    CLI. Nothing a run keeps is written here; the run folder holds those files.
    """
    path = Path(tempfile.mkdtemp(prefix="flowerfast-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class LearnerBundle:
    """A fastai Learner plus what flowerfast needs to know about it."""

    learn: object
    spec: ModelSpec
    weights: WeightsInfo
    device: torch.device
    mixed_precision: bool


def create_learner(data: FlowerData, arch: str = DEFAULTS.arch, size: int = DEFAULTS.size,
                   pretrained: Optional[bool] = DEFAULTS.pretrained, weights: Optional[Path] = None,
                   device: Optional[torch.device] = None, mixed_precision: Optional[bool] = None,
                   path: Optional[Path] = None) -> LearnerBundle:
    """Build the classifier for ``data.classes`` and wrap it in a fastai Learner (Adam, accuracy).

    ``mixed_precision`` defaults to on for CUDA (about twice the throughput), off elsewhere.
    ``path`` is the Learner's scratch folder (see :func:`learner_workspace`); by default a new
    temporary folder, removed when the Learner is garbage-collected or the program exits.
    """
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.optimizer import Adam
    from fastai.callback.progress import ProgressCallback
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle and lr_find to Learner)
    import fastai.callback.fp16  # noqa: F401  (adds to_fp16)
    from fastai.vision.learner import vision_learner

    device = device if device is not None else resolve_device("auto")
    backbone, info = load_backbone(arch, pretrained=pretrained, weights=weights)
    model, cut, nf = assemble_classifier(backbone, arch, len(data.classes), size=size)
    head = model[1]
    learn = vision_learner(
        data.dls, lambda *args, **kwargs: backbone, normalize=False, pretrained=False, cut=cut,
        custom_head=head, loss_func=CrossEntropyLossFlat(), opt_func=Adam, metrics=accuracy,
        path=Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="flowerfast-")),
    )
    if path is None:
        weakref.finalize(learn, shutil.rmtree, str(learn.path), True)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *args, **kwargs: None
    learn.model.to(device)
    learn.dls.to(device)
    use_mp = device.type == "cuda" if mixed_precision is None else mixed_precision
    if use_mp:
        learn.to_fp16()
    spec = ModelSpec(arch=arch, classes=list(data.classes), size=size, cut=cut, num_features=nf)
    return LearnerBundle(learn=learn, spec=spec, weights=info, device=device, mixed_precision=use_mp)


def predict_batches(model, dl, mixed_precision: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and targets of ``model`` over a fastai DataLoader, in eval mode.

    A plain loop rather than ``Learner.get_preds``, so it can run inside a fit (from a callback)
    without disturbing fastai's training state.
    """
    was_training = model.training
    model.eval()
    probs, targets = [], []
    try:
        with torch.no_grad():
            for xb, yb in dl:
                with torch.autocast(device_type=xb.device.type, enabled=mixed_precision):
                    out = model(xb)
                probs.append(torch.softmax(out.float(), dim=-1).cpu())
                targets.append(yb.cpu())
    finally:
        model.train(was_training)
    return torch.cat(probs), torch.cat(targets)
