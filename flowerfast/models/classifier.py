"""The classifier network (backbone body + new head) and its files on disk.

The network is built here in plain PyTorch, with the same layout fastai's ``vision_learner`` gives
(``Sequential(body, head)``, a concat-pool head), so a saved model can be rebuilt and used without
importing fastai (which takes seconds) and without unpickling anything: weights are safetensors,
everything else (arch, classes, image size, normalisation, versions) a JSON file beside them.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from flowerfast.core.errors import FlowerfastError
from flowerfast.models.archs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArchRef,
    body_cut,
    check_feature_map,
    cut_body,
    cuttable,
    resolve_arch,
)
from flowerfast.models.familiarity import PROTOTYPES_KEY

FORMAT_VERSION = 1
HEAD_HIDDEN = 512
HEAD_DROPOUT = (0.25, 0.5)


class ConcatPool2d(nn.Module):
    """Adaptive max and average pooling side by side (fastai's AdaptiveConcatPool2d)."""

    def __init__(self):
        super().__init__()
        self.mp = nn.AdaptiveMaxPool2d(1)
        self.ap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.cat([self.mp(x), self.ap(x)], 1)


def build_head(num_features: int, n_classes: int):
    """fastai's default head: concat pool, then BN-dropout-linear twice, ReLU between."""
    nf = 2 * num_features
    return nn.Sequential(
        ConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(nf),
        nn.Dropout(HEAD_DROPOUT[0]),
        nn.Linear(nf, HEAD_HIDDEN, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(HEAD_HIDDEN),
        nn.Dropout(HEAD_DROPOUT[1]),
        nn.Linear(HEAD_HIDDEN, n_classes, bias=False),
    )


def body_features(body, ref: ArchRef, size: int = 64, backbone=None) -> int:
    """Channels of the body's feature map, found by one small forward pass (``backbone``: the
    network the body was cut from, whose own description of its features is checked too)."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise FlowerfastError(f"architecture {ref.name!r} cannot run at {size}px: {exc}") from None
    finally:
        body.train(was_training)
    check_feature_map(backbone if backbone is not None else body, ref, out)
    return int(out.shape[1])


@dataclass
class ModelSpec:
    """Everything needed to rebuild and use a trained classifier, saved as JSON beside its weights."""

    arch: str
    classes: list[str]
    size: int
    cut: int
    num_features: int
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    source: str = "torchvision"  # the library that builds ``arch``: "torchvision" or "timm"
    temperature: float = 1.0  # the logits are divided by it before the softmax (calibration; 1: none)
    familiarity: dict = field(default_factory=dict)  # models.familiarity.Familiarity's fields; {}: none fitted
    multi_label: bool = False  # one sigmoid per class (each photo any number of classes), not a softmax
    thresholds: list = field(default_factory=list)  # multi-label: each class's probability to answer it
    format: str = "flowerfast-model"
    format_version: int = FORMAT_VERSION
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_thresholds(self) -> list[float]:
        """Each class's threshold of a multi-label model: as tuned on its validation split, else 0.5."""
        return [float(t) for t in self.thresholds] if self.thresholds else [0.5] * self.n_classes

    @property
    def arch_ref(self) -> ArchRef:
        return resolve_arch(self.arch, source=self.source)


def library_versions() -> dict[str, str]:
    import torchvision

    from flowerfast import __version__

    versions = {
        "flowerfast": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
    try:
        from importlib.metadata import version

        versions["timm"] = version("timm")
    except Exception:  # timm is a dependency, but a model without it still describes itself
        pass
    return versions


def assemble_classifier(backbone, ref: ArchRef | str, n_classes: int, size: int = 64):
    """Cut ``backbone`` into its body and attach a new head for ``n_classes``.

    Returns ``(model, cuttable, cut, num_features)``: ``model`` is ``Sequential(body, head)``, its
    body the first ``cut`` children of ``cuttable`` (the backbone as :func:`flowerfast.models.archs.cuttable`
    shapes it, which fastai's ``vision_learner`` cuts again the same way).
    """
    ref = ref if isinstance(ref, ArchRef) else resolve_arch(ref)
    whole = cuttable(backbone, ref)
    cut = body_cut(whole)
    body = cut_body(whole, cut)
    nf = body_features(body, ref, size=min(size, 224), backbone=backbone)
    return nn.Sequential(body, build_head(nf, n_classes)), whole, cut, nf


def build_classifier(spec: ModelSpec):
    """The network described by ``spec``, with random weights (load a state dict next).

    ResNet and VGG bodies come from :mod:`flowerfast.models.nets`, which avoids importing torchvision
    (seconds); other architectures are built by torchvision or timm and cut.
    """
    from flowerfast.models.archs import build_body
    from flowerfast.models.nets import build_body as build_plain_body

    body = build_plain_body(spec.arch, spec.cut) if spec.source == "torchvision" else None
    if body is None:
        body = build_body(spec.arch_ref, spec.cut)
    return nn.Sequential(body, build_head(spec.num_features, spec.n_classes))


SPEC_KEY = "flowerfast_spec"
CHECKSUM_KEY = "flowerfast_sha256"


def weights_sha256(state: dict) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes and bytes, in name order).

    Recorded when a model is saved and checked when it is loaded: a file damaged on disk, or
    edited by hand, is refused instead of giving confident nonsense.
    """
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def save_model(model, spec: ModelSpec, path: Path, prototypes: Optional[torch.Tensor] = None) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` and ``<path>.json``, each atomically.

    The safetensors file is complete on its own: its metadata carries the spec and the weights'
    checksum, so a reader never depends on the two files having been replaced together (a kill
    between the two writes leaves a model that still loads). The JSON is the same spec, for people.
    ``prototypes`` (:mod:`flowerfast.models.familiarity`) are stored beside the weights, under the
    checksum too.
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    weights_path = stem.with_name(stem.name + ".safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if prototypes is not None:
        state[PROTOTYPES_KEY] = prototypes.detach().to("cpu").float().contiguous()
    if not spec.versions:
        spec.versions = library_versions()
    write_model_files(weights_path, state, spec)
    return weights_path, stem.with_name(stem.name + ".json")


def write_model_files(weights_path: Path, state: dict, spec: ModelSpec, metadata: Optional[dict] = None) -> None:
    """The safetensors file (tensors, spec and checksum) and the JSON beside it, each atomically."""
    from safetensors.torch import save as st_save

    from flowerfast.core.files import atomic_write_bytes, write_json

    checksum = weights_sha256(state)
    metadata = {
        **(metadata or {}),
        "format": spec.format,
        "arch": spec.arch,
        SPEC_KEY: json.dumps(asdict(spec)),
        CHECKSUM_KEY: checksum,
    }
    atomic_write_bytes(weights_path, st_save(state, metadata=metadata))
    write_json(weights_path.with_suffix(".json"), {**asdict(spec), "sha256": checksum})


def rewrite_model(path: Path, prototypes: Optional[torch.Tensor] = None, **changes) -> ModelSpec:
    """Rewrite a saved model's files with some fields of its spec changed (and new ``prototypes``
    when given), its network weights untouched, each file atomically; returns the new spec. How
    an older model is calibrated (``temperature=``) or given familiarity."""
    import dataclasses

    weights_path, _ = model_paths(path)
    state, metadata = read_weights(weights_path)
    if SPEC_KEY not in metadata:
        raise FlowerfastError(f"{weights_path} carries no description of its own: save it again with flowerfast")
    spec = dataclasses.replace(spec_from_dict(json.loads(metadata[SPEC_KEY]), weights_path), **changes)
    if prototypes is not None:
        state[PROTOTYPES_KEY] = prototypes.detach().to("cpu").float().contiguous()
    write_model_files(weights_path, state, spec, metadata)
    return spec


def set_temperature(path: Path, temperature: float) -> ModelSpec:
    """Rewrite a saved model's files with another temperature (:func:`rewrite_model`)."""
    return rewrite_model(path, temperature=temperature)


def model_paths(path: Path) -> tuple[Path, Path]:
    """The ``.safetensors`` and ``.json`` files that make a model, from either file or a run folder.

    A run folder resolves to its best model (``best.*``), else its final one. The weights file
    must exist; the JSON beside it is needed only for models saved without the spec inside.
    """
    from flowerfast.runs.folder import BEST, FINAL

    path = Path(path).expanduser()
    if path.is_dir():
        for stem in (BEST, FINAL, "model"):
            if (path / f"{stem}.safetensors").exists():
                path = path / f"{stem}.safetensors"
                break
        else:
            raise FlowerfastError(f"no model found in {path} (expected best.safetensors or final.safetensors)")
    if path.suffix not in (".safetensors", ".json"):
        if path.suffix in (".pkl", ".pth", ".pt"):
            raise FlowerfastError(f"{path} is a pickle-based file; flowerfast models are .safetensors + .json")
        path = path.with_name(path.name + ".safetensors")
    stem = path.with_suffix("")
    weights_path, json_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not weights_path.exists():
        raise FlowerfastError(f"model file not found: {weights_path}")
    return weights_path, json_path


def spec_from_dict(data, where) -> ModelSpec:
    if not isinstance(data, dict) or data.get("format") != "flowerfast-model":
        raise FlowerfastError(f"{where} is not a flowerfast model description")
    known = set(ModelSpec.__dataclass_fields__)
    return ModelSpec(**{k: v for k, v in data.items() if k in known})


def read_spec(json_path: Path) -> ModelSpec:
    try:
        data = json.loads(Path(json_path).read_text())
    except FileNotFoundError:
        raise FlowerfastError(f"model file not found: {json_path}") from None
    except (OSError, ValueError) as exc:
        raise FlowerfastError(f"cannot read model description {json_path}: {exc}") from None
    return spec_from_dict(data, json_path)


def read_weights(weights_path: Path) -> tuple[dict, dict]:
    """The tensors and metadata of a safetensors file; a clear error for a damaged one."""
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(weights_path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:
        raise FlowerfastError(f"cannot read model weights {weights_path}: {exc}") from None
    return tensors, metadata


DESCRIBING_FIELDS = (
    "arch",
    "source",
    "classes",
    "size",
    "cut",
    "num_features",
    "mean",
    "std",
    "temperature",
    "familiarity",
    "multi_label",
    "thresholds",
)
"""What a model description says about the network and its answers (not versions or extras)."""


def check_description_agrees(spec: ModelSpec, json_path: Path) -> None:
    """Refuse a model whose JSON description says something else than the description inside its
    weights file (the one flowerfast uses): classes renamed by hand, another size. Why: a person
    reads the JSON and would expect those classes; silently answering with others misleads."""
    if not Path(json_path).is_file():
        return
    beside = read_spec(json_path)
    differ = [f for f in DESCRIBING_FIELDS if getattr(beside, f) != getattr(spec, f)]
    if differ:
        name, weights = differ[0], Path(json_path).with_suffix(".safetensors")
        raise FlowerfastError(
            f"{json_path} contradicts the description inside {weights}: {name} is "
            f"{getattr(beside, name)!r} there and {getattr(spec, name)!r} inside ({len(differ)} "
            "field(s) differ); restore the JSON or delete it (the weights file is complete on its "
            "own)"
        )


def load_classifier(path: Path, device: Optional[str] = None):
    """Rebuild a saved classifier from its safetensors (+ JSON), in eval mode. Returns ``(model, spec)``.

    Never unpickles: safetensors holds only tensors, the JSON only plain values. The weights are
    checked against the checksum saved with them.
    """
    model, spec, _ = load_classifier_parts(path, device)
    return model, spec


def load_classifier_parts(path: Path, device: Optional[str] = None):
    """:func:`load_classifier`, plus the familiarity prototypes stored beside the weights
    (``None`` when the model has none): ``(model, spec, prototypes)``."""
    from flowerfast.models.weights import load_state_into

    weights_path, json_path = model_paths(path)
    state, metadata = read_weights(weights_path)
    if SPEC_KEY in metadata:
        try:
            spec = spec_from_dict(json.loads(metadata[SPEC_KEY]), weights_path)
        except ValueError as exc:
            raise FlowerfastError(f"cannot read the model description inside {weights_path}: {exc}") from None
    else:
        spec = read_spec(json_path)
    if SPEC_KEY in metadata:
        check_description_agrees(spec, json_path)
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and weights_sha256(state) != expected:
        raise FlowerfastError(
            f"{weights_path} is damaged: its weights do not match the checksum saved with them; "
            "use another copy or train again"
        )
    prototypes = state.pop(PROTOTYPES_KEY, None)
    model = build_classifier(spec)
    load_state_into(model, state, f"model weights {weights_path}", spec.arch)
    model.eval()
    if device is not None:
        model.to(device)
    return model, spec, prototypes


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
