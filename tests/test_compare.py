"""``flowerfast compare`` and ``flowerfast report`` end to end, on the embedded sample photos.

One real two-model comparison (tiny settings) runs once for the module; every test reads what it
wrote. Figures in the report are checked against the run folders' own files.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowerfast
from flowerfast.cli import app
from flowerfast.core.plots import confusion_png
from flowerfast.runs.folder import RunFolder, ValidPrediction

ARCHS = ("resnet18", "vgg11_bn")
REPORT_FILES = (
    "report.md",
    "report.json",
    "report.html",
    "curves.png",
    "per-class-accuracy.png",
    *[f"confusion-{a}.png" for a in ARCHS],
)


def _run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output  # stdout and stderr, interleaved


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "compare"
    result, text = _run(
        "compare",
        "--archs",
        ",".join(ARCHS),
        "--epochs",
        1,
        "--size",
        32,
        "--no-pretrained",
        "--clean-train-sample",
        16,
        "--bs",
        32,
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert result.exit_code == 0, text + repr(result.exception)
    return out, text


def test_compare_writes_every_run_and_report_file(comparison):
    out, text = comparison
    for arch in ARCHS:
        for name in ("split.csv", "history.csv", "summary.json", "valid_predictions.csv", "best.safetensors"):
            assert (out / arch / name).is_file(), f"{arch}/{name}"
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / ARCHS[0] / "split.csv").read_bytes() == (out / ARCHS[1] / "split.csv").read_bytes()
    for name in REPORT_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 + len(ARCHS)
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == list(ARCHS)
    # the terminal shows the summary and the verdict
    assert "summary" in text and "paired comparison" in text
    assert report["pairs"][0]["verdict"] in " ".join(text.split())


def test_per_epoch_tables_match_history(comparison):
    out, _ = comparison
    md = (out / "report.md").read_text()
    for arch in ARCHS:
        section = md.split(f"\n## {arch}\n", 1)[1].split("\n## ", 1)[0]
        rows = [
            [c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines()
            if re.match(r"\| \d+ \|", line)
        ]
        history = _read_csv(out / arch / "history.csv")
        assert len(rows) == len(history) >= 1
        for row, h in zip(rows, history):
            epoch, phase, acc_aug, acc_clean, acc_valid, train_loss, valid_loss, lr, seconds = row
            assert int(epoch) == int(h["epoch"]) and phase == h["phase"]
            for shown, key in (
                (acc_aug, "train_accuracy_aug"),
                (acc_clean, "train_accuracy_clean"),
                (acc_valid, "valid_accuracy"),
            ):
                assert float(shown.rstrip("%")) == pytest.approx(100 * float(h[key]), abs=0.051)
            assert float(train_loss) == pytest.approx(float(h["train_loss"]), abs=5e-5)
            assert float(valid_loss) == pytest.approx(float(h["valid_loss"]), abs=5e-5)
            assert float(lr) == pytest.approx(float(h["lr"]), rel=5e-3)
            assert float(seconds) == pytest.approx(float(h["seconds"]), abs=0.051)


def test_summary_matches_run_files(comparison):
    out, _ = comparison
    report = json.loads((out / "report.json").read_text())
    for m in report["models"]:
        summary = json.loads((out / m["name"] / "summary.json").read_text())
        s = m["summary"]
        assert s["best_valid_accuracy"] == summary["best_valid_accuracy"]
        assert s["best_epoch"] == summary["best_epoch"]
        assert s["parameters"] == summary["parameters"]
        assert s["model_bytes"] == (out / m["name"] / "best.safetensors").stat().st_size
        assert m["inference"]["latency_ms_per_image"] > 0 and m["inference"]["images_per_second"] > 0
        assert sum(map(sum, m["confusion_matrix"])) == report["split"]["n_valid"]


def test_paired_statistics_match_predictions(comparison):
    out, _ = comparison
    report = json.loads((out / "report.json").read_text())
    (pair,) = report["pairs"]
    a = {r["file"]: r["label"] == r["predicted"] for r in _read_csv(out / pair["a"] / "valid_predictions.csv")}
    b = {r["file"]: r["label"] == r["predicted"] for r in _read_csv(out / pair["b"] / "valid_predictions.csv")}
    assert set(a) == set(b) and pair["n_images"] == len(a) == report["split"]["n_valid"]
    only_a = sum(a[f] and not b[f] for f in a)
    only_b = sum(b[f] and not a[f] for f in a)
    assert (pair["only_a_correct"], pair["only_b_correct"]) == (only_a, only_b)
    assert pair["accuracy_a"] == pytest.approx(sum(a.values()) / len(a))
    assert pair["difference"] == pytest.approx((sum(a.values()) - sum(b.values())) / len(a))
    assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    assert pair["p_value"] == pytest.approx(flowerfast.mcnemar_exact(only_a, only_b))
    assert pair["significant"] == (pair["p_value"] < 0.05)
    expected = (
        f"no significant difference between {pair['a']} and {pair['b']}"
        if not pair["significant"]
        else "is better than"
    )
    assert expected in pair["verdict"] and "on this split (p" in pair["verdict"]


def test_report_rebuilt_from_runs_equals_compare_json(comparison, tmp_path):
    out, _ = comparison
    rebuilt = tmp_path / "rebuilt"
    result, text = _run("report", out / ARCHS[0], out / ARCHS[1], "--out", rebuilt)
    assert result.exit_code == 0, text
    for name in REPORT_FILES:
        assert (rebuilt / name).is_file(), name
    original = json.loads((out / "report.json").read_text())
    # inference speed is measured once and stored in each run folder, so even it is equal
    assert json.loads((rebuilt / "report.json").read_text()) == original
    assert (rebuilt / "report.md").read_text() == (out / "report.md").read_text()


def test_report_json_is_report_json_on_stdout(comparison, tmp_path):
    out, _ = comparison
    result = CliRunner().invoke(
        app, ["report", str(out / ARCHS[0]), str(out / ARCHS[1]), "--out", str(tmp_path / "r"), "--json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # stdout holds the JSON alone; progress went to stderr
    assert printed.pop("out") == str(tmp_path / "r")
    assert printed == json.loads((tmp_path / "r" / "report.json").read_text())


def test_python_api_report(comparison, tmp_path):
    out, _ = comparison
    import flowerfast.reporting.report  # noqa: F401  (importing the module must not hide the function)

    rep = flowerfast.report([out / a for a in ARCHS], out=tmp_path / "api")
    assert isinstance(rep, flowerfast.ComparisonReport)
    assert all(isinstance(m, flowerfast.ModelEntry) for m in rep.models)
    assert all(isinstance(p, flowerfast.PairResult) for p in rep.pairs)
    assert rep.to_dict() == json.loads((tmp_path / "api" / "report.json").read_text())
    assert rep.to_dict() == json.loads((out / "report.json").read_text())
    assert rep.verdicts == [p.verdict for p in rep.pairs]
    assert rep.out == tmp_path / "api" and {f.name for f in rep.files} == set(REPORT_FILES)


def test_confusion_plots_come_from_the_shared_plot_function(comparison):
    """The same drawing as ``evaluate``'s confusion.png (see test_evaluate): one function, one look."""
    out, _ = comparison
    report = json.loads((out / "report.json").read_text())
    for m in report["models"]:
        expected = confusion_png(f"confusion matrix: {m['name']}", report["split"]["classes"], m["confusion_matrix"])
        assert (out / m["confusion_plot"]).read_bytes() == expected


