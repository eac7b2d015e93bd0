"""The learning-rate finder: suggestions printed, plot and curve written and read back."""

from __future__ import annotations

import csv
import json

from PIL import Image

from .conftest import invoke, make_folder


def test_lr_find_prints_suggestions_and_writes_plot_and_curve(tmp_path, runner):
    data = make_folder(tmp_path / "d", {"daisy": 12, "sunflower": 12})
    out = tmp_path / "lr"
    result = invoke(runner, ["lr-find", "--data", data, "--arch", "resnet18", "--no-pretrained", "--size", "32",
                             "--bs", "8", "--out", out])
    assert result.exit_code == 0, result.output
    for name in ("valley", "slide", "minimum", "steep"):
        assert name in result.output
    suggestions = json.loads((out / "lr_find.json").read_text())["suggestions"]
    assert set(suggestions) == {"valley", "slide", "minimum", "steep"}
    assert all(1e-7 <= v <= 10 for v in suggestions.values())
    assert f"--lr {suggestions['valley']:.1e}" in result.output
    with open(out / "lr_find.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lrs = [float(r["lr"]) for r in rows]
    assert len(rows) > 20 and lrs == sorted(lrs) and lrs[0] < 1e-6
    with Image.open(out / "lr_find.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600
    assert (out / "split.csv").exists() and (out / "config.json").exists()


def test_train_lr_auto_uses_the_valley_suggestion(tmp_path, runner):
    data = make_folder(tmp_path / "d", {"daisy": 12, "sunflower": 12})
    out = tmp_path / "run"
    result = invoke(runner, ["train", "--data", data, "--arch", "resnet18", "--no-pretrained", "--size", "32",
                             "--bs", "8", "--epochs", "1", "--lr", "auto", "--out", out])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == config["lr_find"]["valley"]
    assert (out / "lr_find.png").exists() and (out / "lr_find.csv").exists()
