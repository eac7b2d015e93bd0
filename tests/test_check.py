"""``flowerfast check``: copies of a photo (byte-identical, re-encoded, resized) within a class,
under two labels and across the split, tiny photos, unreadable files, class balance, and likely
label errors from a real run's out-of-sample probabilities; all on real photos."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

import flowerfast
from flowerfast.core.errors import FlowerfastError
from flowerfast.data.checks import check_split, duplicate_warnings
from flowerfast.data.folders import scan_image_folder
from flowerfast.data.hashes import _all_pairs, _banded_pairs, close_pairs, hash_photo
from flowerfast.data.split import split_rows
from flowerfast.runs.folder import RunFolder, SplitRow, write_split_csv
from tests.conftest import SHARED, invoke, make_folder, requires_shared, sample_files


def reencode(source: Path, target: Path, quality: int = 60, side: int | None = None) -> Path:
    """A near-identical copy: the same photo saved again at another JPEG quality, or resized."""
    with Image.open(source) as im:
        img = im.convert("RGB")
    if side is not None:
        img = img.resize((side, side), Image.BILINEAR)
    img.save(target, format="JPEG", quality=quality)
    return target


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """Three classes of 8 embedded photos, plus: a byte-identical copy within a class and one
    under another class, a copy re-encoded at quality 60 within a class and one resized to 112 px
    under another class, a tiny photo (48x36) and a truncated JPEG."""
    root = make_folder(tmp_path_factory.mktemp("messy") / "data", {"daisy": 8, "rose": 8, "tulip": 8})
    daisy, rose = sample_files("daisy"), sample_files("rose")
    shutil.copy(daisy[0], root / "daisy" / "same-daisy.jpg")
    shutil.copy(rose[0], root / "tulip" / "rose-as-tulip.jpg")
    reencode(daisy[1], root / "daisy" / "reencoded-daisy.jpg", quality=60)
    reencode(rose[1], root / "daisy" / "resized-rose.jpg", quality=90, side=112)
    with Image.open(daisy[9]) as im:
        im.convert("RGB").resize((48, 36)).save(root / "daisy" / "tiny.jpg", quality=90)
    (root / "rose" / "broken.jpg").write_bytes(rose[2].read_bytes()[:300])
    return root


def files_of(group: dict) -> set[str]:
    return {p["file"] for p in group["photos"]}


def test_copies_tiny_and_unreadable_photos_are_found_and_reported(messy, tmp_path):
    out = tmp_path / "check"
    result = flowerfast.check_data(messy, out=out)
    report = json.loads((out / "check.json").read_text())
    daisy, rose = sample_files("daisy"), sample_files("rose")
    identical = {frozenset(files_of(g)): g for g in report["identical"]}
    within = frozenset({f"daisy/{daisy[0].name}", "daisy/same-daisy.jpg"})
    across = frozenset({f"rose/{rose[0].name}", "tulip/rose-as-tulip.jpg"})
    assert set(identical) == {within, across}
    assert not identical[within]["cross_class"] and identical[across]["cross_class"]
    near = {frozenset(files_of(g)): g for g in report["near"]}
    reencoded = frozenset({f"daisy/{daisy[1].name}", "daisy/reencoded-daisy.jpg"})
    resized = frozenset({f"rose/{rose[1].name}", "daisy/resized-rose.jpg"})
    assert set(near) == {reencoded, resized}  # the byte-identical pairs are not listed again
    assert not near[reencoded]["cross_class"] and near[resized]["cross_class"]
    assert all(g["distance"] <= 4 for g in report["near"])
    assert [g["cross_class"] for g in report["near"]] == [True, False]  # the worst first
    assert [(t["file"], t["width"], t["height"]) for t in report["tiny"]] == [("daisy/tiny.jpg", 48, 36)]
    assert [u["file"] for u in report["unreadable"]] == ["rose/broken.jpg"]
    assert report["counts"]["identical_cross_class"] == 1 and report["counts"]["near_cross_class"] == 1
    assert report["photos"] == result.photos == 8 * 3 + 5
    page = (out / "check.html").read_text()
    for name in (
        "same-daisy.jpg",
        "rose-as-tulip.jpg",
        "reencoded-daisy.jpg",
        "resized-rose.jpg",
        "tiny.jpg",
        "broken.jpg",
    ):
        assert name in page, name
    assert page.count('src="data:image/jpeg;base64,') == 4 + 4 + 1  # a thumbnail per photo shown


def test_a_wider_distance_finds_more_and_a_bad_one_is_refused(messy):
    folder = scan_image_folder(messy)
    rows, split = check_split(folder)
    assert split == "stratified random split, seed 42, 20% validation"
    assert rows == split_rows(folder, valid_pct=0.2, seed=42)  # exactly the split train makes
    exact = flowerfast.check_data(folder, max_distance=0)
    assert all(g.distance == 0 for g in exact.near) and len(exact.identical) == 2
    with pytest.raises(FlowerfastError, match=r"max_distance must be from 0 to 63 bits"):
        flowerfast.check_data(folder, max_distance=64)


def test_copies_across_the_split_are_leakage_and_train_is_warned(tmp_path):
    """A train/ + valid/ folder whose valid/ holds a copy of a training photo and a re-encoded one;
    the same photos split by an earlier run's split.csv."""
    root = tmp_path / "data"
    daisy, tulip = sample_files("daisy"), sample_files("tulip")
    for side, picks in (("train", slice(0, 6)), ("valid", slice(6, 9))):
        for cls, files in (("daisy", daisy), ("tulip", tulip)):
            (root / side / cls).mkdir(parents=True)
            for f in files[picks]:
                shutil.copy(f, root / side / cls / f.name)
    shutil.copy(daisy[0], root / "valid" / "daisy" / "copy.jpg")
    reencode(tulip[0], root / "valid" / "daisy" / "tulip-as-daisy.jpg")
    result = flowerfast.check_data(root)
    assert result.split == "the folder's own train/valid split"
    assert [g.straddles_split for g in result.identical] == [True]
    assert [(g.straddles_split, g.cross_class) for g in result.near] == [(True, True)]
    assert result.leaked == [root / "valid" / "daisy" / "copy.jpg", root / "valid" / "daisy" / "tulip-as-daisy.jpg"]
    rows = split_rows(scan_image_folder(root))
    notes = duplicate_warnings(rows, data="photos")
    assert notes == [
        "2 photos in validation have a byte-identical or near-identical copy in training (leakage inflates "
        "validation accuracy): run flowerfast check photos",
        "2 photos are byte-identical or near-identical copies under another label (one photo, two classes: "
        "one label is wrong): run flowerfast check photos",
    ]
    clean = [r for r in rows if r.file.name not in ("copy.jpg", "tulip-as-daisy.jpg")]
    assert duplicate_warnings(clean) == []
    moved = [SplitRow(r.file, r.label, False) for r in rows]  # an earlier run that trained on all but one
    moved[-1] = SplitRow(moved[-1].file, moved[-1].label, True)
    split = write_split_csv(moved, tmp_path / "split.csv", root)
    again = flowerfast.check_data(root, split_file=split)
    assert again.split == f"split from {split}" and again.leaked == []


