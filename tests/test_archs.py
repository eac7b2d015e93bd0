"""Architectures by name and their starting weights: ImageNet (from torch's cache), files, random."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from flowerfast.core.errors import FlowerfastError
from flowerfast.models.archs import check_arch, list_archs
from flowerfast.models.pretrained import PretrainedUnavailableWarning, imagenet_weights, load_backbone


def test_featured_architectures_come_first_and_all_torchvision_models_follow():
    names = list_archs()
    assert names[:3] == ["tf_efficientnet_lite0", "resnet152", "vgg11_bn"]
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0", "regnet_y_400mf"):
        assert name in names
    assert "vit_b_16" not in names and "googlenet" not in names


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(FlowerfastError, match=r"unknown architecture 'resnet15'; did you mean .*resnet152"):
        check_arch("resnet15")
    with pytest.raises(FlowerfastError, match="not supported"):
        check_arch("vit_b_16")


def _equal_states(a: dict, b: dict, skip: str = "\0") -> bool:
    a = {k: v for k, v in a.items() if not k.startswith(skip)}
    b = {k: v for k, v in b.items() if not k.startswith(skip)}
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    state = source.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state, "epoch": 3}, path)  # a torchvision-reference style checkpoint
    model, info = load_backbone("resnet18", weights=path)
    assert info.pretrained and info.source == f"file:{path}"
    assert _equal_states(model.state_dict(), state, skip="fc.")  # the classifier is cut off anyway


def test_weights_file_for_another_architecture_is_refused_with_its_mismatches(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(FlowerfastError, match=r"does not fit resnet18: \d+ unexpected keys"):
        load_backbone("resnet18", weights=path)
    other = torchvision.models.resnet18().state_dict()
    other["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(other, path)
    with pytest.raises(
        FlowerfastError, match=r"1 shape mismatches \(e.g. conv1.weight \(file \(64, 1, 7, 7\), model \(64, 3, 7, 7\)\)"
    ):
        load_backbone("resnet18", weights=path)


def test_weights_file_with_another_classifier_size_loads_its_body(tmp_path):
    """A backbone fine-tuned elsewhere on 10 classes: its classifier is cut off anyway."""
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "tuned.pth"
    torch.save(source.state_dict(), path)
    model, _ = load_backbone("resnet18", weights=path)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_weights_file_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"fc.weight": _Exploit(marker)}))
    with pytest.raises(FlowerfastError, match="cannot read weights file"):
        load_backbone("resnet18", weights=path)
    assert not marker.exists()


def test_imagenet_weights_are_loaded_from_torchs_cache(tmp_path, monkeypatch):
    """The real torchvision download path, served from a cache file as a machine without internet has it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    url_name = imagenet_weights("resnet18").url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / url_name)
    model, info = load_backbone("resnet18", pretrained=True)
    assert info.pretrained and info.source == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    assert _equal_states(model.state_dict(), state)


def test_without_network_or_cache_training_falls_back_loudly_or_fails_when_required(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(
        "flowerfast.models.pretrained.torchvision_state", lambda ref: (_ for _ in ()).throw(OSError("no network"))
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = load_backbone("resnet18")
    assert not info.pretrained and info.source == "random"
    assert any(issubclass(w.category, PretrainedUnavailableWarning) and "no network" in str(w.message) for w in caught)
    with pytest.raises(FlowerfastError, match="not available \\(no network\\); use weights=FILE or pretrained=False"):
        load_backbone("resnet18", pretrained=True)
