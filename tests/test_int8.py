"""``flowerfast export --int8`` and OpenVINO files: an int8 network calibrated and checked on the
run's validation photos, refused when it loses accuracy, and run by predict, evaluate and serve
with the same answers as its own check measured."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

import flowerfast
from flowerfast.cli import app
from flowerfast.data.folders import default_data_dir
from tests.conftest import validation_folder

pytest.importorskip("openvino", reason="the openvino extra (pip install 'flowerfast[openvino]') is not installed")
pytest.importorskip("nncf", reason="the openvino extra (pip install 'flowerfast[openvino]') is not installed")

SAMPLE = default_data_dir()
runner = CliRunner()


@pytest.fixture(scope="module")
def int8_export(lite_run, tmp_path_factory):
    """``flowerfast export RUN --int8`` on the real Lite0 fine-tune, through the CLI; any loss
    accepted, so that the figures can be checked whatever this CPU's kernels give."""
    out = tmp_path_factory.mktemp("int8") / "flowers.xml"
    result = runner.invoke(app, ["export", str(lite_run), "--int8", "--out", str(out), "--max-accuracy-loss", "100"])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_int8_export_reports_its_check_and_writes_int8_weights(int8_export, lite_run):
    out, stdout = int8_export
    info = json.loads((out.parent / "flowers.xml.json").read_text())
    check = info["int8"]
    assert info["precision"] == "int8" and info["model_format"] == "openvino"
    assert check["images"] == 40 and check["calibration_images"] == 40  # all 40 validation photos
    lines = stdout.strip().splitlines()
    assert lines[0] == f"openvino int8: {out}"
    assert lines[2] == (
        f"checked on the run's 40 validation photos: int8 {check['int8_accuracy']:.1%} right, fp32 "
        f"{check['fp32_accuracy']:.1%} ({-check['loss_points']:+.1f} points); top-1 agreement with fp32 "
        f"{check['agreement']:.1%}; calibrated on 40 of them"
    )
    # the fp32 figure is the model's own accuracy on its validation split, as evaluate measures it
    assert check["fp32_accuracy"] == pytest.approx(flowerfast.evaluate(lite_run, device="cpu").accuracy, abs=1 / 40)
    # int8 quantization keeps the network's answers on most photos (measured: 94.5% on 596 photos)
    assert check["agreement"] >= 0.8
    # the weights are int8: the .bin is about a quarter of the fp32 file's size
    fp32_bytes = (lite_run / "best.safetensors").stat().st_size
    assert out.with_suffix(".bin").stat().st_size < 0.4 * fp32_bytes
    assert 'element_type="i8"' in out.read_text()


def test_predict_evaluate_and_serve_run_the_int8_file(int8_export, lite_run, tmp_path):
    out, _ = int8_export
    check = json.loads((out.parent / "flowers.xml.json").read_text())["int8"]
    folder = tmp_path / "valid"
    files, _ = validation_folder(lite_run, folder)
    result = flowerfast.evaluate(out, folder)
    assert result.n_images == 40
    assert result.accuracy == pytest.approx(check["int8_accuracy"], abs=1 / 40)  # a near tie may differ by batch
    cli = runner.invoke(app, ["predict", str(out), *map(str, files[:3]), "--json", "--top-k", "5"])
    assert cli.exit_code == 0, cli.output
    answers = json.loads(cli.stdout)
    assert [a["probability"] for a in answers] == pytest.approx(result.confidence[:3], abs=1e-3)
    assert all(sum(t["probability"] for t in a["top_k"]) == pytest.approx(1, abs=1e-3) for a in answers)
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    with TestClient(flowerfast.create_app(out)) as client:
        response = client.post("/predict", files=[("files", (files[0].name, files[0].read_bytes(), "image/jpeg"))])
        assert response.status_code == 200, response.text
        assert response.json()[0]["probability"] == pytest.approx(result.confidence[0], abs=1e-3)


