"""Labels from a table: a CSV, Label Studio's exports and Roboflow's, read into the photos and labels
a scan of class folders gives, with their errors in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.folders import scan_image_folder
from flowerfast.data.labelfiles import scan_data
from flowerfast.runs.folder import read_split_csv
from tests.conftest import SAMPLE, invoke, sample_files

CLASSES = ("daisy", "rose", "tulip")


@pytest.fixture()
def flat(tmp_path) -> tuple[Path, dict[str, str]]:
    """Photos of three classes in one flat folder (no class folders), and each one's class."""
    root = tmp_path / "photos"
    root.mkdir()
    truth = {}
    for cls in CLASSES:
        for f in sample_files(cls, 8):
            shutil.copy(f, root / f.name)
            truth[f.name] = cls
    return root, truth


def write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labels_by_name(folder) -> dict[str, str]:
    return {f.name: label for f, label in zip(folder.files, folder.labels)}


def test_a_csv_labels_a_flat_folder_like_class_folders_would(flat, tmp_path):
    root, truth = flat
    table = write_csv(tmp_path / "labels.csv", ["filename", "class"], sorted(truth.items()))
    folder = scan_data(root, labels=table)
    assert labels_by_name(folder) == truth
    assert folder.classes == sorted(CLASSES) and folder.preset_split is None and not folder.skipped
    by_folders = scan_image_folder(SAMPLE)
    assert set(labels_by_name(by_folders).items()) >= set(truth.items())


def test_train_with_labels_writes_the_tables_labels_into_its_split(runner, flat, tmp_path):
    root, truth = flat
    table = write_csv(tmp_path / "labels.csv", ["file", "label"], sorted(truth.items()))
    out = tmp_path / "run"
    args = ["train", "--data", root, "--labels", table, "--arch", "resnet18", "--no-pretrained", "--size", "32"]
    result = invoke(runner, [*args, "--epochs", "1", "--bs", "8", "--device", "cpu", "--out", out])
    assert result.exit_code == 0, result.output
    rows = read_split_csv(out / "split.csv", root)
    assert {r.file.name: r.label for r in rows} == truth
    assert json.loads((out / "config.json").read_text())["options"]["labels"] == str(table)


def test_a_split_column_presets_the_split_and_test_rows_are_left_out(flat, tmp_path):
    root, truth = flat
    names = sorted(truth)
    sides = ["valid" if i % 4 == 0 else "test" if i % 4 == 1 else "train" for i in range(len(names))]
    table = write_csv(tmp_path / "l.csv", ["image", "label", "split"], [(n, truth[n], s) for n, s in zip(names, sides)])
    folder = scan_data(root, labels=table)
    got = {f.name: v for f, v in zip(folder.files, folder.preset_split)}
    assert got == {n: s == "valid" for n, s in zip(names, sides) if s != "test"}


def label_studio_task(i: int, name: str, choices: list[str], cancelled_choice: str | None = None) -> dict:
    annotations = [{"was_cancelled": False, "result": [{"type": "choices", "value": {"choices": choices}}]}]
    if cancelled_choice is not None:
        annotations.append(
            {"was_cancelled": True, "result": [{"type": "choices", "value": {"choices": [cancelled_choice]}}]}
        )
    return {"id": i, "data": {"image": f"/data/upload/7/{i:08x}-{name}"}, "annotations": annotations}


def test_label_studios_json_export_finds_uploads_by_name_and_skips_cancelled_annotations(flat, tmp_path):
    root, truth = flat
    tasks = [label_studio_task(i, n, [c], cancelled_choice="tulip") for i, (n, c) in enumerate(sorted(truth.items()))]
    tasks.append({"id": 999, "data": {"image": "/data/upload/7/0000ffff-gone.jpg"}, "annotations": []})
    export = tmp_path / "project.json"
    export.write_text(json.dumps(tasks))
    folder = scan_data(root, labels=export)
    assert labels_by_name(folder) == truth
    assert [s.path.name for s in folder.skipped] == ["0000ffff-gone.jpg"]
    assert "not found under" in folder.skipped[0].reason


