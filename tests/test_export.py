"""``flowerfast export``: ONNX and TorchScript files that give the same probabilities as
``flowerfast predict``, with a preprocessing JSON that is enough to use them."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import flowerfast
from flowerfast.cli import app
from flowerfast.data.folders import default_data_dir
from flowerfast.export.formats import format_names
from tests.conftest import validation_folder

SAMPLE = default_data_dir()
runner = CliRunner()


def preprocess_without_flowerfast(path, info):
    """The recipe from the preprocessing JSON, written with PIL and numpy only."""
    from PIL import Image

    img = Image.open(path)
    bound, (w, h) = info["reduce"]["shorter_side"], img.size
    if min(w, h) > bound:  # a big photo: shorter side to `bound`, aspect ratio kept
        reduced = (bound, round(h * bound / w)) if w <= h else (round(w * bound / h), bound)
        img.draft(None, reduced)  # JPEG: decoded at 1/2, 1/4 or 1/8 scale, still at least `reduced`
        img = img.convert("RGB").resize(reduced, Image.BILINEAR)
    img = img.convert("RGB").resize((info["resize"]["width"], info["resize"]["height"]), Image.BILINEAR)
    off = (info["resize"]["width"] - info["size"]) // 2
    img = img.crop((off, off, off + info["size"], off + info["size"]))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * np.float32(info["scale"])
    mean, std = np.array(info["mean"], np.float32)[:, None, None], np.array(info["std"], np.float32)[:, None, None]
    return (x - mean) / std


@pytest.fixture(scope="module")
def cli_predictions(run_dir):
    files = sorted((SAMPLE / "rose").glob("*.jpg"))[:6]
    # on the CPU, like the exports are checked: a GPU's TF32 convolutions would differ by more than 1e-4
    result = runner.invoke(
        app, ["predict", str(run_dir), *map(str, files), "--json", "--top-k", "5", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return files, json.loads(result.stdout)


def expected_matrix(preds, classes):
    return np.array([[dict((t["class"], t["probability"]) for t in p["top_k"])[c] for c in classes] for p in preds])


def check_batch(run_dir, n=4):
    """A normalised random batch the size of the run's model, and PyTorch's probabilities for it
    (at the model's temperature, which the exported graph must include)."""
    model = flowerfast.load_model(run_dir, device="cpu")
    batch = torch.randn(n, 3, model.spec.size, model.spec.size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = torch.softmax(model.network(batch).float() / model.spec.temperature, dim=-1)
    return batch, expected


def assert_torchscript_matches_pytorch(path, run_dir):
    batch, expected = check_batch(run_dir)
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        probs = module(batch)
    assert probs.shape == expected.shape
    assert torch.allclose(probs, expected, atol=1e-4), float((probs - expected).abs().max())


def test_onnx_matches_predict(run_dir, tmp_path, cli_predictions):
    import onnxruntime as ort

    target = tmp_path / "flowers.onnx"
    result = runner.invoke(app, ["export", str(run_dir), "--format", "onnx", "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert "max abs difference" in result.stdout
    info = json.loads((tmp_path / "flowers.onnx.json").read_text())
    assert info["classes"] == flowerfast.load_model(run_dir).classes
    assert info["input"]["layout"] == "NCHW" and info["size"] == 32
    files, preds = cli_predictions
    batch = np.stack([preprocess_without_flowerfast(f, info) for f in files])
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"input": batch})
    assert np.allclose(probs, expected_matrix(preds, info["classes"]), atol=1e-4)
    (one,) = session.run(None, {"input": batch[:1]})  # dynamic batch axis
    assert one.shape == (1, 5)


def test_torchscript_matches_predict(run_dir, tmp_path, cli_predictions):
    result = flowerfast.export_model(run_dir, format="torchscript", out=tmp_path / "flowers.pt")
    assert result.max_abs_diff <= 1e-4 and result.preprocessing.name == "flowers.pt.json"
    info = json.loads(result.preprocessing.read_text())
    files, preds = cli_predictions
    module = torch.jit.load(str(result.path))
    batch = torch.from_numpy(np.stack([preprocess_without_flowerfast(f, info) for f in files]))
    with torch.no_grad():
        probs = module(batch).numpy()
    assert np.allclose(probs, expected_matrix(preds, info["classes"]), atol=1e-4)


def test_default_path_is_beside_the_model(run_dir):
    result = flowerfast.export_model(run_dir / "best.json", format="onnx")
    try:
        assert result.path == run_dir / "best.onnx" and result.path.exists()
        assert (run_dir / "best.onnx.json").exists()
    finally:
        result.path.unlink()
        result.preprocessing.unlink()


def test_bad_format_and_missing_model(run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir), "--format", "tflite"])
    assert result.exit_code != 0 and "'tflite' is not one of 'auto', 'onnx', 'openvino', 'torchscript'" in result.stderr
    result = runner.invoke(app, ["export", str(tmp_path / "none")])
    assert result.exit_code != 0 and "model not found" in result.stderr
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "no" / "dir" / "m.onnx")])
    assert result.exit_code != 0 and "output folder does not exist" in result.stderr


