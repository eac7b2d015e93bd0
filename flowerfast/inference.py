"""Using a trained classifier on new photos: find the images, preprocess them, predict in batches.

Why not fastai's ``learn.predict``: it runs one image at a time through the whole fastai pipeline
and needs fastai imported (seconds). Here the saved model is rebuilt in plain PyTorch
(:mod:`flowerfast.model`), images are decoded by a DataLoader (in worker processes when a GPU
computes) and the network sees whole batches, in channels-last layout. The preprocessing
reproduces fastai's *validation* pipeline for the model's training transforms exactly (see
:func:`preprocess`), so a photo gets the same probabilities here as it got in the training run's
validation.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from .imagefiles import collect_image_paths, describe_error
from .errors import FlowerfastError
from .model import ModelSpec

PICKLE_SUFFIXES = (".pkl", ".pth", ".pt", ".pickle")
VALID_EXTRA = 0.14  # fastai RandomResizedCrop's val_xtra: the border cropped away in validation


# ----------------------------------------------------------------------------------------------
# Finding the images


# ----------------------------------------------------------------------------------------------
# Preprocessing


def resize_size(size: int) -> int:
    """The square size fastai's RandomResizedCrop squashes a validation image to before cropping."""
    return size + math.ceil(size * VALID_EXTRA / 8) * 8


def preprocess(path: Path | str, size: int) -> torch.Tensor:
    """One image file to a ``uint8`` tensor ``(3, size, size)``, exactly as fastai validates it.

    fastai's ``RandomResizedCrop`` on the validation set takes the whole image, *squashes* it
    (aspect ratio not kept) to ``size + ceil(size * 0.14 / 8) * 8`` square with PIL bilinear,
    then crops the centre ``size`` square. Decoding is PIL's, converted to RGB, like fastai's
    ``PILImage.create``.
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        img = im.convert("RGB")
    big = resize_size(size)
    img = img.resize((big, big), Image.BILINEAR)
    off = (big - size) // 2
    img = img.crop((off, off, off + size, off + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageFileDataset(torch.utils.data.Dataset):
    """Decodes and crops one image per item; a file that fails yields its reason instead.

    ``transform`` (path to ``uint8`` tensor) replaces :func:`preprocess`, for fastai exports.
    """

    def __init__(self, paths: Sequence[Path], size: int, transform: Optional[Callable[[Path], torch.Tensor]] = None):
        self.paths = list(paths)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = self.transform(self.paths[i]) if self.transform else preprocess(self.paths[i], self.size)
            return i, image, None
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
    return max(1, min(8, (os.cpu_count() or 1)))


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``NCHW`` to float, /255, then ``(x - mean) / std`` (fastai's IntToFloatTensor, Normalize)."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------------------------
# Predictions


@dataclass
class Prediction:
    """The model's answer for one file. ``error`` is set (and the rest empty) for unreadable files."""

    path: Path
    label: Optional[str] = None
    probability: Optional[float] = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "label": self.label, "probability": self.probability,
                "top_k": [{"label": lbl, "probability": p} for lbl, p in self.top_k], "error": self.error}


def check_top_k(top_k: int, n_classes: int) -> int:
    if top_k < 1 or top_k > n_classes:
        raise FlowerfastError(f"--top-k must be between 1 and {n_classes} (the model's classes), not {top_k}")
    return top_k