def test_label_studios_json_min_and_csv_exports_with_local_files_and_several_choices(flat, tmp_path):
    root, truth = flat
    names = sorted(truth)
    minimal = [{"image": f"/data/local-files/?d=photos/{n}", "choice": truth[n]} for n in names]
    (tmp_path / "min.json").write_text(json.dumps(minimal))
    assert labels_by_name(scan_data(root, labels=tmp_path / "min.json")) == truth
    several = [(f"/data/local-files/?d=photos/{n}", json.dumps({"choices": [truth[n], "flower"]})) for n in names]
    table = write_csv(tmp_path / "ls.csv", ["image", "choice"], several)
    folder = scan_data(root, labels=table, multi_label=True)
    assert labels_by_name(folder) == {n: f"{truth[n]};flower" for n in names}
    assert folder.multi_label and folder.classes == sorted([*CLASSES, "flower"])


def test_roboflows_multi_label_export_is_read_from_its_split_folders(tmp_path):
    root = tmp_path / "export"
    expected = {}
    for side, n in (("train", 6), ("valid", 2)):
        (root / side).mkdir(parents=True)
        rows = []
        for cls in CLASSES:
            for f in sample_files(cls, n):
                shutil.copy(f, root / side / f.name)
                hot = [int(c == cls) for c in CLASSES] + [int(cls != "daisy")]
                rows.append([f.name, *hot])
                expected[f.name] = (";".join([cls] + (["red"] if cls != "daisy" else [])), side == "valid")
        write_csv(root / side / "_classes.csv", ["filename", *[f" {c}" for c in CLASSES], " red"], rows)
    folder = scan_data(root, multi_label=True)
    assert {f.name: (lbl, v) for f, lbl, v in zip(folder.files, folder.labels, folder.preset_split)} == expected
    with pytest.raises(FlowerfastError, match="several labels .*multi_label"):
        scan_data(root)


@pytest.mark.parametrize(
    "header, rows, pattern",
    [
        (["file", "colour"], [["a.jpg", "red"]], r"has no label column \(its header: file, colour\)"),
        (["file", "label"], [["nowhere.jpg", "rose"]], r"names no readable photo under .*not found under"),
        (["file", "label", "split"], [["x.jpg", "rose", "holdout"]], r"line 2: the split must be train, valid or test"),
    ],
)
def test_bad_label_files_get_one_line(flat, tmp_path, header, rows, pattern):
    root, _ = flat
    with pytest.raises(FlowerfastError, match=pattern):
        scan_data(root, labels=write_csv(tmp_path / "bad.csv", header, rows))


def test_two_labels_for_one_photo_and_an_ambiguous_name_are_refused(flat, tmp_path):
    root, truth = flat
    name = sorted(truth)[0]
    twice = write_csv(tmp_path / "twice.csv", ["file", "label"], [[name, "rose"], [name, "tulip"]])
    with pytest.raises(FlowerfastError, match=f"labels .*{name} twice, differently \\(rose and tulip\\)"):
        scan_data(root, labels=twice)
    (root / "copy").mkdir()
    shutil.copy(root / name, root / "copy" / name)
    by_name = write_csv(tmp_path / "ls.csv", ["image", "choice"], [[f"/data/upload/1/0badcafe-{name}", "rose"]])
    with pytest.raises(FlowerfastError, match="could be .* name it by its path"):
        scan_data(root, labels=by_name)


def test_the_cli_says_a_missing_labels_file_in_one_line(runner, tmp_path):
    result = invoke(runner, ["train", "--labels", tmp_path / "none.csv", "--out", tmp_path / "run"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"error: labels file not found: {tmp_path / 'none.csv'}"]