def test_missing_onnx_says_how_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0 and "pip install flowerfast[onnx]" in result.stderr


def test_export_without_format_works_on_a_plain_install(run_dir, tmp_path, monkeypatch):
    """Without the onnx extra, ``export`` with no --format writes TorchScript, and says so."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = tmp_path / "run"
    shutil.copytree(run_dir, model)
    result = runner.invoke(app, ["export", str(model)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"torchscript: {model / 'best.pt'}"
    assert_torchscript_matches_pytorch(model / "best.pt", model)


def test_an_existing_file_is_replaced_only_with_force(run_dir, tmp_path):
    target = tmp_path / "m.pt"
    target.write_bytes(b"precious")
    result = runner.invoke(app, ["export", str(run_dir), "--format", "torchscript", "--out", str(target)])
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        f"error: {target} already exists: pass --force to replace it"
    ]
    assert target.read_bytes() == b"precious" and not (tmp_path / "m.pt.json").exists()
    result = runner.invoke(app, ["export", str(run_dir), "--format", "torchscript", "--out", str(target), "--force"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.pt.json").exists()
    assert_torchscript_matches_pytorch(target, run_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]  # no staged file left


def test_an_unwritable_destination_is_one_line(run_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["export", str(run_dir), "--format", "torchscript", "--out", str(blocker / "m.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: cannot write to {blocker}: it is a file, not a folder"]


def test_a_failed_check_leaves_nothing(run_dir, tmp_path, monkeypatch):
    """An export that does not reproduce PyTorch's numbers (here: its runner made to disagree) is
    removed, and no preprocessing file is written for it."""
    import dataclasses

    from flowerfast.export.formats import torchscript

    broken = dataclasses.replace(torchscript.FORMAT, run=lambda path, batch: torch.zeros(len(batch), 5))
    monkeypatch.setattr(torchscript, "FORMAT", broken)
    with pytest.raises(flowerfast.FlowerfastError, match="differs from PyTorch .* nothing was written"):
        flowerfast.export_model(run_dir, format="torchscript", out=tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_the_registry_lists_the_format_modules_on_disk():
    """Every module of ``flowerfast/export/formats/`` is a format, named as its file: a new file is a new format."""
    from pathlib import Path

    from flowerfast.export import formats as registry

    on_disk = sorted(p.stem for p in Path(registry.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert "onnx" in on_disk and "torchscript" in on_disk
    assert sorted(registry.format_names()) == on_disk
    assert sorted(registry.formats()) == on_disk
    assert all(fmt.name == name for name, fmt in registry.formats().items())


@pytest.mark.parametrize("name", format_names())
def test_each_format_round_trips(run_dir, tmp_path, name):
    """The written file gives PyTorch's probabilities (and was checked against them on the way)."""
    from flowerfast.export.formats import choose_format, get_format

    fmt = get_format(name)
    if not fmt.available():
        pytest.skip(f"the {fmt.extra} extra is not installed")
    result = flowerfast.export_model(run_dir, format=name, out=tmp_path / f"m{fmt.suffix}")
    assert result.format == name and result.max_abs_diff <= 1e-4
    assert json.loads(result.preprocessing.read_text())["model_format"] == name
    batch, expected = check_batch(run_dir)
    probs = fmt.run(result.path, batch)
    assert probs.shape == expected.shape
    assert torch.allclose(probs, expected, atol=1e-4), float((probs - expected).abs().max())
    for suffix in fmt.suffixes:  # format="auto" follows the suffix of out
        assert choose_format("auto", tmp_path / f"x{suffix}") is fmt


def test_the_cli_offers_the_registrys_formats():
    from flowerfast.cli.use import FormatChoice
    from flowerfast.export.formats import format_names

    assert [c.value for c in FormatChoice] == ["auto", *format_names()]


