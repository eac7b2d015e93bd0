"""flowerfast's own networks (``resnet10t_050``): timm's resnet10t at half width, in timm's
registry, with no ImageNet weights. Its model file rebuilding in a fresh process is
``tests/test_pretrained.py``'s, as for timm's own networks."""

from __future__ import annotations

import warnings

import pytest
import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.models.archs import check_arch, classifier_prefixes, list_archs, resolve_arch
from flowerfast.models.pretrained import PretrainedUnavailableWarning, load_backbone, published_facts

LAYER_TYPES = ("Conv2d", "BatchNorm2d", "Linear")


def _widths(module) -> tuple:
    if hasattr(module, "out_channels"):
        return module.in_channels, module.out_channels
    if hasattr(module, "num_features"):
        return (module.num_features,)
    return module.in_features, module.out_features


def test_resnet10t_050_is_resnet10t_layer_by_layer_with_half_the_channels():
    """Pinned to timm's resnet10t: the same modules under the same names, every convolution,
    batch norm and the classifier's input at half the width (the photo's 3 channels and the
    1000 ImageNet classes stay)."""
    import timm

    ref = resolve_arch("resnet10t_050")
    assert (ref.name, ref.source, ref.model_name) == ("resnet10t_050", "timm", "resnet10t_050")
    assert check_arch("resnet10t_050") == "resnet10t_050" and "resnet10t_050" in list_archs(featured_only=True)
    half = load_backbone("resnet10t_050", pretrained=False)[0]
    full = timm.create_model("resnet10t", pretrained=False)
    half_layers, full_layers = dict(half.named_modules()), dict(full.named_modules())
    assert list(half_layers) == list(full_layers)
    checked = 0
    for name, module in full_layers.items():
        assert type(half_layers[name]) is type(module), name
        if type(module).__name__ in LAYER_TYPES:
            expected = tuple(w if w in (3, 1000) else w // 2 for w in _widths(module))
            assert _widths(half_layers[name]) == expected, name
            checked += 1
    assert checked == 29  # stem 3 + 3, four blocks of 2 + 2, three shortcuts of 1 + 1, the classifier
    assert classifier_prefixes(half, ref) == ("fc.",)
    params = sum(p.numel() for p in half.parameters())
    assert params == 1_489_252 and published_facts("resnet10t_050") == (params, None)
    assert half(torch.rand(2, 3, 64, 64)).shape == (2, 1000)


def test_it_has_no_imagenet_weights_required_is_an_error_and_the_default_says_it_is_random():
    with pytest.raises(
        FlowerfastError,
        match=r"pretrained ImageNet weights for resnet10t_050 are not available \(resnet10t_050 is "
        r"flowerfast's own network, made to train from random weights: it has none\)",
    ):
        load_backbone("resnet10t_050", pretrained=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = load_backbone("resnet10t_050")
    assert not info.pretrained and info.source == "random"
    assert any(issubclass(w.category, PretrainedUnavailableWarning) for w in caught)
