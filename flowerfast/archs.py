"""Architectures by name: the registry, backbone construction and where its weights come from.

Any torchvision classification model can be named; a few are featured (the flower report's
``resnet152`` and ``vgg11_bn`` first). Pretrained weights come from torchvision's own weights API,
so they are cached where torch caches them (``$TORCH_HOME/hub/checkpoints``) and a machine that has
them there needs no network. ``--weights FILE`` loads a local state dict instead, read without
unpickling arbitrary objects.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import FlowerfastError

FEATURED = {
    "resnet152": "ResNet-152, the flower report's main model",
    "vgg11_bn": "VGG-11 with batch norm, the flower report's comparison model",
    "resnet18": "ResNet-18, fast; good for CPUs and quick experiments",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50, a strong default on a GPU",
    "resnet101": "ResNet-101",
    "vgg16_bn": "VGG-16 with batch norm",
    "efficientnet_b0": "EfficientNet-B0, accurate for its size",
    "convnext_tiny": "ConvNeXt-Tiny, a modern convolutional network",
    "mobilenet_v3_large": "MobileNet-V3-Large, for phones and small devices",
    "densenet121": "DenseNet-121",
}

# Models whose layout cannot be cut into "feature body + new head": auxiliary classifiers sit
# between the feature layers (googlenet, inception) or the body yields tokens, not a feature map (ViT).
UNSUPPORTED = {
    "googlenet": "its auxiliary classifiers sit inside the feature layers",
    "inception_v3": "its auxiliary classifiers sit inside the feature layers",
}
UNSUPPORTED_PREFIXES = {"vit_": "its body yields tokens, not a feature map"}


class PretrainedUnavailableWarning(UserWarning):
    """Pretrained weights could not be had; training starts from random weights."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's starting weights came from."""

    pretrained: bool
    source: str  # "imagenet:<torchvision weights name>", "file:<path>" or "random"
    note: Optional[str] = None


def torchvision_archs() -> list[str]:
    """Every torchvision classification model name flowerfast can fine-tune."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if _unsupported_reason(n) is None)


def list_archs(featured_only: bool = False) -> list[str]:
    """Architecture names: the featured ones first, then the rest of torchvision's, A to Z."""
    featured = list(FEATURED)
    if featured_only:
        return featured
    return featured + [n for n in torchvision_archs() if n not in FEATURED]


def _unsupported_reason(name: str) -> Optional[str]:
    if name in UNSUPPORTED:
        return UNSUPPORTED[name]
    for prefix, why in UNSUPPORTED_PREFIXES.items():
        if name.startswith(prefix):
            return why
    return None


def check_arch(name: str) -> str:
    """Return ``name`` if it is a known, supported architecture; else raise with close matches."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, list_archs(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `flowerfast archs`"
        raise FlowerfastError(f"unknown architecture {name!r}{hint}")
    why = _unsupported_reason(name)
    if why:
        raise FlowerfastError(f"architecture {name!r} is not supported: {why}")
    return name


def build_backbone(name: str):
    """A torchvision model with random weights (the classifier layer is replaced later)."""
    import torchvision

    return torchvision.models.get_model(check_arch(name), weights=None)


def imagenet_weights(name: str):
    """torchvision's default ImageNet weights enum for ``name``."""
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def download_pretrained_state(name: str) -> tuple[dict, str]:
    """The ImageNet state dict from torchvision: from torch's cache, else downloaded into it."""
    weights = imagenet_weights(name)
    state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    return state, f"imagenet:{weights}"


def read_state_dict(path: Path) -> dict:
    """Read a state dict from safetensors or a torch file, never running pickled code.

    torch files are read with ``weights_only=True``: tensors and plain containers only.
    Checkpoints that wrap the state dict (``{"model": ...}`` or ``{"state_dict": ...}``, as
    torchvision's reference scripts and Lightning write them) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowerfastError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowerfastError(f"cannot read weights file {path}: {first}") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise FlowerfastError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return state


def load_state_into(model, state: dict, what: str, arch: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` strictly, turning key and shape mismatches into one readable error.

    Keys under ``ignore_prefixes`` (layers that will be cut off, such as an ImageNet classifier
    with another number of classes) are left out on both sides.
    """
    if ignore_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
    if problems:
        raise FlowerfastError(f"{what} does not fit {arch}: {', '.join(problems)}")
    model.load_state_dict(state, strict=not ignore_prefixes)


def classifier_prefixes(model) -> tuple[str, ...]:
    """State-dict prefixes of the layers that the body cut drops (the ImageNet classifier)."""
    from .model import body_cut

    names = [name for name, _ in model.named_children()]
    return tuple(f"{name}." for name in names[body_cut(model):])


def load_backbone(name: str, pretrained: Optional[bool] = None, weights: Optional[Path] = None):
    """Build the ``name`` backbone and give it its starting weights.

    ``weights``: a local state dict file (its classifier layer may have any number of classes: it
    is cut off anyway). ``pretrained=True``: ImageNet weights or an error;
    ``False``: random; ``None``: ImageNet weights if they can be had, else random with a
    :class:`PretrainedUnavailableWarning` (the result's ``WeightsInfo`` says which happened).
    """
    model = build_backbone(name)
    if weights is not None:
        load_state_into(model, read_state_dict(Path(weights)), f"weights file {weights}", name,
                        ignore_prefixes=classifier_prefixes(model))
        return model, WeightsInfo(pretrained=True, source=f"file:{weights}")
    if pretrained is False:
        return model, WeightsInfo(pretrained=False, source="random")
    try:
        state, source = download_pretrained_state(name)
    except Exception as exc:  # no network, no cache, a proxy error...: all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = (f"pretrained ImageNet weights for {name} are not available ({reason}); "
               f"training from random initialisation, expect much lower accuracy. "
               f"Use --weights FILE with a local state dict, or --pretrained to make this an error.")
        if pretrained:
            raise FlowerfastError(f"pretrained ImageNet weights for {name} are not available ({reason}); "
                                  f"use --weights FILE or --no-pretrained") from None
        warnings.warn(msg, PretrainedUnavailableWarning, stacklevel=2)
        return model, WeightsInfo(pretrained=False, source="random", note=msg)
    load_state_into(model, state, "torchvision's ImageNet weights", name)
    return model, WeightsInfo(pretrained=True, source=source)
