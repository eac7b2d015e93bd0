"""``flowerfast predict`` and ``flowerfast.load_model``: same answers from the CLI, the API and
fastai's own validation pipeline; bad input refused with a clear message; pickles never opened."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import flowerfast
from flowerfast.cli import app
from flowerfast.data import default_data_dir

SAMPLE = default_data_dir()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_json_equals_python_api(run_dir):
    result = invoke("predict", run_dir, SAMPLE / "daisy", SAMPLE / "rose", "--json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    files = sorted((SAMPLE / "daisy").glob("*.jpg")) + sorted((SAMPLE / "rose").glob("*.jpg"))
    assert [Path(p["path"]) for p in cli] == files
    api = flowerfast.load_model(run_dir, device="cpu").predict(files, top_k=3, bs=7)
    assert len(api) == 80
    for c, a in zip(cli, api):
        assert c["label"] == a.label and c["error"] is None
        assert c["probability"] == pytest.approx(a.probability, abs=1e-6)
        assert [t["label"] for t in c["top_k"]] == [lbl for lbl, _ in a.top_k]
        assert a.top_k[0][1] >= a.top_k[1][1] >= a.top_k[2][1]


def test_predictions_equal_fastai_validation(run_dir):
    """The training run's valid_predictions.csv comes from fastai's validation DataLoader: our
    preprocessing must reproduce it, and the preprocessed tensors must equal fastai's batch."""
    from flowerfast.data import build_dataloaders
    from flowerfast.runfolder import read_split_csv
    from flowerfast.inference import normalise, preprocess

    model = flowerfast.load_model(run_dir, device="cpu")
    rows = list(csv.DictReader(open(run_dir / "valid_predictions.csv")))
    paths = [SAMPLE / r["file"] for r in rows]
    _, probs, errors = model.probabilities(paths, bs=16)
    assert not errors
    fastai_probs = torch.tensor([[float(r[f"p_{c}"]) for c in model.classes] for r in rows])
    assert torch.allclose(probs, fastai_probs, atol=2e-6)

    split = read_split_csv(run_dir / "split.csv", SAMPLE)
    dls = build_dataloaders(split, model.classes, size=model.spec.size, bs=8)
    xb, _ = next(iter(dls.valid))
    valid_files = [Path(item[0]) for item in dls.valid.items[:8]]
    ours = normalise(torch.stack([preprocess(p, model.spec.size) for p in valid_files]), model.spec.mean, model.spec.std)
    assert torch.allclose(xb.cpu().as_subclass(torch.Tensor), ours, atol=1e-5)


def test_unreadable_files_listed_others_predicted(run_dir, tmp_path):
    good = sorted((SAMPLE / "tulip").glob("*.jpg"))[:2]
    for p in good:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    shutil.copy(good[0], tmp_path / ".hidden.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    result = invoke("predict", run_dir, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    out = {Path(p["path"]).name: p for p in json.loads(result.stdout)}
    assert set(out) == {"broken.jpg", good[0].name, good[1].name}
    assert "cannot identify image" in out["broken.jpg"]["error"] and out["broken.jpg"]["label"] is None
    assert out[good[0].name]["label"] in flowerfast.load_model(run_dir).classes
    assert "broken.jpg" in result.stderr and "unreadable" in result.stderr


def test_table_glob_and_csv_output(run_dir, tmp_path):
    result = invoke("predict", run_dir, SAMPLE / "sunflower" / "1*.jpg", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "predictions" in result.stdout and "top 2" in result.stdout
    target = tmp_path / "preds.csv"
    result = invoke("predict", run_dir, SAMPLE / "sunflower" / "1*.jpg", "--csv", "--top-k", "2", "--output", target)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(target)))
    assert rows and all(Path(r["path"]).name.startswith("1") for r in rows)
    assert set(rows[0]) == {"path", "label", "probability", "label_2", "probability_2", "error"}
    assert float(rows[0]["probability"]) >= float(rows[0]["probability_2"])


