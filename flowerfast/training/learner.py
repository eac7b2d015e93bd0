"""From data and an architecture name to a fastai Learner, on the right device.

The network is assembled by :mod:`flowerfast.models.classifier` (so saved models rebuild without fastai) and
handed to fastai's ``vision_learner`` as a ready backbone with a custom head; fastai supplies the
Adam optimiser, the body/head parameter groups used for freezing, and ``fit_one_cycle``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Optional

import torch

from flowerfast.data.loaders import FlowerData
from flowerfast.hardware.devices import autocast_dtype, preferred_layout, resolve_device, resolve_precision
from flowerfast.models.archs import normalisation, resolve_arch
from flowerfast.models.classifier import ModelSpec, assemble_classifier
from flowerfast.models.pretrained import WeightsInfo, load_backbone
from flowerfast.runs.config import DEFAULTS


@contextlib.contextmanager
def learner_workspace() -> Iterator[Path]:
    """A scratch folder for a Learner (fastai's ``Learner.save`` and ``load`` write there; flowerfast's
    lr-find keeps its weights in memory instead, see :func:`flowerfast.training.lr_find.run_lr_find`),
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
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    fixed_bn: bool = False

    @property
    def mixed_precision(self) -> bool:
        return self.precision != "fp32"


def run_on_device(learn, device: torch.device, precision: str, compile: bool) -> bool:
    """Put the learner's model and batches on ``device`` in the layout and precision they run
    fastest in there (channels-last where that is faster, bf16 autocast or fp16 with loss
    scaling, ``torch.compile`` in place). Returns whether the layout is channels-last."""
    from flowerfast.training.precision import Autocast, BatchLayout

    learn.model.to(device)
    learn.dls.to(device)
    layout = preferred_layout(device)
    channels_last = layout == torch.channels_last
    if channels_last:
        learn.model.to(memory_format=layout)
    if channels_last or compile:
        learn.add_cb(BatchLayout(channels_last=channels_last, plain=compile))
    if precision == "fp16":
        learn.to_fp16()  # fastai's MixedPrecision: autocast plus loss scaling, on CUDA
    elif precision == "bf16":
        learn.add_cb(Autocast(torch.bfloat16))
    if compile:
        learn.model.compile()
    return channels_last


def fastai_learner(
    data: FlowerData,
    backbone,
    head,
    cut,
    device,
    path: Optional[Path],
    class_weights,
    label_smoothing: float = 0.0,
    weight_decay: float = DEFAULTS.weight_decay,
):
    """fastai's ``vision_learner`` around flowerfast's own backbone and head (the data arrives
    normalised already): cross-entropy (weighted by ``class_weights``, smoothed by
    ``label_smoothing``; :mod:`flowerfast.training.losses`), Adam (:func:`adam`, its decoupled
    weight decay ``weight_decay``), accuracy, no progress bars or
    logging of its own (the :class:`Reporter` shows progress). Multi-label: binary cross-entropy on
    each class's logit (``class_weights`` as its ``pos_weight``) and fastai's ``accuracy_multi`` at 0.5."""
    import fastai.callback.fp16  # noqa: F401  (adds to_fp16)
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle and lr_find to Learner)
    from fastai.callback.progress import ProgressCallback
    from fastai.metrics import accuracy, accuracy_multi
    from fastai.vision.learner import vision_learner

    from flowerfast.training.losses import training_loss

    learn = vision_learner(
        data.dls,
        lambda *args, **kwargs: backbone,
        normalize=False,
        pretrained=False,
        cut=cut,
        custom_head=head,
        loss_func=training_loss(data.multi_label, class_weights, label_smoothing, device),
        opt_func=adam(device, weight_decay),
        metrics=accuracy_multi if data.multi_label else accuracy,
        path=Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="flowerfast-")),
    )
    if path is None:
        weakref.finalize(learn, shutil.rmtree, str(learn.path), True)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *args, **kwargs: None
    return learn


