"""The classifier network: the same layout as fastai's vision_learner, saved and rebuilt without pickle."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from flowerfast.errors import FlowerfastError
from flowerfast.archs import body_cut
from flowerfast.model import (ModelSpec, assemble_classifier, build_classifier, load_classifier,
                              save_model)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
def test_body_cut_matches_fastais_own_cut(arch):
    from fastai.vision.learner import model_meta

    backbone = torchvision.models.get_model(arch)
    fastai_cut = model_meta[getattr(torchvision.models, arch)]["cut"]
    assert body_cut(backbone) == len(list(backbone.children())) + fastai_cut


@pytest.mark.parametrize("arch, features", [("mobilenet_v3_small", 576), ("shufflenet_v2_x0_5", 1024),
                                             ("squeezenet1_0", 512), ("efficientnet_b0", 1280)])
def test_other_torchvision_families_yield_a_feature_map(arch, features):
    model, cut, nf = assemble_classifier(torchvision.models.get_model(arch), arch, 3, size=64)
    assert nf == features
    model.eval()
    assert tuple(model(torch.zeros(2, 3, 64, 64)).shape) == (2, 3)


def test_save_and_rebuild_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model, cut, nf = assemble_classifier(torchvision.models.resnet18(), "resnet18", 5, size=64)
    spec = ModelSpec(arch="resnet18", classes=list("abcde"), size=64, cut=cut, num_features=nf)
    weights, meta = save_model(model, spec, tmp_path / "m")
    assert weights.name == "m.safetensors" and meta.name == "m.json"
    saved = json.loads(meta.read_text())
    assert saved["classes"] == list("abcde") and saved["size"] == 64 and saved["versions"]["torch"]
    assert saved["mean"] == [0.485, 0.456, 0.406]
    loaded, loaded_spec = load_classifier(tmp_path / "m.safetensors")
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    assert torch.allclose(model(x), loaded(x))
    assert loaded_spec.classes == list("abcde")


def test_model_built_by_fastai_has_the_same_layout_as_the_plain_rebuild():
    from fastai.vision.learner import create_vision_model

    backbone = torchvision.models.resnet18()
    ours, cut, nf = assemble_classifier(backbone, "resnet18", 4)
    fastai_model = create_vision_model(lambda **kw: backbone, 4, pretrained=False, cut=cut, custom_head=ours[1])
    rebuilt = build_classifier(ModelSpec(arch="resnet18", classes=list("abcd"), size=64, cut=cut, num_features=nf))
    assert {k: v.shape for k, v in fastai_model.state_dict().items()} == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_pickle_model_files_are_refused(tmp_path):
    (tmp_path / "export.pkl").write_bytes(b"anything")
    with pytest.raises(FlowerfastError, match="pickle-based file"):
        load_classifier(tmp_path / "export.pkl")
    with pytest.raises(FlowerfastError, match="no model found"):
        load_classifier(tmp_path)
