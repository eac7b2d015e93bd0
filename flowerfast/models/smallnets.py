"""Networks of flowerfast's own, made for training from random weights on a CPU, added to timm's
registry so that every timm code path (building, the body cut, model files, export) takes them.

Why they exist: from random weights on a few CPU cores the budget, not the data, bounds the
accuracy, and ImageNet's networks are sized for ImageNet. Photos at 64 px reach timm's
``resnet10t`` after its stem as a 16 x 16 map, and on 2 cores a training step costs about four
times what ``resnet10t_050`` (the same layers with half the channels, a quarter of the FLOPs)
costs, so twice the epochs fit a budget (the data loading then costs as much as the network): on
the shared flowers, ``--time 15m --size 64 --mixup 0.2`` reaches 72.7% with it against 70.5%
for ``resnet10t`` (benchmarks in the README).

They are timm's own ``ResNet`` class with other widths, built by timm's public ``build_model_with_cfg``
as timm builds its ResNets, so the layer names and the classifier (``fc``) are timm's. They have no ImageNet
weights: :func:`has_no_weights` names them for the weights' loader. A name timm itself defines is
never overwritten: the network of that name is then timm's.
"""

from __future__ import annotations

import functools

# name -> timm ResNet arguments. resnet10t: BasicBlock, one block per stage, a three-layer
# "tiered" stem (stem_width 32: 24, 32, 64 channels), average-pool shortcuts, 64..512 channels.
NETWORKS = {
    "resnet10t_050": dict(
        layers=(1, 1, 1, 1),
        stem_width=16,
        stem_type="deep_tiered",
        avg_down=True,
        channels=(32, 64, 128, 256),
    ),
}

DESCRIPTIONS = {
    "resnet10t_050": "ResNet-10-T at half width, flowerfast's: from random weights on a CPU (no ImageNet weights)",
}

default_cfgs: dict = {}  # timm's register_model reads a module's default_cfgs: filled by register()


def has_no_weights(model_name: str) -> bool:
    """Whether ``model_name`` is one of flowerfast's networks, which have no ImageNet weights."""
    return model_name in _registered()


def register() -> None:
    """Add flowerfast's networks to timm's registry (once per process; a name timm has is left)."""
    _registered()


@functools.lru_cache(maxsize=1)
def _registered() -> frozenset[str]:
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import generate_default_cfgs, register_model

    taken = set(timm.list_models())
    names = frozenset(n for n in NETWORKS if n not in taken)
    cfg = dict(
        url="",  # no weights
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="conv1.0",
        classifier="fc",
    )
    default_cfgs.update(generate_default_cfgs({n: dict(cfg) for n in names}))
    for name in names:
        register_model(_entrypoint(name))
    return names


def _entrypoint(name: str):
    from timm.models import build_model_with_cfg
    from timm.models.resnet import BasicBlock, ResNet

    def build(pretrained: bool = False, **kwargs):
        return build_model_with_cfg(ResNet, name, pretrained, **{**NETWORKS[name], "block": BasicBlock, **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = DESCRIPTIONS[name]
    return build
