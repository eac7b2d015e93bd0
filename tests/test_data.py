"""Data folders: scanning, skipping bad files, the split and its file, and bad layouts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.folders import scan_image_folder
from flowerfast.data.loaders import load_data
from flowerfast.data.split import rows_from_split_file, split_rows
from flowerfast.runs.folder import read_split_csv, write_split_csv
from tests.conftest import SAMPLE, make_folder, sample_files


def test_embedded_sample_has_five_classes_of_forty():
    folder = scan_image_folder(SAMPLE)
    assert folder.classes == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert len(folder.files) == 200 and not folder.skipped
    assert (SAMPLE / "README.md").read_text().count("martinwestin/flower_classification") == 1


def test_hidden_and_non_image_files_are_ignored_and_broken_images_skipped(tmp_path):
    root = make_folder(tmp_path / "d", {"rose": 4, "tulip": 4})
    (root / "rose" / ".hidden.jpg").write_bytes(sample_files("rose")[0].read_bytes())
    (root / ".cache").mkdir()
    (root / "tulip" / "notes.txt").write_text("not a photo")
    (root / "tulip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    truncated = root / "rose" / "truncated.jpg"
    truncated.write_bytes(sample_files("rose")[5].read_bytes()[:300])
    folder = scan_image_folder(root)
    assert folder.classes == ["rose", "tulip"]
    assert len(folder.files) == 8
    assert sorted(s.path.name for s in folder.skipped) == ["broken.jpg", "truncated.jpg"]
    assert all(s.reason for s in folder.skipped)


def test_same_seed_same_split_other_seed_other_split():
    folder = scan_image_folder(SAMPLE)
    a = split_rows(folder, valid_pct=0.2, seed=42)
    b = split_rows(folder, valid_pct=0.2, seed=42)
    c = split_rows(folder, valid_pct=0.2, seed=7)
    valid = lambda rows: [r.file for r in rows if r.is_valid]  # noqa: E731
    assert valid(a) == valid(b)
    assert valid(a) != valid(c)
    assert len(valid(a)) == 40 and len(valid(c)) == 40


def test_split_csv_round_trip_and_reuse(tmp_path):
    folder = scan_image_folder(SAMPLE)
    rows = split_rows(folder, seed=3)
    path = write_split_csv(rows, tmp_path / "split.csv", folder.root)
    text = path.read_text().splitlines()
    assert text[0] == "file,label,is_valid"
    assert text[1].startswith("daisy/")
    assert read_split_csv(path, folder.root) == rows
    assert rows_from_split_file(folder, path) == rows


def test_split_file_from_another_folder_is_refused(tmp_path):
    other = make_folder(tmp_path / "other", {"rose": 3, "tulip": 3})
    rows = split_rows(scan_image_folder(SAMPLE), seed=3)
    path = write_split_csv(rows, tmp_path / "split.csv", SAMPLE)
    with pytest.raises(FlowerfastError, match="does not belong to this data folder"):
        rows_from_split_file(scan_image_folder(other), path)


def test_train_and_valid_subfolders_are_used_as_given(tmp_path):
    make_folder(tmp_path / "d" / "train", {"rose": 6, "tulip": 6})
    valid = tmp_path / "d" / "val"
    for cls in ("rose", "tulip"):
        (valid / cls).mkdir(parents=True)
        for f in sample_files(cls)[10:13]:
            shutil.copy(f, valid / cls / f.name)
    data = load_data(tmp_path / "d", size=32, bs=4)
    assert data.preset_split
    assert data.n_train == 12 and data.n_valid == 6
    assert all(("val" in r.file.parts) == r.is_valid for r in data.rows)
    xb, yb = data.dls.one_batch()
    assert tuple(xb.shape) == (4, 3, 32, 32)


def test_valid_folder_with_unknown_class_is_refused(tmp_path):
    make_folder(tmp_path / "d" / "train", {"rose": 3, "tulip": 3})
    make_folder(tmp_path / "d" / "valid", {"rose": 2, "daisy": 2})
    with pytest.raises(FlowerfastError, match="lacks: daisy"):
        scan_image_folder(tmp_path / "d")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "data folder not found"),
        (lambda p: p.mkdir(), "no images found"),
        (lambda p: make_folder(p, {"rose": 3}), "only one class found"),
        (
            lambda p: (make_folder(p, {"rose": 3, "tulip": 3}), (p / "daisy").mkdir()),
            r"class folder .*daisy holds no images",
        ),
    ],
)
def test_bad_folders_are_refused_by_message(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(FlowerfastError, match=message):
        scan_image_folder(root)


def test_classes_with_no_or_few_training_images_are_warned_about(tmp_path, runner):
    """A class of one photo lands wholly in validation with this seed; another has 3 training
    images. Both are named in a warning line and in config.json, and training still runs."""
    import json

    from tests.conftest import invoke

    data = make_folder(tmp_path / "d", {"daisy": 20, "rose": 4, "tulip": 1})
    rows = split_rows(scan_image_folder(data), seed=42)
    train = {c: sum(1 for r in rows if r.label == c and not r.is_valid) for c in ("daisy", "rose", "tulip")}
    result = invoke(
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
            "--epochs",
            "1",
            "--bs",
            "4",
            "--device",
            "cpu",
            "--out",
            tmp_path / "run",
        ],
    )
    assert result.exit_code == 0, result.output

    def expected(c: str) -> str:
        n = train[c]
        return (
            f"warning: class {c} has no training image (all its images are in validation)"
            if n == 0
            else f"warning: class {c} has only {n} training image(s)"
        )

    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: class ")]
    assert len(lines) == 2 and all(line.startswith(expected(c)) for line, c in zip(lines, ("rose", "tulip")))
    expected = [expected("rose"), expected("tulip")]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert sum(w.startswith("class ") for w in config["warnings"]) == len(expected)


def test_the_default_split_is_stratified_every_class_on_both_sides(tmp_path):
    data = make_folder(tmp_path / "d", {"daisy": 20, "rose": 3, "tulip": 2})
    folder = scan_image_folder(data)
    rows = split_rows(folder, valid_pct=0.2, seed=42)
    sides = {c: [r.is_valid for r in rows if r.label == c] for c in ("daisy", "rose", "tulip")}
    assert {c: sum(v) for c, v in sides.items()} == {"daisy": 4, "rose": 1, "tulip": 1}
    assert all(not all(v) for v in sides.values())  # a training image in every class
    shutil.copy(sample_files("daisy")[-1], data / "daisy" / "zz-new.jpg")  # one class grows
    again = split_rows(scan_image_folder(data), valid_pct=0.2, seed=42)
    others = lambda rs: {(r.file, r.is_valid) for r in rs if r.label != "daisy"}  # noqa: E731
    assert others(again) == others(rows)  # the other classes' split is unchanged


def test_no_stratify_is_fastais_random_splitter(tmp_path):
    from fastai.data.transforms import RandomSplitter

    folder = scan_image_folder(make_folder(tmp_path / "d", {"daisy": 20, "rose": 3, "tulip": 2}))
    rows = split_rows(folder, valid_pct=0.2, seed=42, stratify=False)
    _, valid_idx = RandomSplitter(valid_pct=0.2, seed=42)(folder.files)
    assert [i for i, r in enumerate(rows) if r.is_valid] == sorted(int(i) for i in valid_idx)


def test_imbalanced_classes_are_warned_about_and_balanced_weights_follow_sklearn(tmp_path, runner):
    import json

    from sklearn.utils.class_weight import compute_class_weight

    from tests.conftest import invoke

    data = make_folder(tmp_path / "d", {"daisy": 40, "rose": 5, "tulip": 3})
    result = invoke(
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
            "--epochs",
            "1",
            "--bs",
            "8",
            "--device",
            "cpu",
            "--class-weights",
            "balanced",
            "--out",
            tmp_path / "run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "warning: classes are imbalanced: daisy has 32 training images, tulip 2 (16:1); consider "
        "--class-weights balanced" in result.stderr
    )
    assert (
        "classes (3, train/valid): daisy 32/8, rose 4/1, tulip 2/1; loss weighted by class (balanced)" in result.stdout
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    rows = read_split_csv(tmp_path / "run" / "split.csv")
    labels = [r.label for r in rows if not r.is_valid]
    expected = compute_class_weight("balanced", classes=np.array(["daisy", "rose", "tulip"]), y=np.array(labels))
    assert list(config["class_weights"].values()) == pytest.approx(list(expected))
    assert config["class_counts"] == {
        "daisy": {"train": 32, "valid": 8},
        "rose": {"train": 4, "valid": 1},
        "tulip": {"train": 2, "valid": 1},
    }


def test_balanced_weights_reach_the_loss():
    import torch

    from flowerfast.data.split import balanced_class_weights
    from flowerfast.training.learner import create_learner

    data = load_data(None, size=32, bs=8, device=torch.device("cpu"))
    weights = balanced_class_weights(data.rows, data.classes)
    bundle = create_learner(
        data,
        arch="resnet18",
        size=32,
        pretrained=False,
        device=torch.device("cpu"),
        class_weights=[1.0, 2.0, 3.0, 4.0, 5.0],
    )
    assert bundle.learn.loss_func.weight.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert weights == pytest.approx([1.0] * 5)  # the embedded sample is balanced


def test_the_scan_and_the_clean_train_pass_report_progress(tmp_path):
    """Every image checked by the scan, and every batch of the clean-train pass, is a progress
    step the CLI shows as a bar (and, for big folders, as log lines)."""
    import flowerfast
    from flowerfast.core.progress import Reporter

    class Recording(Reporter):
        def __init__(self):
            self.started, self.done = [], {}

        def batches_started(self, kind, total, epoch=None):
            self.started.append((kind, total))

        def batch_done(self, kind):
            self.done[kind] = self.done.get(kind, 0) + 1

    reporter = Recording()
    flowerfast.train(
        arch="resnet18",
        pretrained=False,
        size=32,
        epochs=1,
        bs=16,
        device="cpu",
        out=tmp_path / "run",
        reporter=reporter,
    )
    assert ("scan", 200) in reporter.started and reporter.done["scan"] == 200
    clean = [total for kind, total in reporter.started if kind == "clean-train"]
    assert clean == [3] and reporter.done["clean-train"] == 3  # 40 images (a quarter of 160) in batches of 16
