"""Shared fixtures: small real photo folders built from the embedded sample, and one tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flowerfast.data.folders import default_data_dir

SAMPLE = default_data_dir()
SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers").resolve()
requires_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"needs the full photo set at {SHARED}, which this checkout lacks"
)


def sample_files(cls: str, n: int | None = None) -> list[Path]:
    files = sorted((SAMPLE / cls).glob("*.jpg"))
    return files if n is None else files[:n]


def validation_folder(run: Path, folder: Path) -> tuple[list[Path], list[str]]:
    """A run's validation photos copied into ``folder`` as class folders (a labelled folder for
    ``evaluate``); their paths in the run's data folder and their labels, in the split's order."""
    from flowerfast.infer.photosets import validation_split
    from flowerfast.runs.folder import RunFolder

    _, files, labels, _ = validation_split(RunFolder(run))
    for f, label in zip(files, labels):
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / label / f.name)
    return files, labels


def make_folder(root: Path, per_class: dict[str, int]) -> Path:
    """A data folder with the first ``n`` embedded photos of each named class."""
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in sample_files(cls, n):
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="session", autouse=True)
def photo_cache(tmp_path_factory):
    """Every run of the suite, in process and in subprocesses, caches photos in a fresh folder of
    its own, never in the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("photo-cache")
    previous = os.environ.get("FLOWERFAST_CACHE")
    os.environ["FLOWERFAST_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("FLOWERFAST_CACHE", None)
    else:
        os.environ["FLOWERFAST_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def fp32_for_auto_precision():
    """``--precision auto`` means fp32 for the whole suite, in process and in subprocesses: with
    bf16 on some CPUs (AMX, AVX512-BF16) and fp32 on others, the same test would compute a
    different path on every machine. Tests of ``auto`` itself remove the variable."""
    import os

    from flowerfast.hardware.devices import AUTO_PRECISION_ENV

    previous = os.environ.get(AUTO_PRECISION_ENV)
    os.environ[AUTO_PRECISION_ENV] = "fp32"
    yield
    if previous is None:
        os.environ.pop(AUTO_PRECISION_ENV, None)
    else:
        os.environ[AUTO_PRECISION_ENV] = previous


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Every test ends with torch's thread count as it began: an in-process run with
    ``--threads 1`` sets it for the whole process, and every later test would compute on one core."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, args: list[str]):
    """Run the CLI in-process; on an unexpected exception, re-raise it with its traceback."""
    from flowerfast.cli import app

    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One real training run through the CLI on the embedded photos (resnet18, 32px, 2 epochs).

    Pinned to the CPU in fp32: tests compare its numbers with other fp32 computations, and by
    default training runs in bf16 where the hardware has it.
    """
    out = tmp_path_factory.mktemp("runs") / "tiny"
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
            "--precision",
            "fp32",
            "--out",
            out,
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def run_dir(tiny_run) -> Path:
    """The tiny run's folder, for the tests that use its model (predict, evaluate, export)."""
    return tiny_run


@pytest.fixture(scope="session")
def lite_run(tmp_path_factory) -> Path:
    """A real fine-tune of the packaged ImageNet EfficientNet-Lite0 on the embedded photos (one
    frozen epoch, then three; about 35 s on two cores), for the tests that need a model which
    knows flowers: "unknown" on photos that are not flowers, and where Grad-CAM looks. CPU, fp32.
    Measured: 72.5% on the 40 validation photos."""
    return fine_tune_lite0(tmp_path_factory.mktemp("runs") / "lite0", epochs=3)


def fine_tune_lite0(out: Path, epochs: int, **options) -> Path:
    """Fine-tune the packaged ImageNet EfficientNet-Lite0 into ``out``: one frozen epoch, then
    ``epochs``; CPU, fp32, no clean training-accuracy pass (the figures the fixtures quote)."""
    import flowerfast

    flowerfast.train(
        arch="tf_efficientnet_lite0",
        epochs=epochs,
        freeze_epochs=1,
        out=out,
        device="cpu",
        precision="fp32",
        clean_train_sample=0,
        **options,
    )
    return out
