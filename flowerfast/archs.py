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
from .weights import load_state_into, read_state_dict

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


# --- the body cut: feature layers kept, ImageNet classifier dropped ----------------------------

def _is_classifier_tail(module) -> bool:
    """Layers at the end of a torchvision model that belong to its ImageNet classifier."""
    import torch.nn as nn

    tail_types = (nn.Linear, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d)
    if isinstance(module, tail_types):
        return True
    if isinstance(module, nn.Sequential):
        parts = list(module.children())
        return any(isinstance(p, nn.Linear) for p in parts) or (
            bool(parts) and isinstance(parts[-1], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)))
    return False


def body_cut(backbone) -> int:
    """How many top-level children form the feature body: all but the classifier tail.

    For ResNets and VGGs this is fastai's own cut (-2: drop pooling and classifier).
    """
    children = list(backbone.children())
    cut = len(children)
    while cut > 0 and _is_classifier_tail(children[cut - 1]):
        cut -= 1
    if cut == 0:
        raise FlowerfastError(f"cannot find the feature layers of {type(backbone).__name__}")
    return cut


def cut_body(backbone, cut: int):
    """The first ``cut`` top-level children of ``backbone``: its feature body."""
    import torch.nn as nn

    return nn.Sequential(*list(backbone.children())[:cut])


def classifier_prefixes(model) -> tuple[str, ...]:
    """State-dict prefixes of the layers that the body cut drops (the ImageNet classifier)."""
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
