"""Training on several processes: real ``torchrun`` jobs of 2 CPU processes (gloo) on a small
real photo set, checked from their files, their output and each process's record
(``FLOWERFAST_DISTRIBUTED_TRACE``: the photos of every shard it loaded, its pid, the checksum of its
final weights)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flowerfast.hardware.distributed import TRACE_ENV, from_environment, read_trace, shard_bounds
from flowerfast.runs.folder import CHECKPOINT, RunFolder
from flowerfast.training.checkpoint import load_checkpoint
from tests.conftest import invoke, make_folder
from tests.test_resume import HANG_GUARD_S, assert_finished_cleanly, run_until

PHOTOS = {"daisy": 16, "rose": 16, "tulip": 15}
"""47 photos: 9 for validation (3 per class), 38 for training; with the odd class sizes the
validation set does not divide in two, so the shards are unequal and padding would show."""

TRAIN = [
    "train",
    "--arch",
    "resnet18",
    "--no-pretrained",
    "--size",
    "32",
    "--bs",
    "8",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--workers",
    "0",
    "--clean-train-sample",
    "8",
]


def torchrun(args: list, cwd: Path, trace: Path) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=2 -m flowerfast ARGS`` (a free port of its own)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CI": "1", TRACE_ENV: str(trace)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "flowerfast",
        *[str(a) for a in args],
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=open(cwd / "stderr.txt", "w"), text=True, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos") / "photos", PHOTOS)


@pytest.fixture(scope="module")
def job(tmp_path_factory, photos) -> dict:
    """One finished job: 2 processes, 2 epochs."""
    tmp = tmp_path_factory.mktemp("job")
    proc = torchrun(TRAIN + ["--data", photos, "--epochs", "2", "--out", "run"], tmp, tmp / "trace")
    lines = run_until(proc, "never")
    stderr = (tmp / "stderr.txt").read_text()
    assert proc.returncode == 0, stderr
    return {
        "tmp": tmp,
        "run": tmp / "run",
        "lines": lines,
        "stderr": stderr,
        "trace": [read_trace(tmp / "trace", r) for r in (0, 1)],
    }


def shards(trace: list[dict], kind: str) -> list[list[str]]:
    return [e["items"] for e in trace if e["event"] == "shard" and e["kind"] == kind]


def test_the_job_writes_one_run_folder_and_rank_0_alone_prints(job, photos):
    tmp, run = job["tmp"], RunFolder(job["run"])
    assert sorted(p.name for p in tmp.iterdir()) == ["run", "stderr.txt", "trace"]  # no second run folder
    assert [(r.epoch, r.phase) for r in run.read_history()] == [(1, "full"), (2, "full")]
    config = run.read_config()
    assert (config.processes, config.bs, config.effective_bs) == (2, 8, 16)
    lines = job["lines"]
    assert [line for line in lines if line.startswith("processes:")] == [
        "processes: 2 (DDP over gloo); batch 8 per process, effective batch 16\n"
    ]
    assert sum(line.startswith("epoch 1/2") for line in lines) == 1  # one process printed the epochs
    assert sum(line.startswith("run folder:") for line in lines) == 1
    assert "Traceback" not in job["stderr"]
    summary = run.read_summary()
    assert summary.epochs == 2 and (job["run"] / "final.safetensors").is_file()
    assert not (job["run"] / CHECKPOINT).exists()


def test_each_process_trains_on_its_own_half_of_every_epoch(job, photos):
    split = RunFolder(job["run"]).read_split(photos)
    train_files = {str(r.file) for r in split if not r.is_valid}
    valid_files = {str(r.file) for r in split if r.is_valid}
    assert (len(train_files), len(valid_files)) == (38, 9)
    rank0, rank1 = (shards(t, "train") for t in job["trace"])
    assert len(rank0) == len(rank1) == 2  # one shard per epoch
    for a, b in zip(rank0, rank1):
        assert len(a) == len(b) == 19  # half each (38 / 2)
        assert not set(a) & set(b)  # no photo in both shards
        assert set(a) | set(b) <= train_files
    assert rank0[0] != rank0[1]  # a new shuffle every epoch
    for a, b in zip(*(shards(t, "valid") for t in job["trace"])):
        assert sorted([len(a), len(b)]) == [4, 5] and not set(a) & set(b)
        assert set(a) | set(b) == valid_files  # every validation photo once, no padding


def test_validation_accuracy_is_over_every_validation_image_once(job):
    run = RunFolder(job["run"])
    with open(job["run"] / "valid_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    valid = sorted(str(r.file) for r in run.read_split() if r.is_valid)  # as split.csv names them
    assert sorted(r["file"] for r in rows) == valid  # each validation image exactly once
    recomputed = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    summary = run.read_summary()
    best = [r for r in run.read_history() if r.epoch == summary.best_epoch][0]
    assert recomputed == pytest.approx(best.valid_accuracy, abs=1e-6)
    assert summary.best_valid_accuracy_rescored == pytest.approx(recomputed, abs=1e-9)


def test_the_processes_end_with_identical_weights_and_rank_0_saves_them(job):
    sums = [[e["sha256"] for e in t if e["event"] == "final_weights"] for t in job["trace"]]
    assert len(sums[0]) == len(sums[1]) == 1 and sums[0] == sums[1]
    final = json.loads((job["run"] / "final.json").read_text())
    assert final["sha256"] == sums[0][0]  # the saved final model is the one both processes hold


def test_killing_one_process_ends_the_job_with_one_line_and_a_resumable_checkpoint(tmp_path, photos, runner):
    out = tmp_path / "run"
    proc = torchrun(TRAIN + ["--data", photos, "--epochs", "4", "--out", "run"], tmp_path, tmp_path / "trace")

    def kill_rank_1():
        pid = [e["pid"] for e in read_trace(tmp_path / "trace", 1) if e["event"] == "start"][0]
        os.kill(pid, signal.SIGKILL)

    run_until(proc, "epoch 1/4", then=kill_rank_1)  # the job ends by itself, or the test fails as hung
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode != 0, stderr
    # Rank 0 learns of the loss first from a collective that fails (the usual case) or from
    # torchrun, which stops the other processes once it sees one die (when rank 0 was computing
    # rather than exchanging at that moment): either way one line, ending with how to resume.
    mine = [line for line in stderr.splitlines() if line.startswith(("error", "terminated", "interrupted"))]
    assert len(mine) == 1, stderr
    assert "timed out" not in mine[0] and "timeout" not in mine[0], (
        stderr
    )  # seen at once, not after the collective timeout
    assert mine[0].startswith(
        (
            "error: another process of this 2-process job stopped or stopped answering (",
            "terminated (the launcher stopped every process of the job",
        )
    ), stderr
    resume = f"resume with: torchrun --nproc_per_node=2 -m flowerfast train --resume {Path('run')}"
    assert mine[0].endswith(resume), stderr
    assert "[rank0]" not in stderr, stderr  # rank 0 ended on its one line, no traceback of its own
    kept = load_checkpoint(out / CHECKPOINT)
    assert kept.epoch >= 1 and len(kept.rng_ranks) == 2
    assert [r.epoch for r in RunFolder(out).read_history()][: kept.epoch] == list(range(1, kept.epoch + 1))

    alone = invoke(runner, ["train", "--resume", out])  # one process cannot take over a 2-process run
    assert alone.exit_code == 1
    assert alone.stderr.strip() == f"error: cannot resume {out}: processes is now 1, was 2"

    again = torchrun(["train", "--resume", "run"], tmp_path, tmp_path / "trace-resumed")
    lines = run_until(again, "never")
    assert again.returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert f"resuming after epoch {kept.epoch} of 4...\n" in lines
    assert [r.epoch for r in RunFolder(out).read_history()] == [1, 2, 3, 4]
    assert_finished_cleanly(out)


def test_a_time_budget_and_a_weight_average_hold_on_both_processes(tmp_path, photos):
    """``--time``: every process must plan the same epochs, or one would wait for ever on a
    collective the other never joins; ``--ema``: the average is scored over the whole validation
    set, as the weights are, and its score decides the best model on every process alike."""
    budget = 10.0
    proc = torchrun(TRAIN + ["--data", photos, "--time", "10s", "--ema", "--out", "run"], tmp_path, tmp_path / "trace")
    lines = run_until(proc, "never")
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()
    run = RunFolder(tmp_path / "run")
    summary, history = run.read_summary(), run.read_history()
    assert summary.time_budget == budget and len(history) == summary.planned_epochs == summary.epochs >= 2
    rank0, rank1 = (shards(read_trace(tmp_path / "trace", r), "train") for r in (0, 1))
    assert len(rank0) == len(rank1) == summary.epochs  # both processes ran every planned epoch
    assert sum(r.seconds for r in history) <= budget + max(r.seconds for r in history) + 2.0
    plans = [line for line in lines if line.startswith("time budget: ")]
    assert plans and plans[-1].startswith(f"time budget: {summary.epochs} epochs planned")
    for r in history:  # a share of all 9 validation photos, not of one process's 4 or 5
        assert r.ema_valid_score * 9 == pytest.approx(round(r.ema_valid_score * 9), abs=1e-4)  # 6 digits in the CSV
    assert summary.best_valid_accuracy_rescored == pytest.approx(summary.best_valid_accuracy, abs=1e-9)
    finals = [[e["sha256"] for e in read_trace(tmp_path / "trace", r) if e["event"] == "final_weights"] for r in (0, 1)]
    assert len(finals[0]) == 1 and finals[0] == finals[1]


def test_lr_find_runs_on_both_processes_and_rank_0_writes_its_files(tmp_path, photos):
    proc = torchrun(
        [
            "lr-find",
            "--data",
            photos,
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--bs",
            "8",
            "--device",
            "cpu",
            "--num-it",
            "40",
            "--out",
            "lr",
            "--json",
        ],
        tmp_path,
        tmp_path / "trace",
    )
    lines = run_until(proc, "never")
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()
    printed = json.loads("".join(lines))  # one JSON document: rank 0's alone
    assert printed["suggestions"] == json.loads((tmp_path / "lr" / "lr_find.json").read_text())["suggestions"]
    with open(tmp_path / "lr" / "lr_find.csv", newline="") as fh:
        assert 10 < len(list(csv.DictReader(fh))) <= 40
    rank0, rank1 = (shards(read_trace(tmp_path / "trace", r), "train") for r in (0, 1))
    assert len(rank0) == len(rank1) >= 10  # steps of 2 per process and epoch: every process took part
    assert not set(rank0[0]) & set(rank1[0])


def test_compare_trains_every_model_on_both_processes_into_one_comparison_folder(tmp_path, photos):
    proc = torchrun(
        [
            "compare",
            "--archs",
            "resnet18,resnet34",
            "--data",
            photos,
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bs",
            "8",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--workers",
            "0",
            "--clean-train-sample",
            "0",
            "--out",
            "cmp",
        ],
        tmp_path,
        tmp_path / "trace",
    )
    lines = run_until(proc, "never")
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp", "stderr.txt", "trace"]
    for arch in ("resnet18", "resnet34"):
        config = RunFolder(tmp_path / "cmp" / arch).read_config()
        assert (config.processes, config.effective_bs) == (2, 16)
    splits = [(tmp_path / "cmp" / arch / "split.csv").read_text() for arch in ("resnet18", "resnet34")]
    assert splits[0] == splits[1]  # the second model on the first one's split
    assert (tmp_path / "cmp" / "report.md").is_file()
    assert sum(line.startswith("report: ") for line in lines) == 1
    finals = [[e["sha256"] for e in read_trace(tmp_path / "trace", r) if e["event"] == "final_weights"] for r in (0, 1)]
    assert len(finals[0]) == 2 and finals[0] == finals[1]  # both models trained by both processes


def test_sync_bn_on_cpus_is_one_error_from_rank_0(tmp_path, photos):
    proc = torchrun(
        TRAIN + ["--data", photos, "--epochs", "1", "--sync-bn", "--out", "run"], tmp_path, tmp_path / "trace"
    )
    run_until(proc, "never")
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode != 0
    assert [line for line in stderr.splitlines() if line.startswith("error")] == [
        "error: --sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs only); on cpu every process keeps "
        "batch-norm statistics of its own batches"
    ]
    assert not (tmp_path / "run").exists()


def test_shard_bounds_split_evenly_for_training_and_wholly_for_validation():
    assert [shard_bounds(39, 2, r, even=True) for r in (0, 1)] == [(0, 19), (19, 38)]
    assert [shard_bounds(9, 2, r, even=False) for r in (0, 1)] == [(0, 4), (4, 9)]
    assert [shard_bounds(10, 3, r, even=False) for r in (0, 1, 2)] == [(0, 3), (3, 6), (6, 10)]


def test_the_job_is_read_from_the_launchers_environment():
    assert from_environment({}).distributed is False
    procs = from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (procs.rank, procs.world_size, procs.local_rank, procs.is_main) == (3, 4, 1, False)
    from flowerfast.core.errors import FlowerfastError

    with pytest.raises(FlowerfastError, match="RANK 4 does not fit WORLD_SIZE 4"):
        from_environment({"RANK": "4", "WORLD_SIZE": "4"})


def test_accelerate_launch_runs_the_same_job(tmp_path, photos):
    """``accelerate launch --multi_gpu`` starts the processes through torchrun's machinery; with
    ``--device cpu`` they train over gloo like a torchrun job. (Accelerate's ``--cpu`` launches
    one process unless MPI is set up.)"""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "flowerfast",
        *TRAIN,
        "--data",
        str(photos),
        "--epochs",
        "1",
        "--out",
        "run",
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.txt", "w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "CI": "1"},
        cwd=tmp_path,
    )
    lines = run_until(proc, "never")
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert "processes: 2 (DDP over gloo); batch 8 per process, effective batch 16\n" in lines
    assert sum(line.startswith("epoch 1/1") for line in lines) == 1
    run = RunFolder(tmp_path / "run")
    assert run.read_config().processes == 2 and [r.epoch for r in run.read_history()] == [1]
    assert_finished_cleanly(tmp_path / "run")


def test_two_machines_meet_through_torchruns_rendezvous(tmp_path, photos):
    """Two ``torchrun --nnodes=2`` launchers, as on two machines sharing a file system (here two
    launchers on one), meet at a c10d rendezvous endpoint and train one job."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launchers = []
    for node in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=flowers-test",
            "-m",
            "flowerfast",
            *TRAIN,
            "--data",
            str(photos),
            "--epochs",
            "1",
            "--out",
            "run",
        ]
        stderr = open(tmp_path / f"stderr-{node}.txt", "w")
        launchers.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "CI": "1"},
            )
        )
    outputs = [launcher.communicate(timeout=HANG_GUARD_S)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], [
        (tmp_path / f"stderr-{n}.txt").read_text()[-2000:] for n in (0, 1)
    ]
    header = "processes: 2 (DDP over gloo); batch 8 per process, effective batch 16\n"
    assert sorted(header in out for out in outputs) == [False, True]  # one launcher holds rank 0, and prints
    run = RunFolder(tmp_path / "run")
    assert run.read_config().processes == 2 and [r.epoch for r in run.read_history()] == [1]
    assert_finished_cleanly(tmp_path / "run")
