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

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.hardware.devices import autocast_dtype, resolve_device, resolve_precision
from flowerfast.infer.answers import Prediction, check_min_confidence, check_top_k, predictions_from
from flowerfast.infer.batches import ImageFileDataset, collate_images, default_workers
from flowerfast.infer.exported import is_exported_file, load_exported
from flowerfast.infer.optimize import for_inference, inference_layout
from flowerfast.infer.preprocessing import FlowerfastPreprocessing, Preprocessing
from flowerfast.models.classifier import ModelSpec, load_classifier_parts
from flowerfast.runs.config import INFERENCE_BATCH_SIZE, PRECISIONS

PICKLE_SUFFIXES = (".pkl", ".pth", ".pt", ".pickle")


@dataclass
class LoadedModel:
    """A classifier ready for inference: the network in eval mode, its spec, device and preprocessing.

    ``preprocessing`` defaults to flowerfast's (:class:`FlowerfastPreprocessing` from the spec);
    ``memory_format`` is the layout the batches are given in (see :func:`inference_layout`);
    ``precision`` ``fp32`` (the default: the numbers exports and served models give) or ``bf16`` /
    ``fp16`` autocast, faster where the hardware has it. ``prototypes`` are the class prototypes
    of :mod:`flowerfast.models.familiarity`, when the model was saved with them. ``outputs`` is
    ``logits`` for flowerfast's networks, ``probabilities`` for an exported file, whose graph
    already applies the temperature and the softmax (:mod:`flowerfast.infer.exported`).
    """

    network: torch.nn.Module
    spec: ModelSpec
    device: torch.device
    source: Path
    preprocessing: Optional[Preprocessing] = None
    memory_format: torch.memory_format = torch.contiguous_format
    precision: str = "fp32"
    prototypes: Optional[torch.Tensor] = None
    outputs: str = "logits"

    def __post_init__(self):
        if self.preprocessing is None:
            self.preprocessing = FlowerfastPreprocessing(self.spec.size, self.spec.mean, self.spec.std)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def thresholds(self) -> Optional[list[float]]:
        """A multi-label model's threshold per class (``None``: a single-label model)."""
        return self.spec.class_thresholds() if self.spec.multi_label else None

    @property
    def familiar_threshold(self) -> Optional[float]:
        """Below this familiarity a photo is unfamiliar; ``None`` for a model without prototypes."""
        return self.spec.familiarity.get("threshold") if self.prototypes is not None else None

    def probabilities(
        self,
        paths: Sequence[Path | str],
        bs: int = INFERENCE_BATCH_SIZE,
        workers: Optional[int] = None,
        reporter=None,
        tta: bool = False,
    ) -> tuple[list[Path], torch.Tensor, dict[int, str]]:
        """Softmax probabilities ``(n_readable, n_classes)`` in input order, plus the unreadable files.

        Returns ``(paths, probs, errors)`` with ``errors`` mapping an index of ``paths`` to its
        reason; ``probs`` rows follow the readable paths in order. ``reporter`` (a
        :class:`~flowerfast.core.progress.Reporter`) hears of each batch, as ``"predict"``.
        ``tta`` averages the views of :mod:`flowerfast.infer.tta` (one network pass each).
        """
        paths, probs, _, errors = self.scores(paths, bs=bs, workers=workers, reporter=reporter, tta=tta)
        return paths, probs, errors

    def scores(
        self,
        paths: Sequence[Path | str],
        bs: int = INFERENCE_BATCH_SIZE,
        workers: Optional[int] = None,
        reporter=None,
        tta: bool = False,
    ) -> tuple[list[Path], torch.Tensor, Optional[torch.Tensor], dict[int, str]]:
        """:meth:`probabilities`, with each readable photo's familiarity (``None`` for a model
        without prototypes): ``(paths, probs, familiarity, errors)``."""
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
        rows, familiar, errors = [], [], {}
        if reporter is not None:
            reporter.batches_started("predict", len(loader))
        for _, images, bad in loader:
            if reporter is not None:
                reporter.batch_done("predict")
            errors.update(bad)
            if images is not None:
                probs, fam = self.scores_of(images, tta=tta)
                rows.append(probs)
                familiar.append(fam)
        if reporter is not None:
            reporter.finished()
        probs = torch.cat(rows) if rows else torch.zeros(0, self.spec.n_classes)
        fam = torch.cat(familiar) if self.prototypes is not None and familiar else None
        return paths, probs, fam, errors

    def probabilities_of(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities ``(N, n_classes)`` on the CPU of a ``uint8`` batch ``(N, C, H, W)``
        of images opened by :meth:`Preprocessing.load` (:meth:`scores_of` without the familiarity)."""
        return self.scores_of(images, tta=tta)[0]

    def scores_of(self, images: torch.Tensor, tta: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Softmax probabilities ``(N, n_classes)`` at the model's temperature and familiarity
        ``(N,)`` (``None`` without prototypes), on the CPU, of a ``uint8`` batch ``(N, C, H, W)`` of
        images opened by :meth:`Preprocessing.load`. With ``tta`` the probabilities are the mean of
        those of :func:`~flowerfast.infer.tta.tta_views`; the familiarity is the photo's as it is.

        The one place a batch meets the network: :meth:`scores` (files on disk) and the web
        server (:mod:`flowerfast.serving.app`, uploads) both call it, so a photo gets the same answer
        from ``flowerfast predict`` and from ``POST /predict``.
        """
        from flowerfast.infer.tta import tta_views
        from flowerfast.models.familiarity import familiarity, pooled_features

        with torch.inference_mode():
            x = self.input_of(images)
            fam = None
            if self.prototypes is None:
                first = self.probabilities_from(self.forward(x))
            else:
                feature_map, logits = self.forward_parts(x)
                fam = familiarity(pooled_features(feature_map), self.prototypes.to(self.device)).cpu()
                first = self.probabilities_from(logits)
            views = tta_views(x)[1:] if tta else []
            probs = (sum((self.probabilities_from(self.forward(v)) for v in views), first) / (1 + len(views))).cpu()
        return check_finite(probs, self.source), fam

    def probabilities_from(self, outputs: torch.Tensor) -> torch.Tensor:
        """The network's outputs to probabilities at the model's temperature (an export's are already)."""
        if self.outputs == "probabilities":
            return outputs.float()
        if self.spec.multi_label:  # one yes-or-no per class
            return torch.sigmoid(outputs.float())
        return torch.softmax(outputs.float() / self.spec.temperature, dim=-1)

    def logits_of(self, images: torch.Tensor) -> torch.Tensor:
        """The network's raw outputs ``(N, n_classes)`` on the CPU (before the temperature), for
        scores other than the probability (:mod:`flowerfast.core.selective`)."""
        if self.outputs != "logits":
            raise FlowerfastError(f"{self.source} gives probabilities, not logits: use the model it was exported from")
        with torch.inference_mode():
            logits = self.forward(self.input_of(images)).float().cpu()
        return check_finite(logits, self.source)

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """The body's pooled unit features ``(N, C)`` on the CPU (:mod:`flowerfast.models.familiarity`)."""
        from flowerfast.models.familiarity import pooled_features

        with torch.inference_mode():
            return pooled_features(self.forward_parts(self.input_of(images))[0]).cpu()

    def input_of(self, images: torch.Tensor) -> torch.Tensor:
        """A ``uint8`` batch to the network's input on its device, in its memory layout."""
        images = images.to(self.device, non_blocking=True)
        return self.preprocessing.to_input(images).contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a prepared batch, under autocast when the precision asks for it."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return self.network(x)
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            return self.network(x)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The body's feature map and the head's outputs of a prepared batch: one pass, both
        (flowerfast networks are ``Sequential(body, head)``)."""
        dtype = autocast_dtype(self.precision)
        with torch.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            feature_map = self.network[0](x)
            return feature_map, self.network[1](feature_map)

    def predict(
        self,
        paths: Sequence[Path | str],
        top_k: int = 1,
        bs: int = INFERENCE_BATCH_SIZE,
        workers: Optional[int] = None,
        reporter=None,
        min_confidence: Optional[float] = None,
        tta: bool = False,
    ) -> list[Prediction]:
        """One :class:`Prediction` per path, in order; unreadable files carry their ``error``.
        Below ``min_confidence`` (a probability) a prediction is ``unknown``."""
        check_top_k(top_k, self.spec.n_classes)
        check_min_confidence(min_confidence)
        paths, probs, fam, errors = self.scores(paths, bs=bs, workers=workers, reporter=reporter, tta=tta)
        return predictions_from(
            paths, probs, errors, self.classes, top_k, min_confidence, fam, self.familiar_threshold, self.thresholds
        )


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
    """Load a model for inference from a run folder, a ``.safetensors``/``.json`` model file, an
    exported ``.onnx`` file (run by ONNX Runtime on the CPU, in fp32), or (only with
    ``trust_pickle=True``) a fastai ``learn.export()`` ``.pkl``.

    ``device`` is ``auto`` (the default), ``cpu``, ``cuda``, ``mps`` or a torch device;
    ``precision`` is ``fp32`` (the default), ``bf16``, ``fp16`` or ``auto`` (as in training).
    """
    path = Path(path).expanduser()
    dev = resolve_device(device or "auto")
    precision = resolve_precision(check_precision(precision), dev)
    check_pickle_allowed(path, trust_pickle)
    if is_exported_file(path):
        network, spec, preprocessing = load_exported(path)
        return LoadedModel(network, spec, torch.device("cpu"), path, preprocessing, outputs="probabilities")
    if is_pickle_file(path):
        from flowerfast.infer.fastai_export import load_fastai_export

        network, spec, preprocessing = load_fastai_export(path, dev)
        # as fastai runs it: a fastai export's custom layers may not accept NHWC or folded norms
        return LoadedModel(
            network=network, spec=spec, device=dev, source=path, preprocessing=preprocessing, precision=precision
        )
    if not path.exists() and not path.with_name(path.name + ".safetensors").exists():
        raise FlowerfastError(f"model not found: {path}")
    network, spec, prototypes = load_classifier_parts(path, device=dev)
    return LoadedModel(
        prototypes=prototypes,
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