@dataclass
class LoadedModel:
    """A classifier ready for inference: the network in eval mode, its spec and its device."""

    network: torch.nn.Module
    spec: ModelSpec
    device: torch.device
    source: Path
    transform: Optional[Callable[[Path], torch.Tensor]] = None  # file to uint8 CHW; None: :func:`preprocess`
    batch_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # uint8 batch to input; None: :func:`normalise`
    memory_format: torch.memory_format = torch.contiguous_format  # of the batches (see :func:`inference_layout`)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def probabilities(self, paths: Sequence[Path | str], bs: int = 64,
                      workers: Optional[int] = None) -> tuple[list[Path], torch.Tensor, dict[int, str]]:
        """Softmax probabilities ``(n_readable, n_classes)`` in input order, plus the unreadable files.

        Returns ``(paths, probs, errors)`` with ``errors`` mapping an index of ``paths`` to its
        reason; ``probs`` rows follow the readable paths in order.
        """
        if bs < 1:
            raise FlowerfastError(f"--bs must be at least 1, not {bs}")
        paths = [Path(p) for p in paths]
        workers = default_workers(len(paths), bs, self.device) if workers is None else workers
        loader = torch.utils.data.DataLoader(
            ImageFileDataset(paths, self.spec.size, self.transform), batch_size=bs, shuffle=False, num_workers=workers,
            collate_fn=collate_images, pin_memory=self.device.type == "cuda")
        rows: list[torch.Tensor] = []
        errors: dict[int, str] = {}
        with torch.inference_mode():
            for _, images, bad in loader:
                errors.update(bad)
                if images is None:
                    continue
                images = images.to(self.device, non_blocking=True)
                if self.batch_transform is not None:
                    x = self.batch_transform(images)
                else:
                    x = normalise(images, self.spec.mean, self.spec.std)
                x = x.contiguous(memory_format=self.memory_format)
                rows.append(torch.softmax(self.network(x).float(), dim=-1).cpu())
        probs = torch.cat(rows) if rows else torch.zeros(0, self.spec.n_classes)
        return paths, probs, errors

    def predict(self, paths: Sequence[Path | str], top_k: int = 1, bs: int = 64,
                workers: Optional[int] = None) -> list[Prediction]:
        """One :class:`Prediction` per path, in order; unreadable files carry their ``error``."""
        check_top_k(top_k, self.spec.n_classes)
        paths, probs, errors = self.probabilities(paths, bs=bs, workers=workers)
        return predictions_from(paths, probs, errors, self.classes, top_k)


def predictions_from(paths: Sequence[Path], probs: torch.Tensor, errors: dict[int, str],
                     classes: Sequence[str], top_k: int) -> list[Prediction]:
    values, indices = probs.topk(min(top_k, len(classes)), dim=1) if len(probs) else (probs, probs.long())
    out, row = [], 0
    for i, path in enumerate(paths):
        if i in errors:
            out.append(Prediction(path=path, error=errors[i]))
            continue
        top = [(classes[int(j)], float(v)) for v, j in zip(values[row], indices[row])]
        out.append(Prediction(path=path, label=top[0][0], probability=top[0][1], top_k=top))
        row += 1
    return out


# ----------------------------------------------------------------------------------------------
# Loading


def inference_layout(device: torch.device) -> torch.memory_format:
    """Channels-last (NHWC) on CPUs and CUDA GPUs, whose convolutions (oneDNN, cuDNN) run faster
    in it; the usual NCHW elsewhere. For the networks flowerfast builds and the batches fed to them."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def fold_batch_norms(network: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode BatchNorm2d into the convolution before it, in place; returns ``network``.

    Why: at inference a batch norm is a fixed per-channel scale and shift, which the convolution's
    weights and bias can absorb, saving a pass over every feature map (about 6% of a resnet18's
    time on a CPU). Pairs are a ``Conv2d`` directly followed by a ``BatchNorm2d`` in a
    ``Sequential`` (stems, VGG features, ResNet shortcuts, torchvision's conv-norm blocks), and
    ``convN``/``bnN`` attributes of ResNet blocks. Anything else is left as it is.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def foldable(conv, bn) -> bool:
        return (isinstance(conv, torch.nn.Conv2d) and type(bn) is torch.nn.BatchNorm2d
                and not conv.training and not bn.training  # a training batch norm is not fixed yet
                and bn.track_running_stats and bn.num_features == conv.out_channels)

    for module in list(network.modules()):
        if isinstance(module, torch.nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if foldable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = torch.nn.Identity()
        for i in range(1, 4):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if conv is not None and foldable(conv, bn):
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", torch.nn.Identity())
    return network


def for_inference(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on ``device``, batch norms folded (:func:`fold_batch_norms`), in the memory layout
    of :func:`inference_layout`.

    Why channels-last: on a 2-core CPU a resnet18 at 128px goes from about 68 to 90 images/s. The
    results are the same to float rounding. Only for networks flowerfast builds (ResNet, VGG and
    other torchvision bodies with its own head): a fastai export's custom layers may not accept
    NHWC tensors.
    """
    return fold_batch_norms(network.eval()).to(device, memory_format=inference_layout(device))


def is_pickle_file(path: Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: Path) -> FlowerfastError:
    return FlowerfastError(
        f"refusing to load {path}: it is a pickle file, and unpickling can run arbitrary code. "
        f"flowerfast models are .safetensors + .json; pass --trust-pickle (trust_pickle=True) only for "
        f"a fastai export you trust")


