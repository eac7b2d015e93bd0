"""``flowerfast evaluate``: metrics equal to ones computed by hand from the predictions."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowerfast
from flowerfast.cli import app
from flowerfast.core.plots import confusion_png, mistakes_png
from flowerfast.data.folders import default_data_dir
from flowerfast.infer.evaluate import confusion_title, save_report
from flowerfast.infer.photosets import TrainingOverlapWarning

SAMPLE = default_data_dir()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_metrics_equal_hand_computed(run_dir, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["evaluate", str(run_dir), str(SAMPLE), "--json", "--out", str(out), "--mistakes", "5", "--device", "cpu"]
    )  # compared with the API on the CPU below
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    model = flowerfast.load_model(run_dir, device="cpu")
    files = sorted(SAMPLE.glob("*/*.jpg"))
    truth = [f.parent.name for f in files]
    preds = model.predict(files)
    guess = [p.predicted for p in preds]
    classes = model.classes
    n = len(files)
    assert report["n_images"] == n == 200
    assert report["accuracy"] == pytest.approx(sum(t == g for t, g in zip(truth, guess)) / n)
    confusion = [[sum(1 for t, g in zip(truth, guess) if t == a and g == b) for b in classes] for a in classes]
    assert report["confusion"] == confusion
    for c, m in zip(classes, report["per_class"]):
        tp = sum(1 for t, g in zip(truth, guess) if t == c and g == c)
        n_pred, n_true = guess.count(c), truth.count(c)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert (m["name"], m["support"]) == (c, n_true)
        assert m["precision"] == pytest.approx(precision) and m["recall"] == pytest.approx(recall)
        assert m["f1"] == pytest.approx(f1)

    wrong = sorted((p.probability for p, t in zip(preds, truth) if p.predicted != t), reverse=True)
    mistakes = report["mistakes"]
    assert len(mistakes) == min(5, len(wrong))
    assert [m["probability"] for m in mistakes] == pytest.approx(wrong[: len(mistakes)], abs=1e-6)
    assert all(m["true"] != m["predicted"] for m in mistakes)

    assert Path(report["out"]) == out
    for name in ("metrics.json", "predictions.csv", "confusion.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert len(mistakes) == 5  # a 2-epoch model at 32 px gets more than 5 of 200 photos wrong
    assert (out / "mistakes.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text())["confusion"] == confusion


def test_table_output_and_default_folder(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", str(run_dir), str(SAMPLE), "--mistakes", "2"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "confusion" in result.stdout and "per class" in result.stdout
    (report_dir,) = (tmp_path / "runs").glob("evaluate-*")
    assert (report_dir / "confusion.png").exists()


def test_python_api_equals_cli_json(run_dir, tmp_path):
    import flowerfast.infer.evaluate  # noqa: F401  (importing the module must not hide the function)

    cli = runner.invoke(
        app, ["evaluate", str(run_dir), str(SAMPLE), "--json", "--mistakes", "0", "--out", str(tmp_path / "cli")]
    )
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout)

    with pytest.warns(TrainingOverlapWarning, match="160 of 200 images"):  # the run trained on them
        result = flowerfast.evaluate(run_dir, SAMPLE, mistakes=0)
    assert isinstance(result, flowerfast.EvaluationResult) and result.mistakes == []
    assert result.n_images == expected["n_images"] == 200
    assert result.classes == expected["classes"]
    assert result.accuracy == expected["accuracy"]
    assert result.confusion == expected["confusion"]
    assert [asdict(m) for m in result.per_class] == expected["per_class"]
    assert result.macro_f1 == pytest.approx(expected["macro_f1"])
    # plain Python numbers, not numpy's
    assert type(result.accuracy) is float
    assert all(type(v) is int for row in result.confusion for v in row)
    for m in result.per_class:
        assert [type(x) for x in (m.precision, m.recall, m.f1, m.support)] == [float, float, float, int]


def test_confusion_png_is_the_shared_plot(run_dir, tmp_path):
    """evaluate's confusion.png is drawn by plots.confusion_png, as the comparison report's are."""
    with pytest.warns(TrainingOverlapWarning, match="160 of 200 images"):  # the run trained on them
        result = flowerfast.evaluate(run_dir, SAMPLE, mistakes=3)
    files = save_report(result, tmp_path / "report")
    assert files.confusion.read_bytes() == confusion_png(confusion_title(result), result.classes, result.confusion)
    assert len(result.mistakes) == 3
    assert files.mistakes.read_bytes() == mistakes_png(result.mistakes)


def test_unknown_classes_are_named(run_dir, tmp_path):
    for name in ("daisy", "orchid", "lily"):
        (tmp_path / name).mkdir()
        shutil.copy(next((SAMPLE / "daisy").glob("*.jpg")), tmp_path / name / "a.jpg")
    result = runner.invoke(app, ["evaluate", str(run_dir), str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "does not know: lily, orchid" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{run}", "{tmp}/missing"], "data folder not found"),
        (["{tmp}/no-model", "{sample}"], "model not found"),
        (["{run}", "{sample}", "--mistakes", "-1"], "--mistakes must be 0 or more"),
    ],
)
def test_bad_input(run_dir, tmp_path, args, message):
    args = [a.format(run=run_dir, tmp=tmp_path, sample=SAMPLE) for a in args]
    result = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and message in result.stderr


def test_evaluate_a_run_without_a_folder_scores_its_validation_split(run_dir, tmp_path):
    from flowerfast.infer.evaluate import evaluate
    from flowerfast.runs.folder import RunFolder

    run = RunFolder(run_dir)
    result = evaluate(run_dir, device="cpu")
    predictions = run.read_valid_predictions()
    assert result.n_images == len(predictions) and result.trained_on == 0
    assert result.source == f"validation split of {run_dir}"
    assert result.accuracy == pytest.approx(sum(p.correct for p in predictions) / len(predictions))
    assert result.accuracy == pytest.approx(run.read_summary().best_valid_accuracy_rescored)
    cli = invoke("evaluate", run_dir, "--out", tmp_path / "ev")
    assert cli.exit_code == 0, cli.output
    assert f"on {len(predictions)} images (validation split of {run_dir})" in cli.stdout


def test_evaluate_warns_when_the_folder_holds_training_images_by_path_or_content(run_dir, tmp_path):
    import shutil

    from flowerfast.runs.folder import RunFolder

    run = RunFolder(run_dir)
    data = Path(run.read_config().data)
    rows = run.read_split(data)
    classes = sorted({r.label for r in rows})[:2]
    train = [r for c in classes for r in [r for r in rows if r.label == c and not r.is_valid][:2]][:3]
    valid = [next(r for r in rows if r.label == c and r.is_valid) for c in classes]
    folder = tmp_path / "mixed"
    for i, r in enumerate(train + valid):
        (folder / r.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.file, folder / r.label / f"renamed-{i}.jpg")  # the same bytes under another name
    (folder / train[0].label / "link.jpg").symlink_to(train[1].file)  # the same file by path
    result = invoke("evaluate", run_dir, folder, "--out", tmp_path / "ev", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trained_on"] == 4
    assert (
        "warning: 4 of 6 images (67%) were in the model's training set (same file or same content): the "
        f"accuracy is optimistic. `flowerfast evaluate {run_dir}` scores its validation split"
    ) in result.stderr


def test_evaluate_without_a_folder_needs_a_run(run_dir, tmp_path):
    import shutil

    shutil.copy(run_dir / "best.safetensors", tmp_path / "m.safetensors")
    result = invoke("evaluate", tmp_path / "m.safetensors")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: give a folder of labelled images to evaluate on; only a run folder (or "
        "a model in one) can be scored on its own validation split without one"
    )
