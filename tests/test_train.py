"""Training end to end through the CLI, on real photos; every file of the run read back."""

from __future__ import annotations

import csv
import json

import pytest

from flowerfast.runfolder import read_split_csv
from flowerfast.model import load_classifier

from .conftest import SAMPLE, SHARED, invoke, make_folder, requires_shared

HISTORY_COLUMNS = ["epoch", "phase", "train_loss", "train_accuracy_aug", "train_accuracy_clean", "valid_loss",
                   "valid_accuracy", "lr", "seconds"]


def _history(run):
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_a_complete_run_folder(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "split.csv", "history.csv", "summary.json", "best.safetensors", "best.json",
            "final.safetensors", "final.json", "valid_predictions.csv"} <= names
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["size"] == 32 and config["epochs"] == 2
    assert config["pretrained"] is False and config["weights_source"] == "random"
    assert config["lr"] == 3e-3 and config["freeze_epochs"] == 0 and config["seed"] == 42
    assert config["n_train"] == 160 and config["n_valid"] == 40 and config["device"] == "cpu"
    assert config["data"] == str(SAMPLE)

    history = _history(tiny_run)
    assert list(history[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history] == [1, 2]
    for row in history:
        for col in ("train_accuracy_aug", "train_accuracy_clean", "valid_accuracy"):
            assert 0.0 <= float(row[col]) <= 1.0
        assert float(row["train_loss"]) > 0 and float(row["seconds"]) > 0
    assert float(history[1]["lr"]) < float(history[0]["lr"])  # one cycle: annealed by the end

    split = read_split_csv(tiny_run / "split.csv", SAMPLE)
    assert len(split) == 200 and sum(r.is_valid for r in split) == 40

    summary = json.loads((tiny_run / "summary.json").read_text())
    best = max(float(r["valid_accuracy"]) for r in history)
    assert summary["best_valid_accuracy"] == pytest.approx(best, abs=1e-6)
    assert summary["best_epoch"] == next(int(r["epoch"]) for r in history if float(r["valid_accuracy"]) == best)
    assert summary["final_valid_accuracy"] == pytest.approx(float(history[-1]["valid_accuracy"]), abs=1e-6)


def test_saved_best_model_reproduces_its_validation_accuracy(tiny_run):
    """Rebuild the best model from safetensors + JSON (no fastai, no pickle) and rescore it."""
    model, spec = load_classifier(tiny_run)
    assert spec.arch == "resnet18" and spec.classes == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    with open(tiny_run / "valid_predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == 40
    summary = json.loads((tiny_run / "summary.json").read_text())
    accuracy = sum(p["label"] == p["predicted"] for p in preds) / len(preds)
    assert accuracy == pytest.approx(summary["best_valid_accuracy"], abs=1e-6)

    from flowerfast.data import load_data
    from flowerfast.learner import predict_batches

    data = load_data(None, size=spec.size, bs=16, split_file=tiny_run / "split.csv")
    probs, targets = predict_batches(model, data.dls.valid)
    assert float((probs.argmax(-1) == targets).float().mean()) == pytest.approx(accuracy, abs=1e-6)
    assert [spec.classes[i] for i in probs.argmax(-1).tolist()] == [p["predicted"] for p in preds]


@pytest.mark.parametrize("arch", ["resnet152", "vgg11_bn"])
def test_the_reports_two_architectures_train(tmp_path, runner, arch):
    data = make_folder(tmp_path / "d", {"daisy": 10, "rose": 10})
    out = tmp_path / "run"
    result = invoke(runner, ["train", "--data", data, "--arch", arch, "--no-pretrained", "--size", "32",
                             "--epochs", "1", "--bs", "8", "--out", out])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1 full" in result.output
    model, spec = load_classifier(out / "final.safetensors")
    assert spec.arch == arch and spec.classes == ["daisy", "rose"]
    assert len(_history(out)) == 1


def test_freeze_epochs_train_the_head_first(tmp_path, runner):
    data = make_folder(tmp_path / "d", {"daisy": 8, "tulip": 8})
    out = tmp_path / "run"
    result = invoke(runner, ["train", "--data", data, "--arch", "resnet18", "--no-pretrained", "--size", "32",
                             "--epochs", "1", "--freeze-epochs", "1", "--bs", "8", "--out", out])
    assert result.exit_code == 0, result.output
    assert [r["phase"] for r in _history(out)] == ["frozen", "full"]


@requires_shared
def test_training_really_learns(tmp_path):
    """Two colour-distinct classes with enough photos: a model from scratch must beat chance clearly."""
    import flowerfast

    data = tmp_path / "d"
    for cls in ("dandelion", "rose"):
        (data / cls).mkdir(parents=True)
        for f in sorted((SHARED / cls).glob("*.jpg"))[:200]:
            (data / cls / f.name).symlink_to(f)
    result = flowerfast.train(data=data, arch="resnet18", pretrained=False, size=48, epochs=5, bs=32,
                              out=tmp_path / "run", clean_train_sample=0)
    assert result.best_valid_accuracy >= 0.75, [r.valid_accuracy for r in result.history]
