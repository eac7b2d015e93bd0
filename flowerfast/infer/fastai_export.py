"""Adapter for a fastai ``learn.export()`` pickle: its network, and its own transforms as a
:class:`flowerfast.infer.preprocessing.Preprocessing`.

Why a separate module: it is the only module on the inference side that imports fastai, which
takes seconds and unpickles code. It is imported only when ``--trust-pickle`` (``trust_pickle=True``)
opens such a file, and imports fastai inside its functions, so ``flowerfast predict`` on a
flowerfast model never pays for fastai. Why the export's own transforms and not flowerfast's:
fastai learners resize in several ways (crop, squash, pad, random-resized crop, a batch-level
resize), so an export is preprocessed as ``learn.predict`` would do it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.imagefiles import describe_error
from flowerfast.infer.preprocessing import Preprocessing, colour_mode
from flowerfast.models.classifier import ModelSpec

VALIDATION = 1  # fastai's split_idx of the validation set: no random augmentation


class FastaiItemTransform:
    """A fastai export's own validation item pipeline for one file: open it as the export's image
    type (``PILImage``, ``PILImageBW``...), then its resize and ToTensor."""

    def __init__(self, create, pipeline):
        self.create = create
        self.pipeline = pipeline
        self.pipeline.split_idx = VALIDATION

    def __call__(self, path) -> torch.Tensor:
        return self.pipeline(self.create(path)).as_subclass(torch.Tensor)


class FastaiBatchTransform:
    """A fastai export's own validation batch pipeline on a ``uint8`` batch: scaling to floats,
    Normalize, and whatever else it applies in validation (a batch-level resize, for instance)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.pipeline.split_idx = VALIDATION

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from fastai.torch_core import TensorImage

        return self.pipeline(TensorImage(images)).as_subclass(torch.Tensor)


class FastaiExportPreprocessing(Preprocessing):
    """A fastai export's item pipeline (:class:`FastaiItemTransform`) and batch pipeline
    (:class:`FastaiBatchTransform`), run as in fastai's validation.

    ``size`` is the network input's side (what both pipelines make of an image), ``mean`` and
    ``std`` the export's Normalize statistics (0 and 1 without one).
    """

    def __init__(
        self, item: FastaiItemTransform, batch: FastaiBatchTransform, size: int, mean: list[float], std: list[float]
    ):
        self.item = item
        self.batch = batch
        self.size = int(size)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def __repr__(self) -> str:
        return f"FastaiExportPreprocessing(size={self.size}, mean={self.mean}, std={self.std})"

    @property
    def load(self) -> FastaiItemTransform:
        """The item pipeline itself, called as ``load(path)``. A property so that what a DataLoader
        sends to its worker processes is the item pipeline alone: the batch pipeline's Normalize
        statistics live on the device (a GPU's tensors do not travel to spawned processes)."""
        return self.item

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.batch(images)

    def describe(self) -> dict[str, Any]:
        return {
            "fastai_item_transforms": [repr(t) for t in self.item.pipeline.fs],
            "fastai_batch_transforms": [repr(t) for t in self.batch.pipeline.fs],
            "color": colour_mode(self.channels),
            "scale": 1 / 255,
            "mean": list(self.mean),
            "std": list(self.std),
            "steps": [
                "open the image as the fastai export does",
                "apply the fastai item transforms listed, as in validation",
                "apply the fastai batch transforms listed, as in validation (they scale to floats and normalise)",
            ],
        }


def image_creator(learn):
    """The export's ``*.create`` type transform (how it opens a file), without any ``get_x`` step."""
    from fastai.vision.core import PILImage

    try:
        fs = learn.dls.valid_ds.tls[0].tfms.fs
    except (AttributeError, IndexError):
        fs = []
    creates = [t for t in fs if str(getattr(t, "name", "")).endswith(".create")]
    return creates[-1] if creates else PILImage.create


def blank_png(width: int, height: int) -> bytes:
    """A black RGB photo as PNG bytes: opened like a file, so the export's colour mode applies."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def load_fastai_export(
    path: Path, device: torch.device
) -> tuple[torch.nn.Module, ModelSpec, FastaiExportPreprocessing]:
    """A fastai ``learn.export()`` pickle, read with fastai's ``load_learner`` (unpickles: trusted only).

    Returns ``(network, spec, preprocessing)``: the network in eval mode on ``device``, a spec
    (``arch`` ``fastai-export``) and the export's own transforms. The network input size is what
    those transforms make of an image, found by sending one blank photo through both.
    """
    path = Path(path)
    if not path.exists():
        raise FlowerfastError(f"model not found: {path}")
    if path.suffix.lower() != ".pkl":
        raise FlowerfastError(
            f"{path}: only fastai learn.export() .pkl files can be loaded with $trust_pickle=True",
            parameters=("trust_pickle",),
        )
    from fastai.learner import load_learner

    try:
        learn = load_learner(path, cpu=device.type == "cpu")
    except Exception as exc:
        raise FlowerfastError(f"cannot load fastai learner {path}: {describe_error(exc)}") from None
    learn.dls.to(device)  # the Normalize statistics, on the device the batches will be on
    item_size = None
    for tfm in learn.dls.after_item.fs:
        if getattr(tfm, "size", None) is not None:
            item_size = int(max(tfm.size))
    if item_size is None:
        raise FlowerfastError(f"{path}: cannot find the image size in the learner's item transforms")
    item = FastaiItemTransform(image_creator(learn), learn.dls.after_item)
    batch = FastaiBatchTransform(learn.dls.after_batch)
    with torch.inference_mode():  # one blank photo through both: the channels and the network input size
        probe_item = item(blank_png(item_size + 3, item_size + 7))
        probe = batch(probe_item[None].to(device))
    channels = probe_item.shape[0]
    mean, std = [0.0] * channels, [1.0] * channels
    for tfm in learn.dls.after_batch.fs:
        if type(tfm).__name__ == "Normalize":
            mean, std = [float(v) for v in tfm.mean.flatten()], [float(v) for v in tfm.std.flatten()]
    preprocessing = FastaiExportPreprocessing(item, batch, size=int(probe.shape[-1]), mean=mean, std=std)
    classes = [str(c) for c in learn.dls.vocab]
    spec = ModelSpec(
        arch="fastai-export",
        classes=classes,
        size=preprocessing.size,
        cut=0,
        num_features=0,
        mean=preprocessing.mean,
        std=preprocessing.std,
    )
    return learn.model.eval().to(device), spec, preprocessing