def create_learner(
    data: FlowerData,
    arch: str = DEFAULTS.arch,
    size: Optional[int] = None,
    pretrained: Optional[bool] = DEFAULTS.pretrained,
    weights: Optional[Path] = None,
    device: Optional[torch.device] = None,
    precision: str = "fp32",
    compile: bool = False,
    path: Optional[Path] = None,
    class_weights: Optional[list[float]] = None,
    fixed_bn: Optional[bool] = DEFAULTS.fixed_bn,
    label_smoothing: float = DEFAULTS.label_smoothing,
    weight_decay: float = DEFAULTS.weight_decay,
) -> LearnerBundle:
    """Build the classifier for ``data.classes`` and wrap it in a fastai Learner (Adam, accuracy).

    ``precision`` is ``fp32``, ``bf16``, ``fp16`` or ``auto``, resolved for this device and
    network by :func:`flowerfast.hardware.devices.resolve_precision`; the network and its batches are channels-last
    where that layout is faster (:func:`flowerfast.hardware.devices.preferred_layout`); ``compile`` runs
    it through ``torch.compile`` (in place, so the weights keep their names).
    ``class_weights`` (one per class, in ``data.classes`` order) weight the cross-entropy loss;
    ``label_smoothing`` spreads that share of each target over the other classes; ``weight_decay``
    is AdamW's decoupled weight decay.
    ``path`` is the Learner's scratch folder (see :func:`learner_workspace`); by default a new
    temporary folder, removed when the Learner is garbage-collected or the program exits.
    ``fixed_bn`` keeps the body's batch-norm statistics as the pretrained weights have them
    (:class:`flowerfast.training.finetune.FixedBodyNormStats`), and then a frozen body is frozen whole,
    its batch norms' scale and shift too; ``None``: so when the weights are pretrained.
    """
    device = device if device is not None else resolve_device("auto")
    size = data.size if size is None else size
    ref = resolve_arch(arch)
    backbone, info = load_backbone(ref, pretrained=pretrained, weights=weights)
    model, backbone, cut, nf = assemble_classifier(backbone, ref, len(data.classes), size=size)
    precision = resolve_precision(precision, device, training_network=model)
    learn = fastai_learner(data, backbone, model[1], cut, device, path, class_weights, label_smoothing, weight_decay)
    fixed_bn = info.pretrained if fixed_bn is None else bool(fixed_bn)
    if fixed_bn:
        from flowerfast.training.finetune import FixedBodyNormStats

        learn.add_cb(FixedBodyNormStats())
        learn.train_bn = False  # fastai's freeze() would leave the body's batch norms trainable
    channels_last = run_on_device(learn, device, precision, compile)
    mean, std = normalisation(ref)
    spec = ModelSpec(
        arch=ref.name,
        classes=list(data.classes),
        size=size,
        cut=cut,
        num_features=nf,
        mean=mean,
        std=std,
        source=ref.source,
        multi_label=data.multi_label,
    )
    return LearnerBundle(
        learn=learn,
        spec=spec,
        weights=info,
        device=device,
        precision=precision,
        channels_last=channels_last,
        compiled=compile,
        fixed_bn=fixed_bn,
    )


def adam(device: torch.device, weight_decay: float = DEFAULTS.weight_decay):
    """fastai's Adam recipe (betas 0.9 and 0.99, eps 1e-5, decoupled weight decay: fastai's 0.01
    unless ``weight_decay`` says otherwise) as PyTorch's fused AdamW, wrapped for fastai (which
    still schedules its learning rate and momentum).

    Why: fastai's own Adam updates each tensor in Python; for a ResNet-152 on a 2-core CPU its step
    took 0.27 s against 0.09 s fused, most of a tenth of a bf16 training step. One difference:
    fastai's optimiser spares batch-norm and bias parameters the weight decay, PyTorch's does not.
    """
    from fastai.optimizer import OptimWrapper

    fused = device.type in ("cpu", "cuda")
    return partial(
        OptimWrapper,
        opt=partial(torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, weight_decay=weight_decay, fused=fused),
    )


def predict_batches(
    model, dl, precision: str = "fp32", reporter=None, kind: str = "predict", features: bool = False
) -> tuple[torch.Tensor, ...]:
    """Softmax probabilities (multi-label: sigmoid) and targets of ``model`` over a fastai DataLoader, in eval mode; with
    ``features``, the body's pooled unit features too (:mod:`flowerfast.models.familiarity`).

    A plain loop rather than ``Learner.get_preds``, so it can run inside a fit (from a callback)
    without disturbing fastai's training state. ``reporter`` hears of each batch as ``kind``.
    """
    from flowerfast.models.familiarity import pooled_features

    was_training = model.training
    model.eval()
    probs, targets, feats = [], [], []
    if reporter is not None:
        reporter.batches_started(kind, len(dl))
    try:
        with torch.no_grad():
            for xb, yb in dl:
                if reporter is not None:
                    reporter.batch_done(kind)
                xb = xb.as_subclass(torch.Tensor).contiguous(memory_format=preferred_layout(xb.device))
                with torch.autocast(
                    device_type=xb.device.type,
                    dtype=autocast_dtype(precision) or torch.float32,
                    enabled=precision != "fp32",
                ):
                    feature_map = model[0](xb) if features else None
                    out = model[1](feature_map) if features else model(xb)
                multi = yb.ndim == 2  # multi-hot targets: one sigmoid per class
                probs.append((torch.sigmoid(out.float()) if multi else torch.softmax(out.float(), dim=-1)).cpu())
                targets.append(yb.cpu())
                if features:
                    feats.append(pooled_features(feature_map).cpu())
    finally:
        model.train(was_training)
    if features:
        return torch.cat(probs), torch.cat(targets), torch.cat(feats)
    return torch.cat(probs), torch.cat(targets)