def test_a_library_error_names_the_parameter(run_dir):
    with pytest.raises(flowerfast.FlowerfastError) as caught:
        flowerfast.export_model(run_dir, format="tflite")
    assert str(caught.value) == "format must be one of auto, onnx, openvino, torchscript (got 'tflite')"
    assert caught.value.parameters == ("format",)


# ----------------------------------------------------------------------------------------------
# Running an exported file through the commands


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'flowerfast[onnx]') is not installed")
    target = tmp_path_factory.mktemp("onnx") / "flowers.onnx"
    flowerfast.export_model(run_dir, format="onnx", out=target)
    return target


def test_predict_runs_an_onnx_file_with_the_same_answers(onnx_file, cli_predictions):
    files, preds = cli_predictions
    result = runner.invoke(app, ["predict", str(onnx_file), *map(str, files), "--json", "--top-k", "5"])
    assert result.exit_code == 0, result.output
    served = json.loads(result.stdout)
    assert [set(p) for p in served] == [set(p) for p in preds]  # the same JSON
    classes = flowerfast.load_model(onnx_file).classes
    assert np.allclose(expected_matrix(served, classes), expected_matrix(preds, classes), atol=1e-4)
    model = flowerfast.load_model(onnx_file)
    assert model.outputs == "probabilities" and model.prototypes is None
    assert served[0]["familiarity"] is None  # the prototypes stay with the flowerfast model
    tta = model.predict(files[:2], tta=True, top_k=5)
    pytorch = flowerfast.load_model(cli_run(onnx_file), device="cpu")
    want = pytorch.predict(files[:2], tta=True, top_k=5)
    assert [dict(p.top_k) for p in tta] == [pytest.approx(dict(w.top_k), abs=1e-4) for w in want]


def cli_run(onnx_file):
    """The run an export came from, as its JSON records it."""
    from pathlib import Path

    return Path(json.loads((onnx_file.parent / (onnx_file.name + ".json")).read_text())["source_model"])


def test_evaluate_and_serve_run_an_onnx_file(onnx_file, tmp_path):
    run = cli_run(onnx_file).parent if cli_run(onnx_file).is_file() else cli_run(onnx_file)
    folder = tmp_path / "valid"
    files, _ = validation_folder(run, folder)
    exported = flowerfast.evaluate(onnx_file, folder)
    original = flowerfast.evaluate(run, folder, device="cpu")
    assert exported.confidence == pytest.approx(original.confidence, abs=1e-4)
    assert exported.accuracy == pytest.approx(original.accuracy, abs=1 / len(files))  # a near tie may differ
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    with TestClient(flowerfast.create_app(onnx_file)) as client:
        response = client.post("/predict", files=[("files", (files[0].name, files[0].read_bytes(), "image/jpeg"))])
        assert response.status_code == 200, response.text
        assert response.json()[0]["probability"] == pytest.approx(exported.confidence[0], abs=1e-4)
        assert client.get("/model").json()["model"] == onnx_file.name


def test_an_onnx_file_without_its_json_is_one_line(onnx_file, tmp_path):
    alone = tmp_path / "alone.onnx"
    shutil.copy(onnx_file, alone)
    result = runner.invoke(app, ["predict", str(alone), str(next((SAMPLE / "rose").glob("*.jpg")))])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {alone}.json is missing: an exported model runs with the JSON flowerfast export writes beside it"
    )


def test_an_exports_batch_is_prepared_as_pytorchs():
    """The numpy preparation of a batch for ONNX Runtime and OpenVINO (kept off torch's thread
    pool) gives exactly torch's input: the same float32 operations in the same order."""
    from flowerfast.infer.batches import stack_images
    from flowerfast.infer.exported import RuntimePreprocessing
    from flowerfast.infer.preprocessing import FlowerfastPreprocessing

    paths = sorted((SAMPLE / "daisy").glob("*.jpg"))[:5]
    ours = FlowerfastPreprocessing(128, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    runtime = RuntimePreprocessing(128, ours.mean, ours.std)
    decoded = [ours.load(p) for p in paths]  # views of HWC arrays, as decoding gives them
    batch = stack_images(decoded)
    assert batch.dtype == torch.uint8 and batch.is_contiguous() and torch.equal(batch, torch.stack(decoded))
    assert torch.equal(runtime.to_input(batch), ours.to_input(batch))