def _rewrite_predictions(run: Path, correct: bool) -> None:
    """Make the run's best model right on every validation image, or wrong on every one."""
    folder = RunFolder.open(run)
    classes = folder.read_summary().classes
    rewritten = []
    for p in folder.read_valid_predictions():
        guess = p.label if correct else classes[(classes.index(p.label) + 1) % len(classes)]
        rewritten.append(ValidPrediction(p.file, p.label, guess, 1.0, {c: float(c == guess) for c in classes}))
    folder.write_valid_predictions(rewritten, classes)


def test_tiny_p_value_is_shown_as_less_than_in_every_pairs_table(comparison, tmp_path):
    out, _ = comparison
    runs = [shutil.copytree(out / arch, tmp_path / arch, ignore=shutil.ignore_patterns("final.*")) for arch in ARCHS]
    _rewrite_predictions(runs[0], correct=True)
    _rewrite_predictions(runs[1], correct=False)
    result, text = _run("report", *runs, "--out", tmp_path / "rep")
    assert result.exit_code == 0, text + repr(result.exception)

    (pair,) = json.loads((tmp_path / "rep" / "report.json").read_text())["pairs"]
    assert pair["only_a_correct"] == pair["n_images"] >= 11 and pair["only_b_correct"] == 0
    assert pair["p_value"] < 0.001
    assert pair["verdict"] == f"{ARCHS[0]} is better than {ARCHS[1]} on this split (p < 0.001)"

    md = (tmp_path / "rep" / "report.md").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith(f"| {ARCHS[0]} | {ARCHS[1]} |")]
    assert row.endswith(" | < 0.001 |")
    html = (tmp_path / "rep" / "report.html").read_text()
    table = html.split("<h2>Paired comparison</h2>", 1)[1].split("</table>", 1)[0]
    assert "<td class=r>&lt; 0.001</td>" in table
    (terminal_row,) = [line for line in text.splitlines() if f"{ARCHS[0]} vs" in line]
    assert "< 0.001 │" in terminal_row
    for shown in (md, html, text):
        assert "= 0.001" not in shown and "| 0.001 |" not in shown and "│ 0.001 │" not in shown


