"""Resuming interrupted runs: real ``flowerfast train`` processes stopped by SIGINT, SIGTERM and
kill -9 (mid-epoch and in the middle of writing the checkpoint), then ``--resume``d to the end and
compared, epoch for epoch, with a run that was never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import flowerfast
from flowerfast.models.classifier import load_classifier
from flowerfast.runs.folder import CHECKPOINT, RunFolder
from flowerfast.training.checkpoint import load_checkpoint, split_sha256
from tests.conftest import SAMPLE, invoke, make_folder

TRAIN = [
    "train",
    "--arch",
    "resnet18",
    "--no-pretrained",
    "--size",
    "32",
    "--epochs",
    "3",
    "--freeze-epochs",
    "1",
    "--bs",
    "16",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--workers",
    "0",
]
"""Four epochs (one frozen, three full) on the embedded photos: a phase boundary to resume across."""

KILL_DURING_CHECKPOINT_WRITE = """
import os, signal, sys
real_fsync, seen = os.fsync, []

def fsync(fd):
    if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
        seen.append(fd)
        if len(seen) == 3:  # epoch 0 (before training), epoch 1, then epoch 2's write: killed
            os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)

os.fsync = fsync
from flowerfast.cli import main
sys.argv = ["flowerfast", *sys.argv[1:]]
main()
"""


def start_training(args: list, tmp_path: Path, wrapper: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CI": "1", "TMPDIR": str(scratch_dir(tmp_path))}
    command = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "flowerfast"]
    return subprocess.Popen(
        command + [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.txt", "w"),
        text=True,
        env=env,
        cwd=tmp_path,
    )


def scratch_dir(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir(exist_ok=True)
    return path


HANG_GUARD_S = 1200
"""Only a guard against a process that never ends: no test asserts on how long anything took."""


def run_until(proc: subprocess.Popen, when, then=None, timeout: float = HANG_GUARD_S) -> list[str]:
    """Read the process's lines until one starts with ``when`` (or ``when(line, lines so far)`` is
    true), call ``then``, and wait for the process to end. A process still running after
    ``timeout`` seconds is killed and the test fails saying it hung."""
    hung = threading.Event()

    def kill() -> None:
        hung.set()
        proc.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    lines = []
    matches = when if callable(when) else (lambda line, _: line.startswith(when))
    try:
        for line in proc.stdout:
            lines.append(line)
            if then is not None and matches(line, lines):
                then()
                then = None
        proc.wait(timeout=timeout)
    finally:
        watchdog.cancel()
        proc.kill()
    assert not hung.is_set(), f"the process hung: killed after {timeout:.0f} s; its output: {''.join(lines[-20:])}"
    return lines


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the same run, never stopped, in its own process."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = start_training(TRAIN + ["--out", tmp / "run"], tmp)
    run_until(proc, "never")
    assert proc.returncode == 0, (tmp / "stderr.txt").read_text()
    return tmp / "run"


def assert_same_history(resumed: Path, reference: Path) -> None:
    """Loss for loss, accuracy for accuracy, epoch for epoch (history.csv keeps 6 digits)."""
    got, expected = RunFolder(resumed).read_history(), RunFolder(reference).read_history()
    assert (
        [(r.epoch, r.phase) for r in got]
        == [(r.epoch, r.phase) for r in expected]
        == [(1, "frozen"), (2, "full"), (3, "full"), (4, "full")]
    )
    for g, e in zip(got, expected):
        for name in ("train_loss", "valid_loss", "lr"):
            assert getattr(g, name) == pytest.approx(getattr(e, name), rel=1e-4), (g.epoch, name)
        for name in ("train_accuracy_aug", "valid_accuracy", "train_accuracy_clean"):
            assert getattr(g, name) == pytest.approx(getattr(e, name), abs=1e-6), (g.epoch, name)


def assert_finished_cleanly(run_dir: Path) -> None:
    names = {p.name for p in run_dir.iterdir()}
    assert {"summary.json", "final.safetensors", "best.safetensors", "valid_predictions.csv"} <= names
    assert CHECKPOINT not in names  # a finished run keeps no checkpoint
    assert not [n for n in names if n.startswith(".")], names  # no temporary file left


@pytest.mark.parametrize("stop, code", [("sigint", 130), ("sigterm", 143)])
def test_a_signal_keeps_a_resumable_checkpoint_and_says_how_to_resume(stop, code, uninterrupted, tmp_path, runner):
    out = tmp_path / "run"
    proc = start_training(TRAIN + ["--out", out], tmp_path)
    sig = signal.SIGINT if stop == "sigint" else signal.SIGTERM
    lines = run_until(proc, "epoch 2/4", then=lambda: proc.send_signal(sig))
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == code, stderr
    last = stderr.strip().splitlines()[-1]
    word = "interrupted" if stop == "sigint" else "terminated"
    assert last.startswith(f"{word}: epoch") and last.endswith(f"resume with: flowerfast train --resume {out}")
    assert "Traceback" not in stderr
    assert not [p for p in scratch_dir(tmp_path).iterdir() if p.name.startswith("flowerfast-")]  # scratch folder gone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # and no temporary file is left
    kept = load_checkpoint(out / CHECKPOINT).epoch
    assert kept >= 1 and ("epoch 1 is kept" if kept == 1 else f"epochs 1-{kept} are kept") in last
    assert any(line.startswith("epoch 2/4") for line in lines)
    if stop == "sigterm":  # the checkpoint is the one Ctrl-C keeps, whose resume is checked below
        return

    result = invoke(runner, ["train", "--resume", out])
    assert result.exit_code == 0, result.output
    assert f"resuming after epoch {kept} of 4" in result.output
    assert_same_history(out, uninterrupted)
    assert_finished_cleanly(out)


def test_kill_9_mid_epoch_then_resume_repeats_the_uninterrupted_run(uninterrupted, tmp_path, runner):
    out = tmp_path / "run"
    proc = start_training(TRAIN + ["--out", out], tmp_path)
    run_until(proc, "epoch 3/4", then=proc.kill)  # SIGKILL while epoch 4 runs
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / CHECKPOINT).epoch >= 2

    result = invoke(runner, ["train", "--resume", out])
    assert result.exit_code == 0, result.output
    assert_same_history(out, uninterrupted)
    assert_finished_cleanly(out)
    assert RunFolder(out).read_summary().best_epoch == RunFolder(uninterrupted).read_summary().best_epoch


def test_kill_9_while_the_checkpoint_is_written_leaves_the_previous_one_whole(uninterrupted, tmp_path, runner):
    out = tmp_path / "run"
    proc = start_training(TRAIN + ["--out", out], tmp_path, wrapper=KILL_DURING_CHECKPOINT_WRITE)
    run_until(proc, "never")
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    leftovers = [p for p in out.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the half-published write
    assert load_checkpoint(out / CHECKPOINT).epoch == 1  # the previous checkpoint, whole

    result = invoke(runner, ["train", "--resume", out])
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1 of 4" in result.output
    assert not leftovers[0].exists()  # cleaned by the next write of the checkpoint
    assert_same_history(out, uninterrupted)
    assert_finished_cleanly(out)


class StopAfterEpochs:
    """A fastai callback raising KeyboardInterrupt (as Ctrl-C does) once ``n`` epochs are saved."""

    def __new__(cls, n: int):
        from fastai.callback.core import Callback

        class Stop(Callback):
            order = 100  # after the epoch's checkpoint is written

            def after_epoch(self):
                Stop.seen += 1
                if Stop.seen >= n:
                    raise KeyboardInterrupt

        Stop.seen = 0
        return Stop()


OPTIONS = dict(arch="resnet18", pretrained=False, size=32, epochs=2, bs=16, device="cpu", precision="fp32", workers=0)


@pytest.fixture()
def interrupted(tmp_path) -> tuple[Path, Path]:
    """A data folder of its own and a run of it stopped (as by Ctrl-C) after its first epoch."""
    data = make_folder(tmp_path / "photos", {"daisy": 10, "rose": 10, "tulip": 10})
    with pytest.raises(KeyboardInterrupt):
        flowerfast.train(data=data, out=tmp_path / "run", callbacks=[StopAfterEpochs(1)], **OPTIONS)
    return data, tmp_path / "run"


def test_the_checkpoint_loads_with_weights_only_and_holds_everything_a_resume_needs(interrupted):
    data, run_dir = interrupted
    raw = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)  # no code is unpickled
    assert raw["format"] == "flowerfast-checkpoint" and raw["epoch"] == 1
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    run = RunFolder(run_dir)
    model, _ = load_classifier(run_dir / "best.safetensors")
    assert set(checkpoint.model) == set(model.state_dict())
    assert len(checkpoint.optimizer["param_groups"]) == 2  # body and head
    assert {"exp_avg", "exp_avg_sq"} <= set(checkpoint.optimizer["state"][0])  # Adam's moments
    assert {"python", "numpy", "torch", "loaders"} <= set(checkpoint.rng)
    assert checkpoint.options["epochs"] == 2 and checkpoint.config["lr"] == pytest.approx(3e-3)
    assert checkpoint.split_sha256 == split_sha256(run.read_split(data), data)
    assert len(checkpoint.data_files) == 30 and [r.epoch for r in checkpoint.records()] == [1]
    assert [r.epoch for r in run.read_history()] == [1]


def test_a_resume_with_other_options_is_refused_naming_them(interrupted, runner):
    _, run_dir = interrupted
    result = invoke(runner, ["train", "--resume", run_dir, "--epochs", "5", "--lr", "0.01", "--arch", "resnet18"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: cannot resume {run_dir} with different options: --epochs 5 (the run has 2), --lr 0.01 (the run "
        "has the default). A run resumes as it started; start a new run to change them"
    )
    assert load_checkpoint(run_dir / CHECKPOINT).epoch == 1  # nothing was touched


def test_a_resume_against_changed_photos_is_refused_naming_what_changed(interrupted, runner):
    data, run_dir = interrupted
    (data / "rose" / sorted(os.listdir(data / "rose"))[0]).unlink()
    shutil.copy(sorted((SAMPLE / "daisy").glob("*.jpg"))[-1], data / "daisy" / "new.jpg")
    result = invoke(runner, ["train", "--resume", run_dir])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert message.startswith(f"error: cannot resume {run_dir}: the photos in {data} changed since the run started:")
    assert (
        "1 photo(s) added (e.g. daisy/new.jpg)" in message and "1 photo(s) removed or unreadable (e.g. rose/" in message
    )


def test_a_resume_with_an_edited_split_is_refused(interrupted, runner):
    _, run_dir = interrupted
    split = run_dir / "split.csv"
    lines = split.read_text().splitlines()
    header, first, rest = lines[0], lines[1], lines[2:]
    flipped = first[:-1] + ("0" if first.endswith("1") else "1")
    split.write_text("\n".join([header, flipped, *rest]) + "\n")
    result = invoke(runner, ["train", "--resume", run_dir])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: cannot resume {run_dir}: its split.csv was changed since the run started "
        "(the split must stay as it was): restore it, or start a new run"
    )


def test_a_resume_may_move_the_data_and_change_where_it_computes(interrupted, tmp_path, runner):
    data, run_dir = interrupted
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)  # copied: new times, same photos
    shutil.rmtree(data)
    result = invoke(
        runner,
        [
            "train",
            "--resume",
            run_dir,
            "--data",
            moved,
            "--workers",
            "0",
            "--threads",
            "1",
            "--no-cache",
            "--epochs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [r.epoch for r in RunFolder(run_dir).read_history()] == [1, 2]
    assert_finished_cleanly(run_dir)
    again = invoke(runner, ["train", "--resume", run_dir])
    assert again.exit_code == 1
    assert again.stderr.strip() == f"error: {run_dir} is a finished run (summary.json is there): nothing to resume"


def test_resume_needs_a_run_folder(tmp_path, runner):
    result = invoke(runner, ["train", "--resume", tmp_path])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path} is not a flowerfast run folder (no config.json)"
    (tmp_path / CHECKPOINT).write_bytes(b"\x80\x04garbage")
    result = invoke(runner, ["train", "--resume", tmp_path])
    assert result.exit_code == 1 and result.stderr.startswith(f"error: cannot read checkpoint {tmp_path / CHECKPOINT}")


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path, runner):
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / CHECKPOINT).write_bytes(pickle.dumps({"format": "flowerfast-checkpoint", "x": Payload()}))
    result = invoke(runner, ["train", "--resume", tmp_path])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: cannot read checkpoint {tmp_path / CHECKPOINT}: it holds more than "
        "tensors and plain values, and is not unpickled"
    )
    assert not marker.exists()


def test_compare_resume_keeps_finished_models_and_resumes_the_interrupted_one(tmp_path, runner):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--archs",
        "resnet18,resnet34",
        "--no-pretrained",
        "--size",
        "32",
        "--epochs",
        "2",
        "--bs",
        "16",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--out",
        out,
    ]
    proc = start_training(args, tmp_path)

    def in_second_model(line: str, lines: list[str]) -> bool:
        return line.startswith("epoch 1/2") and any(seen.startswith("model 2/2: resnet34") for seen in lines)

    run_until(proc, in_second_model, then=lambda: proc.send_signal(signal.SIGINT))
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].endswith(f"resume with: flowerfast compare --resume {out}")
    first_summary = (out / "resnet18" / "summary.json").stat().st_mtime_ns
    assert (out / "resnet34" / CHECKPOINT).is_file() and not (out / "report.md").exists()

    result = invoke(runner, ["compare", "--resume", out])
    assert result.exit_code == 0, result.output
    assert "model 1/2: resnet18 is finished, kept as it is" in result.output
    assert "model 2/2: resnet34, resumed" in result.output
    assert (out / "resnet18" / "summary.json").stat().st_mtime_ns == first_summary
    assert [r.epoch for r in RunFolder(out / "resnet34").read_history()] == [1, 2]
    assert (out / "report.md").is_file() and not (out / "resnet34" / CHECKPOINT).exists()
    refused = invoke(runner, ["compare", "--resume", out, "--archs", "resnet18,vgg11_bn"])
    assert refused.exit_code == 1
    assert "--archs resnet18,vgg11_bn (the comparison has resnet18,resnet34)" in refused.stderr
