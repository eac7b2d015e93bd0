"""The learning-rate finder: suggestions printed, plot and curve written and read back."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from flowerfast.runs.folder import RunFolder
from tests.conftest import invoke, make_folder


def test_lr_find_prints_suggestions_and_writes_plot_and_curve(tmp_path, runner):
    data = make_folder(tmp_path / "d", {"daisy": 12, "sunflower": 12})
    out = tmp_path / "lr"
    result = invoke(
        runner,
        ["lr-find", "--data", data, "--arch", "resnet18", "--no-pretrained", "--size", "32", "--bs", "8", "--out", out],
    )
    assert result.exit_code == 0, result.output
    for name in ("valley", "slide", "minimum", "steep"):
        assert name in result.output
    suggestions = json.loads((out / "lr_find.json").read_text())["suggestions"]
    assert set(suggestions) == {"valley", "slide", "minimum", "steep"}
    assert (
        f"use: flowerfast train --data {data} --arch resnet18 --size 32 --bs 8 --no-pretrained "
        f"--lr {suggestions['valley']:.1e}  (valley)"
    ) in result.output
    with open(out / "lr_find.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lrs = [float(r["lr"]) for r in rows]
    assert len(rows) > 20 and lrs == sorted(lrs) and lrs[0] < 1e-6
    assert all(lrs[0] <= v <= lrs[-1] for v in suggestions.values())  # each a point of the swept curve
    with Image.open(out / "lr_find.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600
    assert (out / "split.csv").exists() and (out / "config.json").exists()
    again = invoke(
        runner,
        [
            "lr-find",
            "--data",
            data,
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--bs",
            "8",
            "--out",
            tmp_path / "lr2",
            "--json",
            "--num-it",
            "40",
        ],
    )
    assert again.exit_code == 0, again.output
    printed = json.loads(again.stdout)
    assert printed["suggestions"] == json.loads((tmp_path / "lr2" / "lr_find.json").read_text())["suggestions"]
    assert printed["plot"] == str(tmp_path / "lr2" / "lr_find.png")
    with open(tmp_path / "lr2" / "lr_find.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) <= 40 < len(rows)  # --num-it: a shorter curve than the default


def test_train_lr_auto_trains_with_the_valley_suggestion(tmp_path):
    """``lr="auto"``: lr-find runs first, its files land in the run folder, and the one-cycle
    schedule the model is then trained with peaks at exactly the valley suggestion."""
    import flowerfast
    from tests.test_train import _ScheduleProbe

    data = make_folder(tmp_path / "d", {"daisy": 12, "sunflower": 12})
    probe = _ScheduleProbe()
    result = flowerfast.train(
        data=data,
        arch="resnet18",
        pretrained=False,
        size=32,
        bs=8,
        epochs=1,
        lr="auto",
        device="cpu",
        out=tmp_path / "run",
        callbacks=[probe],
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    suggestions = json.loads((tmp_path / "run" / "lr_find.json").read_text())["suggestions"]
    assert config["lr"] == config["lr_find"]["valley"] == suggestions["valley"] == result.lr
    assert config["lr"] != 3e-3  # not the from-scratch default
    (peak,) = probe.peaks  # from scratch: one full phase, every group at the same rate
    assert peak == pytest.approx([config["lr"]] * len(peak), rel=1e-6)
    assert max(max(lrs) for lrs in probe.batch_lrs) <= config["lr"] * (1 + 1e-6)
    assert (tmp_path / "run" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "run" / "lr_find.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) > 20


def test_lr_find_uses_a_scratch_folder_and_removes_it(tmp_path, monkeypatch):
    """fastai's lr_find saves and restores the weights in the Learner's folder: a scratch folder
    that exists while it runs and is gone afterwards; nothing lands in the working folder."""
    import tempfile

    import flowerfast
    from flowerfast.core.progress import Reporter

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    class SeeScratch(Reporter):
        during: list = []

        def batches_started(self, kind, total, epoch=None):
            if kind == "lr-find":
                self.during = [p.name for p in scratch.iterdir()]

    reporter = SeeScratch()
    data = make_folder(tmp_path / "d", {"daisy": 12, "sunflower": 12})
    flowerfast.find_lr(
        data=data,
        arch="resnet18",
        pretrained=False,
        size=32,
        bs=8,
        device="cpu",
        out=tmp_path / "lr",
        reporter=reporter,
    )
    assert len(reporter.during) == 1 and reporter.during[0].startswith("flowerfast-")
    assert list(scratch.iterdir()) == [] and list(work.iterdir()) == []


def test_train_lr_auto_prints_the_learning_rate_it_chose(tmp_path, runner):
    """With MixUp and CutMix on (fastai's MixUp can break after lr-find, fastai #3486): the finder
    runs on mixed batches, then the same learner trains on mixed ones and validates on plain ones."""
    data = make_folder(tmp_path / "d", {"daisy": 12, "sunflower": 12})
    result = invoke(
        runner,
        [
            "train",
            "--mixup",
            "0.4",
            "--cutmix",
            "1.0",
            "--data",
            data,
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--bs",
            "8",
            "--epochs",
            "1",
            "--lr",
            "auto",
            "--device",
            "cpu",
            "--out",
            tmp_path / "run",
        ],
    )
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "run" / "config.json").read_text())["lr"]
    assert f"learning rate: {chosen:.2e} (chosen by lr-find (valley))" in result.output
    (record,) = RunFolder(tmp_path / "run").read_history()  # validated on plain photos: real labels
    n_valid = json.loads((tmp_path / "run" / "config.json").read_text())["n_valid"]
    assert 0 < record.valid_loss < 5 and record.valid_accuracy in {k / n_valid for k in range(n_valid + 1)}
    plain = invoke(
        runner,
        [
            "train",
            "--data",
            data,
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--bs",
            "8",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--split-file",
            tmp_path / "run" / "split.csv",
            "--out",
            tmp_path / "run2",
        ],
    )
    assert plain.exit_code == 0, plain.output
    assert "learning rate: 3.00e-03 (default for random weights)" in plain.output
    assert f"split from {tmp_path / 'run' / 'split.csv'}" in plain.output  # the header says where the split came from
