"""Experiment trackers, read back offline: TensorBoard event files, an MLflow file store and a
W&B offline run, all from one real training run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flowerfast.runs.folder import RunFolder
from tests.conftest import invoke


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One 2-epoch run logged to all three trackers, each writing to a folder of the test."""
    import os

    for extra in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(extra, reason=f"the {extra} extra is not installed")
    tmp = tmp_path_factory.mktemp("tracked")
    store = tmp / "mlruns"
    env = {
        "MLFLOW_TRACKING_URI": store.as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
    }
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from typer.testing import CliRunner

        out = tmp / "run"
        result = invoke(
            CliRunner(),
            [
                "train",
                "--arch",
                "resnet18",
                "--no-pretrained",
                "--size",
                "32",
                "--epochs",
                "2",
                "--bs",
                "16",
                "--device",
                "cpu",
                "--tracker",
                "tensorboard",
                "--tracker",
                "mlflow",
                "--tracker",
                "wandb",
                "--out",
                out,
            ],
        )
        assert result.exit_code == 0, result.output
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, store


def test_tensorboard_event_files_hold_every_epoch_and_the_pictures(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tracked
    history = RunFolder(out).read_history()
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    valid = events.Scalars("valid_accuracy")
    assert [e.step for e in valid] == [1, 2]
    assert [e.value for e in valid] == pytest.approx([h.valid_accuracy for h in history], abs=1e-6)
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx([h.train_loss for h in history], rel=1e-5)
    assert {"curves", "confusion", "batch"} <= set(events.Tags()["images"])


def test_mlflow_run_holds_params_metrics_and_artifacts(tracked):
    from mlflow import MlflowClient

    out, store = tracked
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("flowerfast").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["options.arch"] == "resnet18" and run.data.params["classes"].startswith('["daisy"')
    history = RunFolder(out).read_history()
    metric = client.get_metric_history(run.info.run_id, "valid_accuracy")
    assert [(m.step, m.value) for m in metric] == [(h.epoch, pytest.approx(h.valid_accuracy)) for h in history]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.safetensors", "best.json", "curves.png", "confusion.png", "batch.png"} <= artifacts


def wandb_records(path: Path):
    """The protobuf records of a W&B run file (``run-*.wandb``): a 7-byte ``:W&B`` header, then
    LevelDB's log format (32 KiB blocks; each chunk a CRC, a length, a type: full, first, middle,
    last). W&B's own reader of this file is not part of its Python package."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little left in this block for a chunk header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def items_dict(items) -> dict:
    """W&B's key/value items (a key, or a nested key path) as a nested dict of JSON values."""
    out: dict = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def test_wandb_offline_run_holds_config_metrics_pictures_and_model(tracked):
    out, _ = tracked
    (run_file,) = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    history, config, artifacts = [], {}, []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(items_dict(record.history.item))
        elif kind == "run":
            config.update(items_dict(record.run.config.update))
        elif kind == "config":
            config.update(items_dict(record.config.update))
        elif kind == "artifact":
            artifacts.append(record.artifact)
    epochs = [h for h in history if "valid_accuracy" in h]
    expected = RunFolder(out).read_history()
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert [h["valid_accuracy"] for h in epochs] == pytest.approx([r.valid_accuracy for r in expected])
    assert config["arch"] == "resnet18" and config["lr"] == pytest.approx(3e-3)
    assert config["options"]["epochs"] == 2 and config["classes"] == [
        "daisy",
        "dandelion",
        "rose",
        "sunflower",
        "tulip",
    ]
    pictures = {k for h in history for k, v in h.items() if isinstance(v, dict) and v.get("_type") == "image-file"}
    assert {"curves", "confusion", "batch"} <= pictures
    assert [a.type for a in artifacts] == ["model"]
    assert {e.path for e in artifacts[0].manifest.contents} == {"best.safetensors", "best.json"}


def test_a_tracker_whose_extra_is_missing_is_one_line(tmp_path, runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = invoke(runner, ["train", "--tracker", "mlflow", "--out", tmp_path / "run"])
    assert result.exit_code == 1
    assert result.stderr.strip() == 'error: --tracker mlflow needs the mlflow extra: pip install "flowerfast[mlflow]"'
    assert not (tmp_path / "run").exists()


def test_the_registry_is_the_tracker_modules_and_the_cli_offers_them():
    """Each module of ``flowerfast/training/trackers/`` is a tracker named as its file (a new file
    is a new tracker), and ``--tracker`` offers exactly those."""
    from flowerfast.cli.options import TrackerChoice
    from flowerfast.training import trackers
    from flowerfast.training.trackers._base import Tracker

    names = trackers.tracker_names()
    assert sorted(names) == ["mlflow", "tensorboard", "wandb"]
    on_disk = sorted(p.stem for p in Path(trackers.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(names) == on_disk
    assert [c.value for c in TrackerChoice] == list(names)
    for name in names:
        cls = trackers.tracker_class(name)
        assert issubclass(cls, Tracker) and cls.requires and cls.extra == name


def test_the_mlflow_module_imports_the_real_mlflow():
    """``flowerfast/training/trackers/mlflow.py`` must not shadow MLflow for its own imports."""
    import importlib

    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    importlib.import_module("flowerfast.training.trackers.mlflow")
    assert importlib.import_module("mlflow").__name__ == "mlflow" and hasattr(sys.modules["mlflow"], "MlflowClient")


def test_an_unknown_tracker_is_one_line_before_anything_runs(tmp_path, runner):
    import flowerfast
    from flowerfast.training.trackers import check_trackers

    with pytest.raises(flowerfast.FlowerfastError) as caught:
        check_trackers(["tensorboard", "neptune"])
    assert str(caught.value) == "trackers must be one of mlflow, tensorboard, wandb (got 'neptune')"
    assert caught.value.parameters == ("trackers",)
    with pytest.raises(flowerfast.FlowerfastError, match="trackers must be one of"):
        flowerfast.train(trackers=["neptune"], out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    result = invoke(runner, ["train", "--tracker", "neptune", "--out", tmp_path / "run"])
    assert result.exit_code == 2 and "'neptune' is not one of 'mlflow', 'tensorboard', 'wandb'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_extra_names_the_parameter_in_the_library(monkeypatch):
    import flowerfast
    from flowerfast.training.trackers import check_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(flowerfast.FlowerfastError) as caught:
        check_trackers(["wandb"])
    assert str(caught.value) == "trackers='wandb' needs the wandb extra: pip install \"flowerfast[wandb]\""
    assert caught.value.parameters == ("trackers",)
