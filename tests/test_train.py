"""Training end to end through the CLI, on real photos; every file of the run read back."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from flowerfast.core.progress import Reporter
from flowerfast.models.classifier import load_classifier
from flowerfast.runs.folder import RunFolder, read_split_csv
from tests.conftest import SAMPLE, SHARED, invoke, make_folder, requires_shared

REPO = Path(__file__).resolve().parents[1]

HISTORY_COLUMNS = [
    "epoch",
    "phase",
    "train_loss",
    "train_accuracy_aug",
    "train_accuracy_clean",
    "valid_loss",
    "valid_accuracy",
    "lr",
    "seconds",
    "valid_f1",
    "valid_map",
    "ema_valid_score",
    "train_seconds",
]


def _history(run):
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_a_complete_run_folder(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.json",
        "split.csv",
        "history.csv",
        "summary.json",
        "best.safetensors",
        "best.json",
        "final.safetensors",
        "final.json",
        "valid_predictions.csv",
    } <= names
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["size"] == 32 and config["epochs"] == 2
    assert config["pretrained"] is False and config["weights_source"] == "random"
    assert config["lr"] == 3e-3 and config["freeze_epochs"] == 0 and config["seed"] == 42
    assert config["n_train"] == 160 and config["n_valid"] == 40 and config["device"] == "cpu"
    assert config["clean_train_images"] == 40  # 256 asked, at most a quarter of the 160 training images
    assert config["data"] == str(SAMPLE)

    history = _history(tiny_run)
    assert list(history[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history] == [1, 2]
    for row in history:
        for col in ("train_accuracy_aug", "train_accuracy_clean", "valid_accuracy"):
            assert 0.0 <= float(row[col]) <= 1.0
        assert float(row["train_loss"]) > 0 and float(row["seconds"]) > 0
        assert row["valid_f1"] == row["valid_map"] == row["ema_valid_score"] == ""  # not asked for
    assert float(history[1]["lr"]) < float(history[0]["lr"])  # one cycle: annealed by the end

    split = read_split_csv(tiny_run / "split.csv", SAMPLE)
    assert len(split) == 200 and sum(r.is_valid for r in split) == 40

    summary = json.loads((tiny_run / "summary.json").read_text())
    best = max(float(r["valid_accuracy"]) for r in history)
    assert summary["best_valid_accuracy"] == pytest.approx(best, abs=1e-6)
    assert summary["best_epoch"] == next(int(r["epoch"]) for r in history if float(r["valid_accuracy"]) == best)
    assert summary["final_valid_accuracy"] == pytest.approx(float(history[-1]["valid_accuracy"]), abs=1e-6)


def test_config_json_reads_back_as_the_resolved_config_it_was_written_from(tiny_run):
    """Every reader of config.json gets it through RunFolder.read_config, typed: reading it back
    and writing it again gives the file's own content, key for key."""
    from flowerfast.runs.config import TrainConfig
    from flowerfast.runs.resolved import ResolvedConfig

    written = json.loads((tiny_run / "config.json").read_text())
    config = RunFolder(tiny_run).read_config()
    assert isinstance(config, ResolvedConfig) and isinstance(config.options, TrainConfig)
    assert (config.options.arch, config.options.epochs, config.size, config.device) == ("resnet18", 2, 32, "cpu")
    assert config.to_dict() == written
    assert RunFolder(tiny_run / "nowhere").read_config() is None


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

    from flowerfast.data.loaders import load_data
    from flowerfast.training.learner import predict_batches

    data = load_data(None, size=spec.size, bs=16, split_file=tiny_run / "split.csv", device=torch.device("cpu"))
    probs, targets = predict_batches(model, data.dls.valid)
    # Another batch size than in training can change float32 rounding (oneDNN picks kernels by
    # shape): compare the labels only where the two most likely classes are clearly apart.
    top2 = probs.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).tolist()
    got = [spec.classes[i] for i in probs.argmax(-1).tolist()]
    assert sum(clear) >= len(clear) - 2
    assert [g for g, c in zip(got, clear) if c] == [p["predicted"] for p, c in zip(preds, clear) if c]
    csv_probs = torch.tensor([[float(p[f"p_{c}"]) for c in spec.classes] for p in preds])
    from flowerfast.core.calibration import rescaled

    calibrated = torch.from_numpy(rescaled(probs.numpy(), spec.temperature)).float()  # the CSV's temperature
    assert torch.allclose(calibrated, csv_probs, atol=1e-4)