def test_an_openvino_fp32_file_gives_pytorchs_answers(run_dir, tmp_path):
    out = tmp_path / "m.xml"
    result = flowerfast.export_model(run_dir, out=out)  # format auto: the suffix names OpenVINO
    assert result.format == "openvino" and result.max_abs_diff <= 1e-4 and result.int8 is None
    assert out.with_suffix(".bin").is_file()
    files = sorted((SAMPLE / "tulip").glob("*.jpg"))[:4]
    exported = flowerfast.load_model(out).predict(files, top_k=5)
    pytorch = flowerfast.load_model(run_dir, device="cpu").predict(files, top_k=5)
    assert [dict(e.top_k) for e in exported] == [pytest.approx(dict(p.top_k), abs=1e-4) for p in pytorch]


def test_an_int8_export_that_loses_accuracy_is_refused_and_leaves_nothing(lite_run, tmp_path, monkeypatch):
    from flowerfast.export import quantize

    real = quantize.compare_int8

    def worse(*args, **kwargs):
        check = real(*args, **kwargs)
        check.int8_accuracy = check.fp32_accuracy - 0.025  # one photo of 40 more wrong than fp32
        return check

    monkeypatch.setattr(quantize, "compare_int8", worse)
    out = tmp_path / "int8.xml"
    result = runner.invoke(app, ["export", str(lite_run), "--int8", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the int8 model is ") and "(2.5 points lost, more than 1)" in line
    assert line.endswith("nothing was written: export without --int8, or accept the loss with --max-accuracy-loss")
    assert list(tmp_path.iterdir()) == []


def test_refusal_follows_the_allowed_loss():
    from flowerfast.export.quantize import Int8Check, refuse_if_worse

    check = Int8Check(
        images=596, calibration_images=300, fp32_accuracy=456 / 596, int8_accuracy=450 / 596, agreement=0.9
    )
    assert check.loss_points == pytest.approx(100 * 6 / 596)  # 1.007 points
    assert refuse_if_worse(check, 1.1) is check
    with pytest.raises(flowerfast.FlowerfastError, match=r"\(1\.0 points lost, more than 1\)"):
        refuse_if_worse(check, 1.0)
    gained = Int8Check(596, 300, 456 / 596, 462 / 596, 0.95)
    assert gained.loss_points < 0 and refuse_if_worse(gained, 0.0) is gained


@pytest.mark.parametrize(
    "args, message",
    [
        (["--int8", "--format", "onnx"], "error: --int8 exports are OpenVINO (.xml), not ONNX"),
        (["--max-accuracy-loss", "2"], "error: --max-accuracy-loss is for --int8 exports"),
        (["--int8", "--max-accuracy-loss", "-1"], "error: --max-accuracy-loss must be 0 or more points, not -1.0"),
        (["--format", "openvino", "--out", "m.model"], "error: --out of an OpenVINO export must end in .xml"),
    ],
)
def test_bad_int8_options_are_one_line(run_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", str(run_dir), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_a_run_and_the_extra(run_dir, tmp_path, monkeypatch):
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in ("best.safetensors", "best.json"):
        shutil.copy(run_dir / f, alone / f)
    result = runner.invoke(app, ["export", str(alone / "best.safetensors"), "--int8"])
    assert result.stderr.strip() == (
        "error: --int8 calibrates and checks on a run's validation photos: give the run folder (or a model file in it)"
    )
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else find_spec(name, *a))
    result = runner.invoke(app, ["export", str(run_dir), "--int8"])
    assert result.exit_code == 1
    assert result.stderr.strip() == 'error: int8 export needs nncf: pip install "flowerfast[openvino]"'


def test_an_export_is_not_exported_again(int8_export):
    out, _ = int8_export
    result = runner.invoke(app, ["export", str(out)])
    assert result.stderr.strip() == f"error: {out} is already an export: export the run or model file it came from"