def load_model(path: Path | str, device: Optional[str | torch.device] = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load a model for inference from a run folder, a ``.safetensors``/``.json`` model file, or
    (only with ``trust_pickle=True``) a fastai ``learn.export()`` ``.pkl``.

    ``device`` is ``auto`` (the default), ``cpu``, ``cuda``, ``mps`` or a torch device.
    """
    from .devices import resolve_device
    from .model import load_classifier

    path = Path(path).expanduser()
    dev = device if isinstance(device, torch.device) else resolve_device(device or "auto")
    if is_pickle_file(path):
        if not trust_pickle:
            raise refuse_pickle(path)
        return _load_fastai_export(path, dev)
    if not path.exists() and not path.with_name(path.name + ".safetensors").exists():
        raise FlowerfastError(f"model not found: {path}")
    network, spec = load_classifier(path, device=dev)
    return LoadedModel(network=for_inference(network, dev), spec=spec, device=dev, source=path,
                       memory_format=inference_layout(dev))


class FastaiItemTransform:
    """A fastai export's own validation item pipeline for one file: open it as the export's image
    type (``PILImage``, ``PILImageBW``...), then its resize and ToTensor.

    fastai learners resize in several ways (crop, squash, pad, random-resized crop), so an export
    is preprocessed by its own transforms rather than by :func:`preprocess`.
    """

    def __init__(self, create, pipeline):
        self.create = create
        self.pipeline = pipeline
        self.pipeline.split_idx = 1  # validation behaviour: no random augmentation

    def __call__(self, path) -> torch.Tensor:
        return self.pipeline(self.create(path)).as_subclass(torch.Tensor)


class FastaiBatchTransform:
    """A fastai export's own validation batch pipeline on a ``uint8`` batch: scaling to floats,
    Normalize, and whatever else it applies in validation (a batch-level resize, for instance)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.pipeline.split_idx = 1

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from fastai.torch_core import TensorImage

        return self.pipeline(TensorImage(images)).as_subclass(torch.Tensor)


def _image_creator(learn):
    """The export's ``*.create`` type transform (how it opens a file), without any ``get_x`` step."""
    from fastai.vision.core import PILImage

    try:
        fs = learn.dls.valid_ds.tls[0].tfms.fs
    except (AttributeError, IndexError):
        fs = []
    creates = [t for t in fs if str(getattr(t, "name", "")).endswith(".create")]
    return creates[-1] if creates else PILImage.create


def _blank_png(width: int, height: int) -> bytes:
    """A black RGB photo as PNG bytes: opened like a file, so the export's colour mode applies."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _load_fastai_export(path: Path, device: torch.device) -> LoadedModel:
    """A fastai ``learn.export()`` pickle, read with fastai's ``load_learner`` (unpickles: trusted only).

    Its images go through its own item and batch transforms, as ``learn.predict`` sends them; the
    network input size is what those transforms make of an image.
    """
    if not path.exists():
        raise FlowerfastError(f"model not found: {path}")
    if path.suffix.lower() != ".pkl":
        raise FlowerfastError(f"{path}: only fastai learn.export() .pkl files can be loaded with --trust-pickle")
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
    item_transform = FastaiItemTransform(_image_creator(learn), learn.dls.after_item)
    batch_transform = FastaiBatchTransform(learn.dls.after_batch)
    with torch.inference_mode():  # one blank photo through both: the channels and the network input size
        item = item_transform(_blank_png(item_size + 3, item_size + 7))
        probe = batch_transform(item[None].to(device))
    mean, std = [0.0] * item.shape[0], [1.0] * item.shape[0]
    for tfm in learn.dls.after_batch.fs:
        if type(tfm).__name__ == "Normalize":
            mean, std = [float(v) for v in tfm.mean.flatten()], [float(v) for v in tfm.std.flatten()]
    classes = [str(c) for c in learn.dls.vocab]
    spec = ModelSpec(arch="fastai-export", classes=classes, size=int(probe.shape[-1]), cut=0, num_features=0,
                     mean=mean, std=std)
    return LoadedModel(network=learn.model.eval().to(device), spec=spec, device=device, source=path,
                       transform=item_transform, batch_transform=batch_transform)


def as_loaded_model(model_or_path, device=None, trust_pickle: bool = False) -> LoadedModel:
    if isinstance(model_or_path, LoadedModel):
        return model_or_path
    return load_model(model_or_path, device=device, trust_pickle=trust_pickle)
