"""Plain-torch feature bodies of the ResNet and VGG families, so a saved model loads fast.

Why: importing torchvision takes seconds (``torchvision.ops`` imports ``torch._dynamo``), far
longer than everything else ``flowerfast predict`` does on a photo. Rebuilding a saved model only
needs the layout of its feature body, and for the families the flower job uses most (ResNet,
including ResNeXt and wide ResNets, and VGG) that layout is short enough to state here.

The modules, their order and their parameter names are exactly torchvision's, so the same weights
load into either; ``tests/test_nets.py`` checks every name in :data:`BODIES` against torchvision,
layer by layer, and the outputs of one member of each kind of block. Other architectures are
built with torchvision (see :func:`flowerfast.models.classifier.build_classifier`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch.nn as nn


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18 and -34)."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand, and a shortcut (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def resnet_body(block: type, layers: list[int], groups: int = 1, base_width: int = 64) -> list[nn.Module]:
    """torchvision ResNet's children up to ``layer4``: stem, max pool, four stages."""
    stem = [
        nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    stages, cin = [], 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        stride = 1 if i == 0 else 2
        cout = planes * block.expansion
        downsample = None
        if stride != 1 or cin != cout:
            downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        stage = [block(cin, planes, stride, downsample, groups, base_width)]
        stage += [block(cout, planes, groups=groups, base_width=base_width) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*stage))
        cin = cout
    return stem + stages


VGG_LAYOUTS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg_body(depth: int, batch_norm: bool) -> list[nn.Module]:
    """torchvision VGG's ``features``: 3x3 convolutions (with batch norm for ``_bn``) and max pools."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG_LAYOUTS[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(cin, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        cin = v
    return [nn.Sequential(*layers)]


BODIES: dict[str, Callable[[], list[nn.Module]]] = {
    "resnet18": partial(resnet_body, BasicBlock, [2, 2, 2, 2]),
    "resnet34": partial(resnet_body, BasicBlock, [3, 4, 6, 3]),
    "resnet50": partial(resnet_body, Bottleneck, [3, 4, 6, 3]),
    "resnet101": partial(resnet_body, Bottleneck, [3, 4, 23, 3]),
    "resnet152": partial(resnet_body, Bottleneck, [3, 8, 36, 3]),
    "resnext50_32x4d": partial(resnet_body, Bottleneck, [3, 4, 6, 3], groups=32, base_width=4),
    "resnext101_32x8d": partial(resnet_body, Bottleneck, [3, 4, 23, 3], groups=32, base_width=8),
    "resnext101_64x4d": partial(resnet_body, Bottleneck, [3, 4, 23, 3], groups=64, base_width=4),
    "wide_resnet50_2": partial(resnet_body, Bottleneck, [3, 4, 6, 3], base_width=128),
    "wide_resnet101_2": partial(resnet_body, Bottleneck, [3, 4, 23, 3], base_width=128),
    **{f"vgg{d}{bn}": partial(vgg_body, d, bool(bn)) for d in VGG_LAYOUTS for bn in ("", "_bn")},
}


def build_body(arch: str, cut: int) -> Optional[nn.Sequential]:
    """The first ``cut`` children of torchvision's ``arch`` as a ``Sequential``; ``None`` if not known here.

    A ``cut`` other than the whole body (the saved model was cut elsewhere) also gives ``None``,
    so the caller falls back to torchvision rather than guess.
    """
    make = BODIES.get(arch)
    if make is None:
        return None
    children = make()
    if cut != len(children):
        return None
    return nn.Sequential(*children)


class TimmBody(nn.Module):
    """A timm network's feature layers: its ``forward_features``, the map before pooling.

    Why a wrapper rather than a cut of its children, as for torchvision's models: timm computes
    a model's features in ``forward_features``, which need not be its children in order (stems,
    norms and reshapes differ by family); that method is the one layout every timm model promises.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)
