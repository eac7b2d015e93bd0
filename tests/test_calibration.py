"""Calibration: the arithmetic against independent computations, a temperature recovered from
data drawn with it, and a trained run's best model answering at its fitted temperature in
predict, evaluate, export and ``flowerfast calibrate``."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import flowerfast
from flowerfast.core.calibration import (
    MIN_IMAGES,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    measure,
    negative_log_likelihood,
    reliability_bins,
    rescaled,
)
from flowerfast.infer.evaluate import save_report
from tests.conftest import SAMPLE
from tests.conftest import invoke as invoke_cli


def invoke(*args):
    from typer.testing import CliRunner

    return invoke_cli(CliRunner(), list(args))


def softmax(z, t=1.0):
    return torch.softmax(torch.as_tensor(z, dtype=torch.float64) / t, dim=1).numpy()


def test_rescaling_probabilities_is_the_softmax_of_the_logits_at_that_temperature():
    z = np.random.default_rng(0).normal(0, 3, size=(50, 5))
    for t in (0.5, 1.0, 2.7):
        assert np.allclose(rescaled(softmax(z), t), softmax(z, t), atol=1e-12)
    assert np.allclose(rescaled(softmax(z, 2.0), 1 / 2.0), softmax(z), atol=1e-12)  # back to temperature 1


def test_the_temperature_data_were_drawn_with_is_recovered():
    """Labels drawn from softmax(z / 2): the fitted temperature of softmax(z) is about 2."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, size=(20000, 5))
    drawn = softmax(z, 2.0)
    labels = [rng.choice(5, p=p) for p in drawn]
    assert fit_temperature(softmax(z), labels) == pytest.approx(2.0, rel=0.05)
    fitted = calibrate(softmax(z), labels)
    assert fitted.nll_after < fitted.nll_before and fitted.ece_after < fitted.ece_before
    assert fitted.images == 20000


def test_ece_and_nll_equal_hand_and_scikit_learn_figures():
    from sklearn.metrics import log_loss

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = [0, 1, 0, 1]
    # bins of 1/15: 0.9 -> bin 13 (two images, one right: |0.9 - 0.5|), 0.6 -> bin 8 (right: |0.6 - 1|),
    # 0.7 -> bin 10 (right: |0.7 - 1|)
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4)
    assert negative_log_likelihood(probs, labels) == pytest.approx(log_loss(labels, probs))
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and sum(n for _, _, n in bins) == 4
    assert bins[13] == pytest.approx((0.9, 0.5, 2)) and bins[8] == pytest.approx((0.6, 1.0, 1))
    assert reliability_bins(np.array([[1.0, 0.0]]), [0])[-1] == (1.0, 1.0, 1)  # confidence 1 is in the last bin


def test_too_few_photos_fit_no_temperature():
    z = np.random.default_rng(2).normal(0, 3, size=(MIN_IMAGES - 1, 3))
    assert calibrate(softmax(z), [0] * (MIN_IMAGES - 1)).temperature == 1.0


def test_measuring_at_the_models_own_temperature_reports_both():
    z = np.random.default_rng(3).normal(0, 3, size=(300, 4))
    labels = list(np.random.default_rng(4).integers(0, 4, 300))
    measured = measure(softmax(z, 1.8), labels, 1.8)
    assert measured.nll_before == pytest.approx(negative_log_likelihood(softmax(z), labels))
    assert measured.nll_after == pytest.approx(negative_log_likelihood(softmax(z, 1.8), labels))


def test_a_run_calibrates_its_best_model_and_every_command_answers_with_it(run_dir, tmp_path):
    """The temperature fitted when training ended is in summary.json and the model files,
    minimises the validation NLL, and predict and evaluate answer with it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    cal = summary["calibration"]
    t = cal["temperature"]
    assert 0.25 <= t <= 10 and cal["images"] == 40
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9  # temperature 1 was a candidate
    assert json.loads((run_dir / "best.json").read_text())["temperature"] == t
    assert (run_dir / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    model = flowerfast.load_model(run_dir, device="cpu")
    assert model.spec.temperature == t

    result = flowerfast.evaluate(run_dir, mistakes=0)  # its own validation split: the photos it was fitted on
    assert result.calibration.temperature == t
    assert result.calibration.nll_after == pytest.approx(cal["nll_after"], abs=1e-3)
    assert result.calibration.nll_before == pytest.approx(cal["nll_before"], abs=1e-3)
    saved = save_report(result, tmp_path / "report")
    assert saved.calibration.read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads(saved.metrics.read_text())
    assert metrics["calibration"]["temperature"] == t


def test_a_given_temperature_is_used_by_predict_and_inside_the_exported_graph(run_dir, tmp_path):
    from flowerfast.models.classifier import load_classifier, set_temperature

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(run_dir / name, model_dir / name)
    before = (model_dir / "best.safetensors").stat().st_size
    set_temperature(model_dir / "best.safetensors", 2.5)
    network, spec = load_classifier(model_dir)  # the checksum still matches: the weights are untouched
    assert spec.temperature == 2.5 and abs((model_dir / "best.safetensors").stat().st_size - before) < 100

    photos = sorted((SAMPLE / "rose").glob("*.jpg"))[:4]
    loaded = flowerfast.load_model(model_dir, device="cpu")
    images = torch.stack([loaded.preprocessing.load(p) for p in photos])
    batch = loaded.preprocessing.to_input(images).float()
    with torch.no_grad():
        expected = torch.softmax(network.eval()(batch) / 2.5, dim=-1)
    assert torch.allclose(loaded.probabilities_of(images), expected, atol=1e-4)

    result = flowerfast.export_model(model_dir, format="torchscript", out=tmp_path / "m.pt")
    module = torch.jit.load(str(result.path), map_location="cpu")
    with torch.no_grad():
        assert torch.allclose(module(batch), expected, atol=1e-4)
    assert json.loads(result.preprocessing.read_text())["temperature"] == 2.5


def test_flowerfast_calibrate_refits_an_older_runs_model(run_dir, tmp_path):
    """A run whose model was saved at temperature 1 (as before flowerfast calibrated) gets the
    same temperature from `flowerfast calibrate` as training fitted."""
    from flowerfast.models.classifier import set_temperature

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    set_temperature(old / "best.safetensors", 1.0)
    (old / "calibration.png").unlink()
    result = invoke("calibrate", old, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    fitted = json.loads(result.stdout)
    trained = json.loads((run_dir / "summary.json").read_text())["calibration"]
    assert fitted["temperature"] == pytest.approx(trained["temperature"], rel=0.02)
    assert json.loads((old / "best.json").read_text())["temperature"] == fitted["temperature"]
    assert json.loads((old / "summary.json").read_text())["calibration"] == fitted
    assert (old / "calibration.png").is_file()
    assert not math.isnan(fitted["ece_after"])
    missing = invoke("calibrate", tmp_path / "nowhere")
    assert missing.exit_code != 0 and missing.stderr.startswith("error:") and len(missing.stderr.splitlines()) == 1
