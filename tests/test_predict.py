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
from flowerfast.data.folders import default_data_dir

SAMPLE = default_data_dir()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# Probabilities of the same photos computed in batches of different shapes agree only to float32
# rounding: oneDNN (and cuDNN) pick different kernels, with different summation orders, for different
# batch shapes, so a probability can move by a few 1e-6 (0.8508832 vs 0.8508845 seen). 1e-4 holds
# on any machine; labels must agree except between classes closer than that (see assert_same_top).
BATCH_SHAPE_TOL = 1e-4


def assert_same_top(label: str, reference: dict[str, float]) -> None:
    """``label`` is the most likely class of ``reference`` up to what batch shapes can change: each
    probability may move by BATCH_SHAPE_TOL, so two classes closer than twice that may swap."""
    assert label in reference and reference[label] >= max(reference.values()) - 2 * BATCH_SHAPE_TOL, (label, reference)


def test_cli_json_equals_python_api(run_dir):
    result = invoke("predict", run_dir, SAMPLE / "daisy", SAMPLE / "rose", "--json", "--top-k", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    files = sorted((SAMPLE / "daisy").glob("*.jpg")) + sorted((SAMPLE / "rose").glob("*.jpg"))
    assert [Path(p["path"]) for p in cli] == files
    api = flowerfast.load_model(run_dir, device="cpu").predict(files, top_k=3, bs=7)  # the CLI's batches: 64
    assert len(api) == 80
    for c, a in zip(cli, api):
        assert c["error"] is None and a.ok
        assert c["probability"] == pytest.approx(a.probability, abs=BATCH_SHAPE_TOL)
        assert a.top_k[0][1] >= a.top_k[1][1] >= a.top_k[2][1]
        got = {t["class"]: t["probability"] for t in c["top_k"]}
        for label, p in a.top_k:
            if label in got:
                assert got[label] == pytest.approx(p, abs=BATCH_SHAPE_TOL)
        assert_same_top(c["predicted"], dict(a.top_k))
        # each side is within the tolerance of the other, so only a gap of twice that cannot be reordered
        if all(a.top_k[i][1] - a.top_k[i + 1][1] > 2 * BATCH_SHAPE_TOL for i in range(2)):
            assert [t["class"] for t in c["top_k"]] == [lbl for lbl, _ in a.top_k]


# Folded batch norms and channels-last change the order of float32 operations, so load_model's
# probabilities differ from the plain NCHW network's by float32 rounding through a resnet: ~1e-5
# seen, 1e-4 allowed. valid_predictions.csv rounds to 6 decimals (5e-7) on top of that.
FOLDING_TOL = 1e-4
CSV_ROUNDING = 5e-7


def test_predictions_equal_fastai_validation(run_dir):
    """Our preprocessing reproduces fastai's validation pipeline: the preprocessed tensors equal
    fastai's batch, and load_model's probabilities equal the training run's network on fastai's
    validation DataLoader (computed here, unrounded), which valid_predictions.csv records."""
    from flowerfast.data.loaders import build_dataloaders
    from flowerfast.infer.preprocessing import normalise, preprocess
    from flowerfast.models.classifier import load_classifier
    from flowerfast.runs.folder import RunFolder

    cpu = torch.device("cpu")
    folder = RunFolder(run_dir)
    model = flowerfast.load_model(run_dir, device="cpu")
    dls = build_dataloaders(folder.read_split(SAMPLE), model.classes, size=model.spec.size, bs=8, device=cpu)
    valid_files = [Path(item[0]) for item in dls.valid.items]
    assert valid_files

    network, spec = load_classifier(run_dir)  # as fastai validates: eval mode, plain NCHW, nothing folded
    network.eval()
    batches = []
    with torch.no_grad():  # at the temperature the run fitted when it ended
        for xb, _ in dls.valid:
            batches.append(torch.softmax(network(xb.as_subclass(torch.Tensor)).float() / spec.temperature, dim=-1))
    fastai_probs = torch.cat(batches)
    assert len(fastai_probs) == len(valid_files)

    paths, probs, errors = model.probabilities(valid_files, bs=16)
    assert not errors and paths == valid_files
    diff = float((probs - fastai_probs).abs().max())
    assert diff <= FOLDING_TOL, diff

    # The CSV was written by the training run on its own device: on a CPU in float32, it is the
    # values above rounded to 6 decimals (batches of another size: FOLDING_TOL covers it too); on a
    # GPU (TF32 convolutions, mixed precision) only to half-precision rounding.
    config = folder.read_config()
    same_arithmetic = config.device == "cpu" and not config.mixed_precision
    csv_tol = CSV_ROUNDING + (FOLDING_TOL if same_arithmetic else 1e-2)
    recorded = {(SAMPLE / p.file).resolve(): p for p in folder.read_valid_predictions()}
    assert set(recorded) == {f.resolve() for f in valid_files}
    csv_probs = torch.tensor([[recorded[f.resolve()].probabilities[c] for c in model.classes] for f in valid_files])
    diff = float((csv_probs - fastai_probs).abs().max())
    assert diff <= csv_tol, diff

    xb, _ = next(iter(dls.valid))
    first = valid_files[: len(xb)]
    ours = normalise(torch.stack([preprocess(p, model.spec.size) for p in first]), model.spec.mean, model.spec.std)
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
    assert "cannot identify image" in out["broken.jpg"]["error"] and out["broken.jpg"]["predicted"] is None
    assert out[good[0].name]["predicted"] in flowerfast.load_model(run_dir).classes
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
    assert set(rows[0]) == {"path", "predicted", "probability", "predicted_2", "probability_2", "unknown", "error"}
    assert {r["unknown"] for r in rows} == {"false"}  # no --min-confidence: every photo answered
    assert float(rows[0]["probability"]) >= float(rows[0]["probability_2"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{tmp}/nope", "{sample}/daisy"], "model not found"),
        (["predict", "{run}", "{tmp}/missing.jpg"], "no such file or folder"),
        (["predict", "{run}", "{tmp}/*.jpg"], "no such file or folder"),
        (["predict", "{run}", "{sample}/daisy", "--top-k", "0"], "--top-k must be between 1 and 5"),
        (["predict", "{run}", "{sample}/daisy", "--top-k", "6"], "--top-k must be between 1 and 5"),
        (["predict", "{run}", "{sample}/daisy", "--json", "--csv"], "choose one of --json and --csv"),
        (["predict", "{run}", "{sample}/daisy", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
    ],
)
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


@pytest.mark.parametrize("onnx_installed", [True, False])
def test_malicious_pickle_is_never_opened(tmp_path, monkeypatch, onnx_installed):
    """Refused with the pickle message first, whatever else is missing (here: onnx for export)."""
    if not onnx_installed:
        monkeypatch.setitem(sys.modules, "onnx", None)  # None in sys.modules: "import onnx" fails
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    marker = tmp_path / "pwned"
    evil = tmp_path / "export.pkl"
    evil.write_bytes(pickle.dumps(_Evil(marker)))
    for cmd in (
        ["predict", evil, SAMPLE / "daisy"],
        ["evaluate", evil, SAMPLE],
        ["export", evil],
        ["export", evil, "--format", "torchscript"],
    ):
        result = invoke(*cmd)
        assert result.exit_code != 0
        assert "--trust-pickle" in result.stderr and "arbitrary code" in result.stderr, result.stderr
    with pytest.raises(flowerfast.FlowerfastError, match="trust"):
        flowerfast.load_model(evil)
    with pytest.raises(flowerfast.FlowerfastError, match="arbitrary code"):
        flowerfast.export_model(evil, format="onnx")
    assert not marker.exists()


def test_predict_imports_neither_fastai_nor_torchvision(run_dir):
    """Start-up: both take seconds to import, and a resnet rebuilt for prediction needs neither."""
    code = (
        f"import sys; from typer.testing import CliRunner; from flowerfast.cli import app; "
        f"r = CliRunner().invoke(app, ['predict', {str(run_dir)!r}, {str(SAMPLE / 'daisy')!r}, '--json']); "
        f"assert r.exit_code == 0, r.output; print(sorted(m for m in ('fastai', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_latency_is_measured_on_the_training_device_and_reused(run_dir, tmp_path):
    from flowerfast.core.files import write_json
    from flowerfast.hardware.devices import best_device_name
    from flowerfast.infer.latency import default_device, measure_inference
    from flowerfast.runs.folder import RunFolder

    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(run_dir / name, run / name)
    folder = RunFolder(run)
    config = RunFolder(run_dir).read_config()
    write_json(run / "config.json", {**config.to_dict(), "device": "cpu"})
    assert default_device(run) == "cpu"
    first = measure_inference(run, repeats=1)
    assert set(first) == {
        "device",
        "batch_size",
        "layout",
        "precision",
        "image_size",
        "latency_ms_per_image",
        "latency_ms_min",
        "latency_ms_max",
        "single_repeats",
        "images_per_second",
        "images_per_second_min",
        "images_per_second_max",
        "batch_repeats",
        "threads",
        "load_average",
        "cpu_count",
    }
    assert first["latency_ms_min"] <= first["latency_ms_per_image"] <= first["latency_ms_max"]
    assert first["images_per_second_min"] <= first["images_per_second"] <= first["images_per_second_max"]
    assert first["single_repeats"] == 3 and first["batch_repeats"] == 1
    assert first["device"] == "cpu" and first["layout"] == str(torch.channels_last) and first["image_size"] == 32
    assert first["latency_ms_per_image"] > 0 and first["images_per_second"] > 0 and first["threads"] >= 1
    assert folder.read_latency() == first
    assert measure_inference(run, repeats=1) == first  # same device, batch size and layout: reused
    assert measure_inference(run, batch_size=2, repeats=1)["batch_size"] == 2  # another batch size: measured
    write_json(run / "config.json", {**config.to_dict(), "device": "cuda:99"})  # trained on a device this machine lacks
    assert default_device(run) == best_device_name()
    (run / "config.json").unlink()
    assert default_device(run) == best_device_name()


INFERENCE_MODULES = (
    "infer.predict",
    "infer.preprocessing",
    "infer.optimize",
    "infer.latency",
    "infer.evaluate",
    "export.exporter",
    "export.formats.onnx",
    "export.formats.torchscript",
    "infer.fastai_export",
)


def test_preprocessing_has_two_implementations_and_only_the_adapter_imports_fastai(run_dir):
    """One interface, two implementations (flowerfast's, with its variant for exported runtimes,
    and fastai's); fastai (seconds to import, unpickles code) reached only
    through flowerfast.infer.fastai_export, and only when a fastai export is opened."""
    import ast

    import flowerfast.infer.fastai_export
    from flowerfast.infer.preprocessing import FlowerfastPreprocessing, Preprocessing

    def implementations(cls):
        return {c for sub in cls.__subclasses__() for c in (sub, *implementations(sub))}

    from flowerfast.infer.exported import RuntimePreprocessing

    assert implementations(Preprocessing) == {
        FlowerfastPreprocessing,
        RuntimePreprocessing,  # flowerfast's, its batch normalised by numpy for ONNX Runtime and OpenVINO
        flowerfast.infer.fastai_export.FastaiExportPreprocessing,
    }
    assert RuntimePreprocessing.__bases__ == (FlowerfastPreprocessing,)
    assert isinstance(flowerfast.load_model(run_dir, device="cpu").preprocessing, FlowerfastPreprocessing)

    package = Path(flowerfast.__file__).parent
    for name in INFERENCE_MODULES + ("hardware.devices", "data.imagefiles", "cli.use"):
        tree = ast.parse((package / f"{name.replace('.', '/')}.py").read_text())  # imports inside functions count too
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
        found = sorted(m for m in imported if m.split(".")[0] in ("fastai", "torchvision"))
        if name == "infer.fastai_export":
            assert found and all(m.split(".")[0] == "fastai" for m in found), found
        else:
            assert not found, (name, found)
    # and at run time: importing every inference-side module, the adapter included, imports neither
    code = (
        f"import sys, importlib; [importlib.import_module('flowerfast.' + m) for m in {INFERENCE_MODULES!r}]; "
        f"print(sorted(m for m in ('fastai', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def fastai_export(tmp_path_factory) -> Path:
    """A learner made with fastai's own API and its presizing recipe (Resize crop to 60px per item,
    then a batch-level resize to 32px and Normalize): not flowerfast's transforms. Exported."""
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        aug_transforms,
        imagenet_stats,
        resnet18,
        vision_learner,
    )

    root = tmp_path_factory.mktemp("fastai")
    dls = ImageDataLoaders.from_folder(
        SAMPLE,
        valid_pct=0.2,
        seed=0,
        item_tfms=Resize(60),
        bs=8,
        num_workers=0,
        batch_tfms=[*aug_transforms(size=32), Normalize.from_stats(*imagenet_stats)],
    )
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
    result = invoke("predict", fastai_export, *photos, "--json", "--top-k", "5", "--trust-pickle", "--device", "cpu")
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)

    learn = load_learner(fastai_export, cpu=True)
    for photo, pred in zip(photos, ours):
        label, _, probs = learn.predict(photo)
        got = {t["class"]: t["probability"] for t in pred["top_k"]}
        expected = dict(zip(map(str, learn.dls.vocab), probs.tolist()))
        assert got == pytest.approx(expected, abs=BATCH_SHAPE_TOL)  # a batch of 6 here, of 1 in learn.predict
        assert_same_top(pred["predicted"], expected)
        assert_same_top(str(label), got)

    api = flowerfast.load_model(fastai_export, device="cpu", trust_pickle=True)
    assert api.spec.size == 32 and api.spec.mean == pytest.approx([0.485, 0.456, 0.406])
    assert type(api.preprocessing).__name__ == "FastaiExportPreprocessing"
    with_workers = api.predict(photos, workers=2, bs=2, top_k=5)  # the transforms also work in worker processes
    for w, o in zip(with_workers, ours):  # batches of 2 against one batch of 6
        assert dict(w.top_k) == pytest.approx({t["class"]: t["probability"] for t in o["top_k"]}, abs=BATCH_SHAPE_TOL)
        assert_same_top(w.predicted, {t["class"]: t["probability"] for t in o["top_k"]})


def test_trusted_fastai_export_exports_with_its_own_resize(fastai_export, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "fa.onnx"
    result = invoke("export", fastai_export, "--format", "onnx", "--out", out, "--trust-pickle")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "fa.onnx.json").read_text())
    assert info["size"] == 32 and "resize" not in info
    assert any("Resize" in t and "crop" in t for t in info["fastai_item_transforms"])
    assert any("Normalize" in t for t in info["fastai_batch_transforms"])
    # the file's probabilities on fastai's own preprocessing are the model's
    from flowerfast.export.formats.onnx import run as run_onnx

    model = flowerfast.load_model(fastai_export, device="cpu", trust_pickle=True)
    photos = sorted((SAMPLE / "tulip").glob("*.jpg"))[:4]
    images = torch.stack([model.preprocessing.load(p) for p in photos])
    batch = model.preprocessing.to_input(images).float().contiguous()
    expected = model.probabilities_of(images)
    got = run_onnx(out, batch)
    assert got.shape == expected.shape == (4, 5)
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())


def test_trusted_grayscale_fastai_export(tmp_path):
    """A fastai export of a one-channel (PILImageBW) model: opened in its own colour mode."""
    from fastai.learner import load_learner
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        PILImageBW,
        RandomSplitter,
        Resize,
        get_image_files,
        parent_label,
        resnet18,
        vision_learner,
    )

    block = DataBlock(
        blocks=(ImageBlock(PILImageBW), CategoryBlock),
        get_items=get_image_files,
        get_y=parent_label,
        item_tfms=Resize(40),
        splitter=RandomSplitter(seed=0),
    )
    learn = vision_learner(block.dataloaders(SAMPLE, bs=8, num_workers=0), resnet18, pretrained=False, n_in=1)
    learn.export(tmp_path / "bw.pkl")
    model = flowerfast.load_model(tmp_path / "bw.pkl", device="cpu", trust_pickle=True)
    assert model.spec.size == 40 and len(model.spec.mean) == 1
    photos = sorted((SAMPLE / "tulip").glob("*.jpg"))[:3]
    reference = load_learner(tmp_path / "bw.pkl", cpu=True)
    for photo, pred in zip(photos, model.predict(photos, top_k=5)):
        label, _, probs = reference.predict(photo)
        expected = dict(zip(map(str, reference.dls.vocab), probs.tolist()))
        # one batch of 3 here, batches of 1 in learn.predict: see BATCH_SHAPE_TOL
        assert dict(pred.top_k) == pytest.approx(expected, abs=BATCH_SHAPE_TOL)
        assert_same_top(pred.predicted, expected)
        assert_same_top(str(label), dict(pred.top_k))