@pytest.mark.parametrize("arch", ["resnet152", "vgg11_bn"])
def test_the_reports_two_architectures_train(tmp_path, runner, arch):
    data = make_folder(tmp_path / "d", {"daisy": 10, "rose": 10})
    out = tmp_path / "run"
    result = invoke(
        runner,
        [
            "train",
            "--data",
            data,
            "--arch",
            arch,
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bs",
            "8",
            "--device",
            "cpu",
            "--out",
            out,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "epoch 1/1 full" in result.output
    model, spec = load_classifier(out / "final.safetensors")
    assert spec.arch == arch and spec.classes == ["daisy", "rose"]
    assert len(_history(out)) == 1


def test_freeze_epochs_train_the_head_first(tmp_path, runner):
    data = make_folder(tmp_path / "d", {"daisy": 8, "tulip": 8})
    out = tmp_path / "run"
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
            "--freeze-epochs",
            "1",
            "--bs",
            "8",
            "--out",
            out,
        ],
    )
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
    result = flowerfast.train(
        data=data,
        arch="resnet18",
        pretrained=False,
        size=48,
        epochs=5,
        bs=32,
        out=tmp_path / "run",
        clean_train_sample=0,
    )
    assert result.best_valid_accuracy >= 0.75, [r.valid_accuracy for r in result.history]


class _ScheduleProbe:
    """A fastai callback (built lazily: fastai imports slowly) that records, for every fit, the
    one-cycle peak learning rate of each parameter group, the learning rates of every training
    batch, and the body's convolution weights when the fit ends."""

    def __new__(cls):
        from fastai.callback.core import Callback

        class Probe(Callback):
            order = 100

            def __init__(self):
                self.peaks, self.batch_lrs, self.body_after = [], [], []

            def before_fit(self):
                lr = self.learn.param_scheduler.scheds["lr"]
                # the peak sits at pct_start: 0.25 for the full phase, 0.99 for the frozen one
                self.peaks.append([max(float(a), float(b)) for a, b in zip(lr(0.25), lr(0.99))])

            def after_batch(self):
                if self.training:
                    self.batch_lrs.append([h["lr"] for h in self.opt.hypers])

            def after_fit(self):
                self.body_after.append(_body_convs(self.learn.model))

        return Probe()