def test_the_pair_search_is_exact_for_every_distance():
    """Multi-index hashing (up to 7 bits) and the blockwise all-pairs search give the same pairs,
    and both the pairs a plain double loop gives."""
    import numpy as np

    rng = random.Random(1)
    base = [rng.getrandbits(64) for _ in range(600)]
    hashes = base + [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in base[:40]] + base[:5]
    values = np.array(hashes, dtype=np.uint64)
    every = [(i, j, (a ^ hashes[j]).bit_count()) for i, a in enumerate(hashes) for j in range(i + 1, len(hashes))]
    for bits in (0, 2, 4, 7, 12):
        loop = {p for p in every if p[2] <= bits}
        assert close_pairs(hashes, bits) == sorted(loop), bits
        if bits <= 7:
            assert _banded_pairs(values, bits) == _all_pairs(values, bits) == loop, bits
    assert len(close_pairs(hashes, 4)) >= 45


def test_the_hash_of_a_small_photo_is_imagehash_s_dhash():
    import imagehash

    photo = sample_files("rose", 1)[0]
    with Image.open(photo) as im:
        assert hash_photo(photo).dhash == int(str(imagehash.dhash(im)), 16)
        assert (hash_photo(photo).width, hash_photo(photo).height) == im.size


def test_the_command_prints_the_findings_and_writes_its_files(messy, tmp_path, runner):
    out = tmp_path / "out"
    result = invoke(runner, ["check", messy, "--out", out])
    assert result.exit_code == 0, result.output
    assert "byte-identical: 2 group(s) of 4 photos; 1 under two labels" in result.stdout
    assert "tulip/rose-as-tulip.jpg (tulip" in result.stdout
    assert "near-identical (within 4 bits): 2 pair(s); 1 under two labels" in result.stdout
    assert "daisy/tiny.jpg (daisy" in result.stdout and "48x36" in result.stdout
    assert (out / "check.json").is_file() and (out / "check.html").is_file()
    as_json = invoke(runner, ["check", messy, "-o", tmp_path / "json", "--json"])
    assert json.loads(as_json.stdout)["counts"]["tiny"] == 1


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["/no/such/folder"], r"^error: data folder not found: /no/such/folder$"),
        (["--max-distance", "70"], r"^error: --max-distance must be from 0 to 63 bits"),
        (["--valid-pct", "1.5"], r"^error: --valid-pct must be between 0 and 1"),
        (["--top", "0", "--model", "."], r"^error: --top must be at least 1"),
        (["--folds", "1"], r"^error: --folds must be at least 2"),
    ],
)
def test_bad_input_is_one_line(runner, tmp_path, args, pattern):
    import re

    result = invoke(runner, ["check", *args, "--out", tmp_path / "out"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(pattern, result.stderr.strip()), result.stderr
    assert not (tmp_path / "out").exists()


def test_an_existing_report_is_never_overwritten(runner, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "check.json").write_text("{}")
    result = invoke(runner, ["check", "--out", tmp_path / "out"])
    assert result.exit_code != 0 and "is not empty: choose a new --out" in result.stderr
    assert (tmp_path / "out" / "check.json").read_text() == "{}"


def test_without_cleanlab_the_error_names_the_extra(monkeypatch, tiny_run, runner, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else real(name, *a))
    result = invoke(runner, ["check", "--model", tiny_run, "--out", tmp_path / "out"])
    assert result.exit_code != 0
    assert result.stderr.strip() == 'error: finding label errors needs cleanlab: pip install "flowerfast[cleanlab]"'


@requires_shared
def test_the_shared_flowers_hold_a_photo_under_two_labels():
    result = flowerfast.check_data(SHARED)
    pairs = [{p.file.relative_to(SHARED).as_posix() for p in g.photos} for g in result.identical if g.cross_class]
    assert {"rose/17104364030_ee31ee279b_n.jpg", "tulip/17104364030_ee31ee279b_n.jpg"} in pairs
    assert len(result.near) >= 9 and result.leaked


# --- likely label errors (cleanlab) -------------------------------------------------------------


def test_a_daisy_filed_as_a_tulip_is_a_suspect(lite_run, tmp_path, runner):
    """The embedded photos with two of the run's validation daisies (those it is surest of) moved
    into tulip/: the run's out-of-sample probabilities, matched to the moved files by their bytes,
    make cleanlab rank both among the likely label errors."""
    data = make_folder(tmp_path / "data", {c: 40 for c in ("daisy", "dandelion", "rose", "sunflower", "tulip")})
    daisies = sorted(
        (p for p in RunFolder(lite_run).read_valid_predictions() if p.label == p.predicted == "daisy"),
        key=lambda p: -p.confidence,
    )[:2]
    moved = []
    for p in daisies:
        name = Path(p.file).name
        shutil.move(data / "daisy" / name, data / "tulip" / name)
        moved.append(f"tulip/{name}")
    out = tmp_path / "check"
    result = invoke(runner, ["check", data, "--model", lite_run, "--top", "10", "--out", out])
    assert result.exit_code == 0, result.output
    issues = json.loads((out / "check.json").read_text())["label_issues"]
    assert issues["method"] == "validation split" and issues["ranked"] == 40
    suspects = {s["file"]: s for s in issues["suspects"]}
    for file in moved:
        assert suspects[file]["label"] == "tulip" and suspects[file]["predicted"] == "daisy", suspects
        assert suspects[file]["label_probability"] < 0.2
    assert all(name in (out / "check.html").read_text() for name in moved)
    assert "likely label errors (cleanlab, validation split)" in result.stdout


def test_folds_give_every_photo_an_out_of_sample_probability(tiny_run, tmp_path):
    """Two models with the tiny run's options (one epoch here), each trained on one fold of a
    stratified split and predicting the other: every photo ranked, by the model that held it out."""
    data = make_folder(tmp_path / "data", {"daisy": 8, "rose": 8, "tulip": 8})
    out = tmp_path / "check"
    result = flowerfast.check_data(data, out=out, model=tiny_run, folds=2, epochs=1, bs=8, threads=1)
    assert result.label_issues.method == "folds" and result.label_issues.ranked == 24
    held_out = []
    for k in (1, 2):
        run = RunFolder(out / "folds" / f"fold-{k}")
        assert run.read_config().options.arch == "resnet18" and run.read_config().size == 32
        held_out.append({p.file for p in run.read_valid_predictions()})
        valid = [r for r in run.read_split(data) if r.is_valid]
        assert sorted(r.label for r in valid) == ["daisy"] * 4 + ["rose"] * 4 + ["tulip"] * 4
    assert not held_out[0] & held_out[1] and len(held_out[0] | held_out[1]) == 24
    assert json.loads((out / "check.json").read_text())["label_issues"]["ranked"] == 24


def test_a_model_that_never_saw_the_photos_out_of_sample_is_refused(tiny_run, tmp_path):
    trained_on = [r for r in RunFolder(tiny_run).read_split(flowerfast.default_data_dir()) if not r.is_valid]
    for row in trained_on[::8]:
        (tmp_path / "data" / row.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(row.file, tmp_path / "data" / row.label / row.file.name)
    with pytest.raises(FlowerfastError, match=r"none of the photos of .* is in the validation split of"):
        flowerfast.check_data(tmp_path / "data", model=tiny_run)