def test_report_refuses_runs_on_different_splits(comparison, tmp_path):
    out, _ = comparison
    other = tmp_path / "other-run"
    shutil.copytree(out / ARCHS[1], other)
    rows = _read_csv(other / "split.csv")
    flipped = rows[0]["file"]
    rows[0]["is_valid"] = "0" if rows[0]["is_valid"] == "1" else "1"
    with open(other / "split.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "is_valid"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    result, text = _run("report", out / ARCHS[0], other, "--out", tmp_path / "refused")
    assert result.exit_code != 0
    message = " ".join(text.split())
    assert "not trained on the same split" in message and flipped in message and "other-run" in message
    assert "Traceback" not in text
    assert not (tmp_path / "refused" / "report.json").exists()


def test_report_needs_two_runs(comparison, tmp_path):
    out, _ = comparison
    result, text = _run("report", out / ARCHS[0], "--out", tmp_path / "one")
    assert result.exit_code != 0 and "at least 2 run folders" in " ".join(text.split())


@pytest.mark.parametrize(
    "archs, message",
    [
        ("resnet18", "at least 2 architectures"),
        ("resnet18,resnet18", "more than once"),
        ("resnet18,notanarch", "unknown architecture"),
    ],
)
def test_compare_refuses_bad_arch_lists(tmp_path, archs, message):
    result, text = _run("compare", "--archs", archs, "--epochs", 1, "--size", 32, "--out", tmp_path / "c")
    assert result.exit_code != 0
    assert message in " ".join(text.split())
    assert not (tmp_path / "c").exists()


def test_report_measures_speed_in_the_precision_asked(comparison, tmp_path):
    out, _ = comparison
    result, text = _run("report", out / ARCHS[0], out / ARCHS[1], "--precision", "bf16", "--out", tmp_path / "bf16")
    assert result.exit_code == 0, text
    report = json.loads((tmp_path / "bf16" / "report.json").read_text())
    assert [m["inference"]["precision"] for m in report["models"]] == ["bf16", "bf16"]
    original = json.loads((out / "report.json").read_text())  # the fp32 figures stay cached beside them
    assert [m["inference"].get("precision", "fp32") for m in original["models"]] == ["fp32", "fp32"]


def test_the_report_says_what_it_compares_and_html_shows_all_markdown_does(comparison):
    """Training settings, both parameter counts, latency with its range and the machine's load;
    every table cell of report.md is in report.html too."""
    import html
    import re

    out, _ = comparison
    md = (out / "report.md").read_text()
    assert "## Training settings" in md
    for setting in ("image size", "batch size", "epochs", "peak lr", "augmentation"):
        assert f"| {setting} |" in md
    assert "RandomErasing(p=0.25)" in md and "parameters (flowerfast archs)" in md
    assert re.search(r"\| \d+\.\d ms \(\d+\.\d-\d+\.\d\) \|", md)  # median (range)
    assert re.search(r"load average \d+\.\d\d on \d+ CPU cores while measuring", md)
    page = html.unescape((out / "report.html").read_text())
    cells = {c.strip() for line in md.splitlines() if line.startswith("| ") for c in line.strip("|").split(" | ")}
    missing = sorted(c for c in cells if c and c.replace("\\|", "|") not in page)
    assert not missing, missing