def _body_convs(model) -> dict:
    return {n: m.weight.detach().clone() for n, m in model[0].named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_the_pretrained_recipe_freezes_then_fine_tunes_with_a_lower_body_lr(tmp_path):
    """The headline recipe, run offline on a backbone state dict saved by torchvision: the weights
    file is the source, one frozen epoch trains the head only, then the body trains at 1/40 of
    the head's learning rate."""
    import torchvision
    from safetensors.torch import save_file

    import flowerfast

    torch.manual_seed(0)
    backbone = torchvision.models.resnet18()
    save_file(backbone.state_dict(), str(tmp_path / "resnet18.safetensors"))
    data = make_folder(tmp_path / "d", {"daisy": 10, "rose": 10})
    probe = _ScheduleProbe()
    result = flowerfast.train(
        data=data,
        arch="resnet18",
        weights=tmp_path / "resnet18.safetensors",
        size=32,
        epochs=1,
        bs=8,
        device="cpu",
        out=tmp_path / "run",
        callbacks=[probe],
    )

    config = RunFolder(result.run_dir).read_config()
    assert config.weights_source == f"file:{tmp_path / 'resnet18.safetensors'}" and config.pretrained is True
    assert config.lr == 2e-3 and config.freeze_epochs == 1 and config.body_lr == pytest.approx(5e-5)
    assert [r.phase for r in result.history] == ["frozen", "full"]

    frozen_peak, full_peak = probe.peaks
    assert frozen_peak == pytest.approx([2e-3, 2e-3], rel=1e-6)  # body frozen: its group's lr is moot
    assert full_peak == pytest.approx([5e-5, 2e-3], rel=1e-6)  # body, head
    full_batches = probe.batch_lrs[-len(probe.batch_lrs) // 2 :]
    assert all(body == pytest.approx(head / 40, rel=1e-9) for body, head in full_batches)

    start = {k: v for k, v in _body_convs(_as_model(backbone)).items()}
    after_frozen, after_full = probe.body_after
    assert all(torch.equal(after_frozen[k], start[k]) for k in start), "the body changed while frozen"
    assert any(not torch.equal(after_full[k], start[k]) for k in start), "the body did not train"


def _as_model(backbone):
    """Backbone children in the layout of the classifier's body (``model[0]``)."""
    from flowerfast.models.archs import body_cut, cut_body

    return [cut_body(backbone, body_cut(backbone))]


class _EpochFiles(Reporter):
    """Reads the run folder each time an epoch is reported: what is on disk at that moment."""

    def __init__(self):
        self.run = None
        self.rows_on_disk = []

    def run_ready(self, config) -> None:
        self.run = RunFolder(config.out)

    def epoch_done(self, record, best) -> None:
        self.rows_on_disk.append([r.epoch for r in self.run.read_history()])


def test_best_model_is_saved_when_it_appears_and_history_as_each_epoch_ends(tmp_path):
    """A callback makes every validation prediction of the last epoch wrong: the best epoch is then
    the first, and best.safetensors must hold the model of that epoch, not the final one. An
    unreadable photo in the data is skipped and recorded in config.json."""
    from fastai.callback.core import Callback

    import flowerfast

    class WrongLastValidation(Callback):
        order = 1  # after the model's forward pass, before the loss and metrics

        def after_pred(self):
            if not self.training and self.epoch == self.n_epoch - 1:
                y = self.yb[0]
                self.learn.pred = 10 * torch.nn.functional.one_hot((y + 1) % 5, 5).float()

    data = make_folder(tmp_path / "d", {c: 20 for c in ("daisy", "dandelion", "rose", "sunflower", "tulip")})
    (data / "rose" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    reporter = _EpochFiles()
    result = flowerfast.train(
        data=data,
        arch="resnet18",
        pretrained=False,
        size=32,
        epochs=2,
        bs=16,
        device="cpu",
        out=tmp_path / "run",
        callbacks=[WrongLastValidation()],
        reporter=reporter,
    )
    assert reporter.rows_on_disk == [[1], [1, 2]]  # history.csv was complete after each epoch
    first, last = result.history
    assert last.valid_accuracy == 0.0 and first.valid_accuracy > 0
    assert result.best_epoch == 1 and result.best_valid_accuracy == first.valid_accuracy
    run = RunFolder(result.run_dir)
    assert run.best_model.read_bytes() != run.final_model.read_bytes()
    # rescoring the saved best model gives the first epoch's accuracy: it is that epoch's model
    assert result.summary.best_valid_accuracy_rescored == pytest.approx(first.valid_accuracy, abs=1e-9)
    skipped = run.read_config().skipped
    assert [Path(s["file"]).name for s in skipped] == ["broken.jpg"] and skipped[0]["reason"]
    assert result.summary.skipped_files == 1 and result.config.n_train + result.config.n_valid == 100


def test_pretrained_required_without_network_is_one_line_and_writes_nothing(tmp_path, runner, monkeypatch):
    """``--pretrained`` where the weights cannot be had: the real download path, pointed at a proxy
    that refuses connections, with an empty torch cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    out = tmp_path / "run"
    result = invoke(
        runner, ["train", "--arch", "resnet18", "--pretrained", "--size", "32", "--epochs", "1", "--out", out]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: pretrained ImageNet weights for resnet18 are not available")
    assert line.endswith("use --weights FILE or --no-pretrained")
    assert not out.exists()


def test_augmentation_erases_after_normalising_and_only_in_training():
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import RandomErasing, RandomResizedCrop

    from flowerfast.data.loaders import load_data

    data = load_data(None, size=32, bs=8, device=torch.device("cpu"))
    batch_tfms = list(data.dls.train.after_batch.fs)
    kinds = [type(t) for t in batch_tfms]
    assert kinds.index(Normalize) < kinds.index(RandomErasing)  # erasing fills with N(0, 1) noise
    erasing = batch_tfms[kinds.index(RandomErasing)]
    assert erasing.split_idx == 0 and erasing.p == 0.25  # training batches only
    crop = next(t for t in data.dls.train.after_item.fs if isinstance(t, RandomResizedCrop))
    assert crop.size == (32, 32) and crop.min_scale == 0.35
    # validation: the same crop transform without randomness gives identical batches twice
    first, again = next(iter(data.dls.valid))[0], next(iter(data.dls.valid))[0]
    assert torch.equal(first, again)


def test_a_second_run_on_the_same_split_file_can_be_reported_against_the_first(tiny_run, tmp_path, runner):
    second = tmp_path / "second"
    result = invoke(
        runner,
        [
            "train",
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bs",
            "16",
            "--seed",
            "7",
            "--device",
            "cpu",
            "--split-file",
            tiny_run / "split.csv",
            "--out",
            second,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (second / "split.csv").read_bytes() == (tiny_run / "split.csv").read_bytes()
    report = tmp_path / "report"
    result = invoke(runner, ["report", tiny_run, second, "--out", report])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    assert [m["name"] for m in data["models"]] == [tiny_run.name, second.name]  # both resnet18: named by folder
    assert data["pairs"][0]["n_images"] == 40 and data["split"]["n_valid"] == 40


def test_the_example_script_runs(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "train_and_inspect.py"),
            str(SAMPLE),
            "resnet18",
            "--epochs",
            "2",
            "--size",
            "32",
            "--no-pretrained",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("run folder: ") and "(pretrained weights: False)" in lines[0]
    run = RunFolder(tmp_path / lines[0].split()[2])
    history = run.read_history()
    rows = [line.split() for line in lines[2:4]]
    assert [int(r[0]) for r in rows] == [h.epoch for h in history] == [1, 2]
    for row, h in zip(rows, history):
        assert float(row[3].rstrip("%")) == pytest.approx(100 * h.valid_accuracy, abs=0.051)
        assert float(row[4]) == pytest.approx(h.train_loss, abs=1e-4)  # 4 decimals against 6 digits
    assert lines[-1].startswith(f"best valid accuracy {100 * run.read_summary().best_valid_accuracy:.1f}%")


def test_sigterm_ends_training_cleanly_and_leaves_no_scratch_folder(tmp_path):
    """A real ``flowerfast train`` process, terminated mid-run as a job scheduler would."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1", "CI": "1"}
    out = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flowerfast",
                "train",
                "--arch",
                "resnet18",
                "--no-pretrained",
                "--size",
                "32",
                "--epochs",
                "50",
                "--bs",
                "16",
                "--device",
                "cpu",
                "--out",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        watchdog = threading.Timer(300, proc.kill)  # a silent hang ends the test instead of blocking it
        watchdog.start()
        try:
            started = any(line.split()[:2] == ["epoch", "1/50"] for line in proc.stdout)
            assert started, "training ended or hung before its first epoch"
            assert any(p.name.startswith("flowerfast-") for p in scratch.iterdir())  # the learner's scratch folder
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=120)
        finally:
            watchdog.cancel()
            proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert not any(p.name.startswith("flowerfast-") for p in scratch.iterdir())
    assert len(RunFolder(out).read_history()) >= 1  # what was written is intact


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_model(tmp_path):
    """The second epoch's weights are made NaN (as a far too high learning rate does): training
    stops there with a clear message, and best.safetensors is still epoch 1's finite model."""
    from fastai.callback.core import Callback

    import flowerfast

    class PoisonSecondEpoch(Callback):
        order = 100

        def after_batch(self):
            if self.training and self.epoch == 1:
                with torch.no_grad():
                    for p in self.learn.model.parameters():
                        p.fill_(float("nan"))

    data = make_folder(tmp_path / "d", {"daisy": 12, "rose": 12})
    with pytest.raises(flowerfast.FlowerfastError) as caught:
        flowerfast.train(
            data=data,
            arch="resnet18",
            pretrained=False,
            size=32,
            epochs=3,
            bs=8,
            device="cpu",
            out=tmp_path / "run",
            callbacks=[PoisonSecondEpoch()],
        )
    message = str(caught.value)
    assert message.startswith("training diverged: the loss became NaN or infinite in epoch 2;")
    assert "best.safetensors holds epoch 1" in message and "Lower the learning rate (lr)" in message
    assert caught.value.parameters == ("lr", "precision")  # the CLI says --lr, --precision fp32
    run = RunFolder(tmp_path / "run")
    assert [r.epoch for r in run.read_history()] == [1]
    assert flowerfast.load_checkpoint(run.file("checkpoint.pt")).epoch == 1  # the last good state, resumable
    model = flowerfast.load_model(tmp_path / "run", device="cpu")
    assert all(torch.isfinite(p).all() for p in model.network.parameters())


def test_patience_stops_early_and_save_every_keeps_the_newest_epoch_models(tmp_path, runner):
    """A learning rate so small that nothing improves after the first epoch: with --patience 2
    the run stops after epoch 3 of 6, says so and records it; --save-every 1 --keep 2 leaves the
    models of epochs 2 and 3, each loadable."""
    from flowerfast.models.classifier import load_classifier

    out = tmp_path / "run"
    result = invoke(
        runner,
        [
            "train",
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "6",
            "--bs",
            "16",
            "--lr",
            "1e-9",
            "--device",
            "cpu",
            "--patience",
            "2",
            "--save-every",
            "1",
            "--keep",
            "2",
            "--out",
            out,
        ],
    )
    assert result.exit_code == 0, result.output
    run = RunFolder(out)
    history = run.read_history()
    summary = run.read_summary()
    best = summary.best_epoch
    assert [r.epoch for r in history] == list(range(1, best + 3)) and len(history) < 6
    assert summary.stopped_early_at == best + 2 and summary.planned_epochs == 6 and summary.epochs == best + 2
    assert (
        f"stopped early after epoch {best + 2} of 6: validation accuracy had not improved for 2 epochs" in result.stdout
    )
    assert [p.name for p in run.snapshots()] == [f"epoch-{e:03d}.safetensors" for e in (best + 1, best + 2)]
    model, spec = load_classifier(run.snapshots()[-1])
    final, _ = load_classifier(out / "final.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.state_dict().values()))


def test_train_json_prints_the_summary_alone_on_stdout(tmp_path, runner):
    out = tmp_path / "run"
    result = invoke(
        runner,
        [
            "train",
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bs",
            "16",
            "--device",
            "cpu",
            "--out",
            out,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed.pop("run_dir") == str(out)
    assert printed == json.loads((out / "summary.json").read_text())
    assert "epoch 1/1" in result.stderr


def test_config_replays_a_runs_options_with_overrides(tiny_run, tmp_path, runner):
    """``--config`` takes the options a run was given (not what they resolved to), and options
    typed on the command line win; the replay gets a folder of its own."""
    out = tmp_path / "replay"
    result = invoke(runner, ["train", "--config", tiny_run / "config.json", "--epochs", "1", "--out", out])
    assert result.exit_code == 0, result.output
    original = json.loads((tiny_run / "config.json").read_text())["options"]
    replayed = json.loads((out / "config.json").read_text())["options"]
    assert replayed == {**original, "epochs": 1, "out": str(out)}
    assert RunFolder(out).read_split() == RunFolder(tiny_run).read_split()  # same seed, same split
    assert [r.epoch for r in RunFolder(out).read_history()] == [1]
    missing = invoke(runner, ["train", "--config", tmp_path / "nope.json"])
    assert (
        missing.exit_code == 1 and missing.stderr.strip() == f"error: config file not found: {tmp_path / 'nope.json'}"
    )


def test_training_in_one_process_needs_no_distributed_extra(tmp_path):
    """`pip install flowerfast` without the distributed extra (no Accelerate, which fastai's
    distributed module needs) trains: only a job of several processes loads that module."""
    out = tmp_path / "run"
    hide = (
        "import sys; sys.modules['accelerate'] = None; "
        "import importlib.util; real = importlib.util.find_spec; "
        "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'accelerate' else real(name, *a); "
        "from flowerfast.cli import main; sys.argv = ['flowerfast', *sys.argv[1:]]; main()"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            hide,
            "train",
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bs",
            "16",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunFolder(out).read_summary().epochs == 1 and "fastai.distributed" not in done.stderr


def test_an_older_config_json_reads_back_with_the_options_that_version_had(tiny_run, tmp_path):
    """A config.json written before an option was recorded reads back with what that version
    did (splits were plain random before stratify), and the defaults' lists are never shared."""
    from flowerfast.runs.config import DEFAULTS

    data = json.loads((tiny_run / "config.json").read_text())
    for key in ("stratify", "trackers"):
        data["options"].pop(key)
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = RunFolder(tmp_path).read_config()
    assert config.options.stratify is False and config.options.trackers == []
    assert config.options.trackers is not DEFAULTS.trackers and config.options.extra is not DEFAULTS.extra
