"""A full disk under the run folder, on a real small file system (tmpfs): refused before training
when the run cannot fit, and one clear error, with the last good files intact, when the disk
fills up during training."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import flowerfast
from flowerfast.models.classifier import load_classifier
from flowerfast.runs.folder import CHECKPOINT, RunFolder
from flowerfast.training.checkpoint import load_checkpoint
from tests.conftest import invoke, make_folder


@pytest.fixture()
def small_disk(tmp_path):
    """``make(megabytes)``: a tmpfs of that size mounted in ``tmp_path``; skips where mounting is
    not allowed (it needs root, or a user namespace)."""
    mounts = []

    def make(megabytes: int) -> Path:
        point = tmp_path / f"disk-{megabytes}m"
        point.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here to make a small file system")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(point)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not permitted'}): needs root")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_run_that_cannot_fit_is_refused_before_training(small_disk, runner):
    disk = small_disk(20)
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
            "--device",
            "cpu",
            "--out",
            disk / "run",
        ],
    )
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert message.startswith(f"error: not enough free space in {disk / 'run'}: ") and "\n" not in message
    assert "a training run of this model needs about" in message and "Traceback" not in result.output
    assert list(disk.iterdir()) == []  # nothing was written


def test_a_disk_that_fills_during_training_is_one_error_and_the_last_good_files_stay(small_disk, tmp_path):
    from fastai.callback.core import Callback

    disk = small_disk(450)
    filler = disk / "filler"

    class FillTheDiskAfterFirstEpoch(Callback):
        order = 100  # after epoch 1's history, best model and checkpoint are written

        def after_epoch(self):
            if self.epoch == 0:
                free = shutil.disk_usage(disk).free
                with open(filler, "wb") as fh:
                    fh.truncate(0)
                    chunk = b"\0" * (1 << 20)
                    for _ in range((free - (64 << 10)) // len(chunk)):
                        fh.write(chunk)

    data = make_folder(tmp_path / "photos", {"daisy": 10, "rose": 10, "tulip": 10})
    options = dict(
        data=data, arch="resnet18", pretrained=False, size=32, epochs=3, bs=8, device="cpu", precision="fp32", workers=0
    )
    with pytest.raises(flowerfast.FlowerfastError) as caught:
        flowerfast.train(out=disk / "run", callbacks=[FillTheDiskAfterFirstEpoch()], **options)
    message = str(caught.value)
    assert message.startswith(f"disk full: cannot write {disk / 'run'}/") and "\n" not in message
    assert message.endswith(
        "files already written are intact. Free some space and resume the run (flowerfast train --resume)"
    )
    run = RunFolder(disk / "run")
    assert not [p.name for p in run.path.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert load_checkpoint(run.file(CHECKPOINT)).epoch == 1
    model, _ = load_classifier(run.best_model)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert [r.epoch for r in run.read_history()][0] == 1

    filler.unlink()
    result = flowerfast.resume(run.path)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert not run.file(CHECKPOINT).exists() and run.file("summary.json").is_file()


def test_a_photo_cache_on_a_full_disk_warns_and_decoding_goes_on(small_disk):
    """The cache is optional: a full disk under it is a warning, never a failed run."""
    from flowerfast.data.imagecache import CacheUnavailableWarning, ImageCache, decode
    from tests.conftest import sample_files

    disk = small_disk(1)
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * (shutil.disk_usage(disk).free - 4096))
    photo = sample_files("daisy", 1)[0]
    cache = ImageCache(disk / "cache", max_side=256)
    with pytest.warns(CacheUnavailableWarning, match="cannot be written"):
        img = cache.load(photo)
    assert img.tobytes() == decode(photo, 256).tobytes() and not cache.writable
