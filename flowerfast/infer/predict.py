"""Using a trained classifier on new photos: load it, then predict whole batches.

Why not fastai's ``learn.predict``: it runs one image at a time through the whole fastai pipeline
and needs fastai imported (seconds). Here the saved model is rebuilt in plain PyTorch
(:mod:`flowerfast.models.classifier`) and prepared for speed (:mod:`flowerfast.infer.optimize`), images are decoded
by a DataLoader (in worker processes when a GPU computes) and the network sees whole batches.
How a file becomes the network's input is the model's :class:`~flowerfast.infer.preprocessing.Preprocessing`:
fastai's validation pipeline reproduced exactly for flowerfast models, so a photo gets the same
probabilities here as in the training run's validation, or a fastai export's own transforms
(:mod:`flowerfast.infer.fastai_export`, only with ``trust_pickle``). Pickle files are refused otherwise:
unpickling runs code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.imagefiles import describe_error
from flowerfast.hardware.devices import autocast_dtype, resolve_device, resolve_precision
from flowerfast.infer.optimize import for_inference, inference_layout
from flowerfast.infer.preprocessing import FlowerfastPreprocessing, Preprocessing
from flowerfast.models.classifier import ModelSpec, load_classifier
from flowerfast.runs.config import INFERENCE_BATCH_SIZE, MAX_LOADER_WORKERS, PRECISIONS

PICKLE_SUFFIXES = (".pkl", ".pth", ".pt", ".pickle")


# ----------------------------------------------------------------------------------------------
# Batches of images


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


# ----------------------------------------------------------------------------------------------
# Predictions


@dataclass
class Prediction:
    """The model's answer for one file: ``predicted`` is the class it chose (flowerfast says
    ``label`` only for a true class), ``top_k`` the most likely classes with their probabilities.
    ``error`` is set (and the rest empty) for unreadable files."""

    path: Path
    predicted: Optional[str] = None
    probability: Optional[float] = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "predicted": self.predicted,
            "probability": self.probability,
            "top_k": [{"class": name, "probability": p} for name, p in self.top_k],
            "error": self.error,
        }


def check_top_k(top_k: int, n_classes: int) -> int:
    if top_k < 1 or top_k > n_classes:
        raise FlowerfastError(
            f"$top_k must be between 1 and {n_classes} (the model's classes), not {top_k}", parameters=("top_k",)
        )
    return top_k


@dataclass
class LoadedModel:
    """A classifier ready for inference: the network in eval mode, its spec, device and preprocessing.

    ``preprocessing`` defaults to flowerfast's (:class:`FlowerfastPreprocessing` from the spec);
    ``memory_format`` is the layout the batches are given in (see :func:`inference_layout`);
    ``precision`` ``fp32`` (the default: the numbers exports and served models give) or ``bf16`` /
    ``fp16`` autocast, faster where the hardware has it.
    """

    network: torch.nn.Module
    spec: ModelSpec
    device: torch.device
    source: Path
    preprocessing: Optional[Preprocessing] = None
    memory_format: torch.memory_format = torch.contiguous_format
    precision: str = "fp32"

    def __post_init__(self):
        if self.preprocessing is None:
            self.preprocessing = FlowerfastPreprocessing(self.spec.size, self.spec.mean, self.spec.std)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def probabilities(
        self, paths: Sequence[Path | str], bs: int = INFERENCE_BATCH_SIZE, workers: Optional[int] = None, reporter=None
    ) -> tuple[list[Path], torch.Tensor, dict[int, str]]:
        """Softmax probabilities ``(n_readable, n_classes)`` in input order, plus the unreadable files.

        Returns ``(paths, probs, errors)`` with ``errors`` mapping an index of ``paths`` to its
        reason; ``probs`` rows follow the readable paths in order. ``reporter`` (a
        :class:`~flowerfast.core.progress.Reporter`) hears of each batch, as ``"predict"``.
        """
        if bs < 1:
            raise FlowerfastError(f"$bs must be at least 1, not {bs}", parameters=("bs",))
        paths = [Path(p) for p in paths]
        workers = default_workers(len(paths), bs, self.device) if workers is None else workers
        loader = torch.utils.data.DataLoader(
            ImageFileDataset(paths, self.preprocessing.load),
            batch_size=bs,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
        )
        rows: list[torch.Tensor] = []
        errors: dict[int, str] = {}
        if reporter is not None:
            reporter.batches_started("predict", len(loader))
        for _, images, bad in loader:
            if reporter is not None:
                reporter.batch_done("predict")
            errors.update(bad)
            if images is not None:
                rows.append(self.probabilities_of(images))
        if reporter is not None:
            reporter.finished()
        probs = torch.cat(rows) if rows else torch.zeros(0, self.spec.n_classes)
        return paths, probs, errors

    def probabilities_of(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(N, n_classes)`` on the CPU of a ``uint8`` batch ``(N, C, H, W)``
        of images opened by :meth:`Preprocessing.load`.

        The one place a batch meets the network: :meth:`probabilities` (files on disk) and the web
        server (:mod:`flowerfast.serving.app`, uploads) both call it, so a photo gets the same answer
        from ``flowerfast predict`` and from ``POST /predict``.
        """
        with torch.inference_mode():
            images = images.to(self.device, non_blocking=True)
            x = self.preprocessing.to_input(images).contiguous(memory_format=self.memory_format)
            probs = torch.softmax(self.forward(x).float() / self.spec.temperature, dim=-1).cpu()
        return check_finite(probs, self.source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a prepared batch, under autocast when the precision asks for it."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return self.network(x)
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            return self.network(x)

    def predict(
        self,
        paths: Sequence[Path | str],
        top_k: int = 1,
        bs: int = INFERENCE_BATCH_SIZE,
        workers: Optional[int] = None,
        reporter=None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per path, in order; unreadable files carry their ``error``."""
        check_top_k(top_k, self.spec.n_classes)
        paths, probs, errors = self.probabilities(paths, bs=bs, workers=workers, reporter=reporter)
        return predictions_from(paths, probs, errors, self.classes, top_k)


def predictions_from(
    paths: Sequence[Path], probs: torch.Tensor, errors: dict[int, str], classes: Sequence[str], top_k: int
) -> list[Prediction]:
    values, indices = probs.topk(min(top_k, len(classes)), dim=1) if len(probs) else (probs, probs.long())
    out, row = [], 0
    for i, path in enumerate(paths):
        if i in errors:
            out.append(Prediction(path=path, error=errors[i]))
            continue
        top = [(classes[int(j)], float(v)) for v, j in zip(values[row], indices[row])]
        out.append(Prediction(path=path, predicted=top[0][0], probability=top[0][1], top_k=top))
        row += 1
    return out


# ----------------------------------------------------------------------------------------------
# Loading


def is_pickle_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: Path) -> FlowerfastError:
    return FlowerfastError(
        f"refusing to load {path}: it is a pickle file, and unpickling can run arbitrary code. "
        f"flowerfast models are .safetensors + .json; pass $trust_pickle=True only for "
        f"a fastai export you trust",
        parameters=("trust_pickle",),
    )


def check_pickle_allowed(model_or_path, trust_pickle: bool = False) -> None:
    """Raise :func:`refuse_pickle`'s error for a pickle file unless ``trust_pickle``; before any
    other work, so an untrusted pickle is refused whatever else is missing."""
    if isinstance(model_or_path, LoadedModel) or trust_pickle:
        return
    path = Path(model_or_path).expanduser()
    if is_pickle_file(path):
        raise refuse_pickle(path)


def load_model(
    path: Path | str, device: Optional[str | torch.device] = None, trust_pickle: bool = False, precision: str = "fp32"
) -> LoadedModel:
    """Load a model for inference from a run folder, a ``.safetensors``/``.json`` model file, or
    (only with ``trust_pickle=True``) a fastai ``learn.export()`` ``.pkl``.

    ``device`` is ``auto`` (the default), ``cpu``, ``cuda``, ``mps`` or a torch device;
    ``precision`` is ``fp32`` (the default), ``bf16``, ``fp16`` or ``auto`` (as in training).
    """
    path = Path(path).expanduser()
    dev = resolve_device(device or "auto")
    precision = resolve_precision(check_precision(precision), dev)
    check_pickle_allowed(path, trust_pickle)
    if is_pickle_file(path):
        from flowerfast.infer.fastai_export import load_fastai_export

        network, spec, preprocessing = load_fastai_export(path, dev)
        # as fastai runs it: a fastai export's custom layers may not accept NHWC or folded norms
        return LoadedModel(
            network=network, spec=spec, device=dev, source=path, preprocessing=preprocessing, precision=precision
        )
    if not path.exists() and not path.with_name(path.name + ".safetensors").exists():
        raise FlowerfastError(f"model not found: {path}")
    network, spec = load_classifier(path, device=dev)
    return LoadedModel(
        network=for_inference(network, dev),
        spec=spec,
        device=dev,
        source=path,
        preprocessing=FlowerfastPreprocessing(spec.size, spec.mean, spec.std),
        memory_format=inference_layout(dev),
        precision=precision,
    )


def check_finite(outputs: torch.Tensor, source) -> torch.Tensor:
    """A model whose outputs are NaN or infinite has damaged weights (or diverged in training): its
    answers mean nothing, so it is an error rather than a "daisy nan%" prediction."""
    if not bool(torch.isfinite(outputs).all()):
        raise FlowerfastError(
            f"the model {source} gives NaN or infinite outputs: its weights are damaged or its "
            f"training diverged (retrain with a lower $lr)",
            parameters=("lr",),
        )
    return outputs


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise FlowerfastError(
            f"$precision must be one of {', '.join(PRECISIONS)} (got {precision!r})", parameters=("precision",)
        )
    return precision


def as_loaded_model(model_or_path, device=None, trust_pickle: bool = False, precision: str = "fp32") -> LoadedModel:
    if isinstance(model_or_path, LoadedModel):
        return model_or_path
    return load_model(model_or_path, device=device, trust_pickle=trust_pickle, precision=precision)