@pytest.mark.parametrize("args, message", [
    (["predict", "{tmp}/nope", "{sample}/daisy"], "model not found"),
    (["predict", "{run}", "{tmp}/missing.jpg"], "no such file or folder"),
    (["predict", "{run}", "{tmp}/*.jpg"], "no such file or folder"),
    (["predict", "{run}", "{sample}/daisy", "--top-k", "0"], "--top-k must be between 1 and 5"),
    (["predict", "{run}", "{sample}/daisy", "--top-k", "6"], "--top-k must be between 1 and 5"),
    (["predict", "{run}", "{sample}/daisy", "--json", "--csv"], "choose one of --json and --csv"),
    (["predict", "{run}", "{sample}/daisy", "--device", "tpu"], "unknown device"),
])
def test_bad_input_is_one_clear_line(run_dir, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, sample=SAMPLE, run=run_dir) for a in args]
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_never_opened(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "export.pkl"
    evil.write_bytes(pickle.dumps(_Evil(marker)))
    for cmd in (["predict", evil, SAMPLE / "daisy"], ["evaluate", evil, SAMPLE], ["export", evil]):
        result = invoke(*cmd)
        assert result.exit_code != 0
        assert "--trust-pickle" in result.stderr and "arbitrary code" in result.stderr
    with pytest.raises(flowerfast.FlowerfastError, match="trust"):
        flowerfast.load_model(evil)
    assert not marker.exists()


def test_predict_imports_neither_fastai_nor_torchvision(run_dir):
    """Start-up: both take seconds to import, and a resnet rebuilt for prediction needs neither."""
    code = (f"import sys; from typer.testing import CliRunner; from flowerfast.cli import app; "
            f"r = CliRunner().invoke(app, ['predict', {str(run_dir)!r}, {str(SAMPLE / 'daisy')!r}, '--json']); "
            f"assert r.exit_code == 0, r.output; print(sorted(m for m in ('fastai', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def fastai_export(tmp_path_factory) -> Path:
    """A learner made with fastai's own API and its presizing recipe (Resize crop to 60px per item,
    then a batch-level resize to 32px and Normalize): not flowerfast's transforms. Exported."""
    from fastai.vision.all import ImageDataLoaders, Normalize, Resize, aug_transforms, imagenet_stats, resnet18, vision_learner

    root = tmp_path_factory.mktemp("fastai")
    dls = ImageDataLoaders.from_folder(SAMPLE, valid_pct=0.2, seed=0, item_tfms=Resize(60), bs=8, num_workers=0,
                                       batch_tfms=[*aug_transforms(size=32), Normalize.from_stats(*imagenet_stats)])
    learn = vision_learner(dls, resnet18, pretrained=False)
    learn.export(root / "export.pkl")
    return root / "export.pkl"


def test_trusted_fastai_export_predicts_like_fastai(fastai_export, tmp_path):
    from fastai.learner import load_learner
    from PIL import Image

    wide = tmp_path / "wide.jpg"  # not square, so fastai's crop differs from a squash
    with Image.open(sorted((SAMPLE / "rose").glob("*.jpg"))[0]) as im:
        im.crop((0, 0, 128, 80)).save(wide)
    photos = sorted((SAMPLE / "daisy").glob("*.jpg"))[:5] + [wide]

    result = invoke("predict", fastai_export, *photos, "--json", "--top-k", "5")
    assert result.exit_code != 0 and "--trust-pickle" in result.stderr
    result = invoke("predict", fastai_export, *photos, "--json", "--top-k", "5", "--trust-pickle")
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)

    learn = load_learner(fastai_export, cpu=True)
    for photo, pred in zip(photos, ours):
        label, _, probs = learn.predict(photo)
        assert pred["label"] == str(label)
        got = {t["label"]: t["probability"] for t in pred["top_k"]}
        expected = dict(zip(map(str, learn.dls.vocab), probs.tolist()))
        assert got == pytest.approx(expected, abs=1e-5)

    api = flowerfast.load_model(fastai_export, device="cpu", trust_pickle=True)
    assert api.spec.size == 32 and api.spec.mean == pytest.approx([0.485, 0.456, 0.406])
    with_workers = api.predict(photos, workers=2, bs=2)  # the transforms also work in worker processes
    assert [p.label for p in with_workers] == [p["label"] for p in ours]
    assert [p.probability for p in with_workers] == pytest.approx([p["probability"] for p in ours], abs=1e-6)


def test_trusted_fastai_export_exports_with_its_own_resize(fastai_export, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "fa.onnx"
    result = invoke("export", fastai_export, "--format", "onnx", "--out", out, "--trust-pickle")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "fa.onnx.json").read_text())
    assert info["size"] == 32 and "resize" not in info
    assert any("Resize" in t and "crop" in t for t in info["fastai_item_transforms"])
    assert any("Normalize" in t for t in info["fastai_batch_transforms"])


def test_trusted_grayscale_fastai_export(tmp_path):
    """A fastai export of a one-channel (PILImageBW) model: opened in its own colour mode."""
    from fastai.learner import load_learner
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, PILImageBW, RandomSplitter, Resize,
                                   get_image_files, parent_label, resnet18, vision_learner)

    block = DataBlock(blocks=(ImageBlock(PILImageBW), CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      item_tfms=Resize(40), splitter=RandomSplitter(seed=0))
    learn = vision_learner(block.dataloaders(SAMPLE, bs=8, num_workers=0), resnet18, pretrained=False, n_in=1)
    learn.export(tmp_path / "bw.pkl")
    model = flowerfast.load_model(tmp_path / "bw.pkl", device="cpu", trust_pickle=True)
    assert model.spec.size == 40 and len(model.spec.mean) == 1
    photos = sorted((SAMPLE / "tulip").glob("*.jpg"))[:3]
    reference = load_learner(tmp_path / "bw.pkl", cpu=True)
    for photo, pred in zip(photos, model.predict(photos, top_k=5)):
        label, _, probs = reference.predict(photo)
        assert pred.label == str(label)
        assert dict(pred.top_k) == pytest.approx(dict(zip(map(str, reference.dls.vocab), probs.tolist())), abs=1e-5)


def test_folding_batch_norms_keeps_the_outputs(run_dir):
    import copy

    from flowerfast.inference import fold_batch_norms, normalise, preprocess
    from flowerfast.model import load_classifier
    from flowerfast.nets import build_body

    network, spec = load_classifier(run_dir)
    vgg = build_body("vgg11_bn", 1).eval()
    for m in vgg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    files = sorted((SAMPLE / "rose").glob("*.jpg"))[:8]
    x = normalise(torch.stack([preprocess(p, spec.size) for p in files]), spec.mean, spec.std)
    for net in (network.eval(), vgg):
        folded = fold_batch_norms(copy.deepcopy(net))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        with torch.no_grad():
            expected, got = net(x), folded(x)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), float((got - expected).abs().max())
    head_norms = [m for m in fold_batch_norms(copy.deepcopy(network)).modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(head_norms) == 2  # the head's batch norms follow no convolution: kept
    training = fold_batch_norms(copy.deepcopy(network).train())  # statistics not fixed yet: nothing folded
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in training.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