def test_folding_batch_norms_keeps_the_outputs(run_dir):
    import copy

    from flowerfast.infer.optimize import fold_batch_norms
    from flowerfast.infer.preprocessing import normalise, preprocess
    from flowerfast.models.classifier import load_classifier
    from flowerfast.models.nets import build_body

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
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in training.modules()) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in network.modules()
    )


def test_a_model_with_nan_weights_is_an_error_everywhere(run_dir, tmp_path):
    """Damaged weights (NaN written into best.safetensors) give an error, not "daisy nan%"."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("best.json", "best.safetensors"):
        shutil.copy(run_dir / name, broken / name)
    state = load_file(str(broken / "best.safetensors"))
    key = next(k for k in state if k.endswith("weight") and state[k].dim() == 2)
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(broken / "best.safetensors"))
    for args in (
        ["predict", broken, SAMPLE / "daisy"],
        ["evaluate", broken, SAMPLE, "--out", tmp_path / "ev"],
        ["export", broken, "--format", "torchscript", "--out", tmp_path / "m.pt"],
    ):
        result = invoke(*args)
        assert result.exit_code == 1, args
        assert "gives NaN or infinite outputs" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "m.pt").exists()


def test_a_weights_file_damaged_on_disk_is_refused_by_its_checksum(run_dir, tmp_path):
    """The same damage done in place (the file's own metadata kept): the checksum saved with the
    weights no longer matches, and every command says so in one line."""
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(run_dir / "best.safetensors", broken / "best.safetensors")  # no best.json: not needed
    data = bytearray((broken / "best.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # NaN
    (broken / "best.safetensors").write_bytes(bytes(data))
    expected = (
        f"error: {broken / 'best.safetensors'} is damaged: its weights do not match the checksum saved "
        "with them; use another copy or train again"
    )
    for args in (
        ["predict", broken, SAMPLE / "daisy"],
        ["evaluate", broken, SAMPLE, "--out", tmp_path / "ev"],
        ["export", broken, "--format", "torchscript", "--out", tmp_path / "m.pt"],
    ):
        result = invoke(*args)
        assert result.exit_code == 1, args
        assert result.stderr.strip() == expected
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "ev").exists()


def test_predict_fails_when_no_file_is_readable(run_dir, tmp_path):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    result = invoke("predict", run_dir, tmp_path, "--json")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "error: none of the 2 file(s) could be read as an image"


def test_predicting_many_files_logs_its_progress(run_dir):
    """In a log (not a terminal) a long predict says how far it is, on stderr, each quarter."""
    result = invoke("predict", run_dir, SAMPLE, "--bs", "8", "--json")
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("predict: ")]
    assert lines == [
        "predict: 6/25 batches",
        "predict: 12/25 batches",
        "predict: 18/25 batches",
        "predict: 25/25 batches",
    ]
    assert len(json.loads(result.stdout)) == 200  # stdout holds the JSON alone
