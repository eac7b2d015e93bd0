"""The classifier network: the same layout as fastai's vision_learner, saved and rebuilt without pickle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from flowerfast.core.errors import FlowerfastError
from flowerfast.models.archs import body_cut
from flowerfast.models.classifier import ModelSpec, assemble_classifier, build_classifier, load_classifier, save_model


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
def test_body_cut_matches_fastais_own_cut(arch):
    from fastai.vision.learner import model_meta

    backbone = torchvision.models.get_model(arch)
    fastai_cut = model_meta[getattr(torchvision.models, arch)]["cut"]
    assert body_cut(backbone) == len(list(backbone.children())) + fastai_cut


@pytest.mark.parametrize(
    "arch, features",
    [("mobilenet_v3_small", 576), ("shufflenet_v2_x0_5", 1024), ("squeezenet1_0", 512), ("efficientnet_b0", 1280)],
)
def test_other_torchvision_families_yield_a_feature_map(arch, features):
    model, _, cut, nf = assemble_classifier(torchvision.models.get_model(arch), arch, 3, size=64)
    assert nf == features
    model.eval()
    assert tuple(model(torch.zeros(2, 3, 64, 64)).shape) == (2, 3)


def test_save_and_rebuild_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model, _, cut, nf = assemble_classifier(torchvision.models.resnet18(), "resnet18", 5, size=64)
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
    ours, _, cut, nf = assemble_classifier(backbone, "resnet18", 4)
    fastai_model = create_vision_model(lambda **kw: backbone, 4, pretrained=False, cut=cut, custom_head=ours[1])
    rebuilt = build_classifier(ModelSpec(arch="resnet18", classes=list("abcd"), size=64, cut=cut, num_features=nf))
    assert {k: v.shape for k, v in fastai_model.state_dict().items()} == {
        k: v.shape for k, v in rebuilt.state_dict().items()
    }


def test_pickle_model_files_are_refused(tmp_path):
    (tmp_path / "export.pkl").write_bytes(b"anything")
    with pytest.raises(FlowerfastError, match="pickle-based file"):
        load_classifier(tmp_path / "export.pkl")
    with pytest.raises(FlowerfastError, match="no model found"):
        load_classifier(tmp_path)


@pytest.fixture()
def saved(tmp_path):
    """A small saved model: its weights file, JSON file and an input to check outputs on."""
    torch.manual_seed(0)
    model, _, cut, nf = assemble_classifier(torchvision.models.resnet18(), "resnet18", 3, size=32)
    spec = ModelSpec(arch="resnet18", classes=["a", "b", "c"], size=32, cut=cut, num_features=nf)
    weights, meta = save_model(model, spec, tmp_path / "best")
    return weights, meta, model.eval()


def test_the_weights_file_alone_is_a_complete_model(saved):
    """A kill between writing best.safetensors and best.json never leaves a model that cannot load:
    the spec travels inside the safetensors metadata, and a stale JSON (an earlier epoch's model of
    the same run: another checksum, the same network and classes) does not stop it loading."""
    weights, meta, model = saved
    stale = json.loads(meta.read_text())
    meta.unlink()
    loaded, spec = load_classifier(weights)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x)) and spec.classes == ["a", "b", "c"]
    meta.write_text(json.dumps({**stale, "sha256": "0" * 64}))  # an earlier epoch's JSON
    assert load_classifier(weights)[1].classes == ["a", "b", "c"]


def test_the_weights_checksum_is_recorded_and_a_damaged_file_refused(saved):
    from safetensors import safe_open

    from flowerfast.models.classifier import weights_sha256

    weights, meta, model = saved
    with safe_open(str(weights), framework="pt") as fh:
        recorded = fh.metadata()["flowerfast_sha256"]
    assert recorded == json.loads(meta.read_text())["sha256"] == weights_sha256(model.state_dict())
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float of the data becomes NaN, the header intact
    weights.write_bytes(bytes(data))
    with pytest.raises(FlowerfastError) as caught:
        load_classifier(weights)
    assert str(caught.value) == (
        f"{weights} is damaged: its weights do not match the checksum saved with them; use another copy or train again"
    )


def test_random_bytes_in_a_weights_file_are_one_clear_error(saved):
    import os

    weights, _, _ = saved
    weights.write_bytes(os.urandom(4096))
    with pytest.raises(FlowerfastError, match=f"^cannot read model weights {weights}: "):
        load_classifier(weights)


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(saved):
    """kill -9 during a save leaves ``.best.safetensors.<random>.tmp``; the next save of that
    model removes it, and no other file's temporary files are touched."""
    weights, meta, model = saved
    leftover = weights.with_name(".best.safetensors.k1ll3d.tmp")
    leftover.write_bytes(b"x" * 1000)
    other = weights.with_name(".final.safetensors.k1ll3d.tmp")
    other.write_bytes(b"y")
    spec = load_classifier(weights)[1]
    save_model(model, spec, weights)
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in weights.parent.iterdir()) == [
        ".final.safetensors.k1ll3d.tmp",
        "best.json",
        "best.safetensors",
    ]


def test_a_write_still_going_on_in_another_process_keeps_its_temporary_file(saved):
    """Only the temporary files of writers that are gone are removed: another live process (here
    the one that started the tests) writing the same file at the same time is left alone."""
    import os

    weights, _, model = saved
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = weights.with_name(f".best.safetensors.{dead.stdout.strip()}.abc.tmp")
    running = weights.with_name(f".best.safetensors.{os.getppid()}.abc.tmp")
    for path in (gone, running):
        path.write_bytes(b"x")
    save_model(model, load_classifier(weights)[1], weights)
    assert not gone.exists() and running.exists()


def test_a_description_beside_the_weights_that_contradicts_the_one_inside_is_one_line(tmp_path):
    """Classes renamed by hand in best.json: the weights file's own description is what the
    network answers with, so the JSON would mislead; it is refused, naming the field."""
    torch.manual_seed(0)
    model, _, cut, nf = assemble_classifier(torchvision.models.resnet18(), "resnet18", 3, size=32)
    spec = ModelSpec(arch="resnet18", classes=["a", "b", "c"], size=32, cut=cut, num_features=nf)
    weights, meta = save_model(model, spec, tmp_path / "m")
    load_classifier(weights)  # as written: the two agree
    edited = json.loads(meta.read_text())
    edited["classes"] = ["c", "b", "a"]
    meta.write_text(json.dumps(edited))
    with pytest.raises(
        FlowerfastError,
        match=r"m.json contradicts the description inside .*m.safetensors: classes is "
        r"\['c', 'b', 'a'\] there and \['a', 'b', 'c'\] inside \(1 field",
    ):
        load_classifier(weights)
    meta.unlink()  # the weights file alone is complete
    _, alone = load_classifier(weights)
    assert alone.classes == ["a", "b", "c"]
