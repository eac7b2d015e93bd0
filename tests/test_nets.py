"""The plain-torch ResNet and VGG bodies in ``flowerfast.models.nets`` are torchvision's, weight for weight."""

from __future__ import annotations

import pytest
import torch
import torchvision

from flowerfast.models.archs import body_cut, cut_body
from flowerfast.models.nets import BODIES, build_body


def torchvision_body(arch: str, device: str = "cpu"):
    with torch.device(device):  # "meta" builds the layout without initialising any weights
        backbone = torchvision.models.get_model(arch, weights=None)
    cut = body_cut(backbone)
    return cut_body(backbone, cut), cut


def test_every_family_member_of_torchvision_is_covered_or_known():
    listed = set(torchvision.models.list_models(module=torchvision.models))
    families = {n for n in listed if n.startswith(("resnet", "resnext", "wide_resnet", "vgg"))}
    assert families == set(BODIES)


@pytest.mark.parametrize("arch", sorted(BODIES))
def test_same_layers_and_parameter_names(arch):
    expected, cut = torchvision_body(arch, device="meta")
    with torch.device("meta"):
        ours = build_body(arch, cut)
    assert ours is not None
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in expected.state_dict().items()
    ]
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in expected.modules()]
    # every layer's settings too (kernel sizes, strides, padding, groups), layer by layer
    assert [repr(m) for m in ours.modules() if not list(m.children())] == [
        repr(m) for m in expected.modules() if not list(m.children())
    ]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "vgg11", "vgg11_bn"])
def test_same_outputs_with_the_same_weights(arch):
    torch.manual_seed(0)
    expected, cut = torchvision_body(arch)
    for m in expected.modules():  # non-trivial batch-norm statistics, so they matter to the output
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = build_body(arch, cut)
    ours.load_state_dict(expected.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), expected.eval()(x))


def test_unknown_arch_or_other_cut_falls_back_to_torchvision():
    assert build_body("efficientnet_b0", 1) is None
    assert build_body("resnet18", 7) is None
