"""Training and inference precision: the choice per device, bf16 training that stays finite and
gives an fp32 model, fp32 when asked, and help that answers without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import flowerfast
from flowerfast.core.errors import FlowerfastError
from flowerfast.hardware.devices import choose_precision, cpu_has_native_bf16, resolve_precision
from flowerfast.runs.folder import RunFolder
from tests.conftest import SAMPLE, invoke


@pytest.mark.parametrize(
    "requested, device, cpu_bf16, cuda_bf16, expected",
    [
        ("auto", "cpu", True, False, "bf16"),
        ("auto", "cpu", False, False, "fp32"),
        ("auto", "cuda", False, True, "bf16"),
        ("auto", "cuda", False, False, "fp16"),
        ("auto", "mps", True, True, "fp32"),
        ("fp32", "cuda", True, True, "fp32"),
        ("bf16", "cpu", False, False, "bf16"),  # asked for: emulated, but it runs
        ("fp16", "cuda", False, False, "fp16"),
    ],
)
def test_precision_choice(requested, device, cpu_bf16, cuda_bf16, expected):
    assert choose_precision(requested, device, cpu_bf16, cuda_bf16) == expected


@pytest.mark.parametrize(
    "requested, device, cuda_bf16, message",
    [
        ("fp16", "cpu", False, "needs a CUDA GPU"),
        ("bf16", "cuda", False, "this GPU has no bf16"),
        ("bf16", "mps", False, "not supported on mps"),
    ],
)
def test_impossible_precisions_are_refused(requested, device, cuda_bf16, message):
    with pytest.raises(FlowerfastError, match=message):
        choose_precision(requested, device, cpu_bf16=True, cuda_bf16=cuda_bf16)


SKYLAKE = {"avx2", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512cd", "avx512_vnni"}


@pytest.mark.parametrize(
    "flags, machine, expected",
    [
        (SKYLAKE, "x86_64", False),  # AVX-512 without bf16 instructions: oneDNN would say yes
        (SKYLAKE | {"avx512_bf16"}, "x86_64", True),  # Cooper Lake, Zen 4
        (SKYLAKE | {"amx_bf16", "amx_tile"}, "x86_64", True),  # Sapphire Rapids
        ({"fp", "asimd", "bf16"}, "aarch64", True),
        ({"fp", "asimd"}, "aarch64", False),
        (set(), "x86_64", None),  # no flags to read: oneDNN decides
    ],
)
def test_native_bf16_is_read_from_the_cpus_own_flags(flags, machine, expected):
    from flowerfast.hardware.devices import native_bf16_from_flags

    assert native_bf16_from_flags(flags, machine) == expected


def test_auto_on_this_cpu_follows_its_bf16_support(monkeypatch):
    """On this machine, the answer is the one its flags give (when it has flags to read)."""
    import platform

    from flowerfast.hardware.devices import AUTO_PRECISION_ENV

    monkeypatch.delenv(AUTO_PRECISION_ENV)

    from flowerfast.hardware.devices import cpu_flags

    flags = cpu_flags()
    if flags and platform.machine().lower() in ("x86_64", "amd64"):
        assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_the_suite_pins_auto_to_fp32_and_a_bad_pin_is_one_line(monkeypatch):
    from flowerfast.core.errors import FlowerfastError
    from flowerfast.hardware.devices import AUTO_PRECISION_ENV

    assert os.environ[AUTO_PRECISION_ENV] == "fp32"  # set by conftest for every test and subprocess
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # only auto is pinned
    monkeypatch.setenv(AUTO_PRECISION_ENV, "int8")
    with pytest.raises(FlowerfastError, match=r"^FLOWERFAST_AUTO_PRECISION must be fp32, bf16 or fp16 \(got 'int8'\)$"):
        resolve_precision("auto", torch.device("cpu"))


@pytest.mark.parametrize(
    "requested, device, expected", [("auto", "cpu", "fp32"), ("bf16", "cpu", "bf16"), ("auto", "cuda", "bf16")]
)
def test_a_network_of_depthwise_convolutions_trains_in_fp32_on_a_bf16_cpu(requested, device, expected):
    """oneDNN's bf16 depthwise convolutions train slower than fp32 on a CPU; on a GPU bf16 stays."""
    assert choose_precision(requested, device, cpu_bf16=True, cuda_bf16=True, depthwise=True) == expected


def test_depthwise_convolutions_are_found_in_the_networks_that_have_them():
    import timm
    import torchvision

    from flowerfast.hardware.devices import has_depthwise_convolutions

    assert has_depthwise_convolutions(timm.create_model("tf_efficientnet_lite0"))
    assert has_depthwise_convolutions(torchvision.models.mobilenet_v3_small())
    assert not has_depthwise_convolutions(torchvision.models.resnet18())
    assert not has_depthwise_convolutions(torchvision.models.resnext50_32x4d())  # grouped, not depthwise


def test_fp16_on_a_cpu_is_one_line(runner, tmp_path):
    result = invoke(runner, ["train", "--device", "cpu", "--precision", "fp16", "--out", tmp_path / "run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "error: --precision fp16 needs a CUDA GPU (it trains with loss scaling there); use --precision bf16 or fp32"
    ]
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "run"
    result = flowerfast.train(
        arch="resnet18",
        pretrained=False,
        size=32,
        epochs=2,
        bs=16,
        device="cpu",
        precision="bf16",
        out=out,
        clean_train_sample=16,
    )
    return result


def test_a_bf16_run_stays_finite_and_saves_an_fp32_model(bf16_run):
    config = RunFolder(bf16_run.run_dir).read_config()
    assert config.precision == "bf16" and config.options.precision == "bf16"
    assert config.mixed_precision is True and config.channels_last is True
    for epoch in bf16_run.history:
        assert all(torch.isfinite(torch.tensor(v)) for v in (epoch.train_loss, epoch.valid_loss))
    model = flowerfast.load_model(bf16_run.run_dir, device="cpu")
    assert model.precision == "fp32"
    assert all(p.dtype == torch.float32 for p in model.network.parameters())
    files = sorted((SAMPLE / "tulip").glob("*.jpg"))[:8]
    _, probs, errors = model.probabilities(files)
    assert not errors and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(files)), atol=1e-5)


def test_fp32_when_asked(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["precision"] == "fp32" and config["mixed_precision"] is False
    assert config["precision_requested"] == "fp32"


def test_inference_in_bf16_is_close_to_fp32(tiny_run):
    files = sorted(SAMPLE.glob("*/*.jpg"))[::5]
    exact = flowerfast.load_model(tiny_run, device="cpu")
    fast = flowerfast.load_model(tiny_run, device="cpu", precision="bf16")
    assert (exact.precision, fast.precision) == ("fp32", "bf16")
    _, p32, _ = exact.probabilities(files)
    _, p16, _ = fast.probabilities(files)
    # bf16 keeps 8 bits of mantissa: probabilities move by up to a few hundredths
    assert float((p32 - p16).abs().max()) < 0.1
    assert not torch.equal(p32, p16)  # it really ran in bf16


def test_latency_is_cached_per_precision(tiny_run, tmp_path):
    import shutil

    from flowerfast.infer.latency import measure_inference

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "latency.json").unlink(missing_ok=True)
    fp32 = measure_inference(run, device="cpu", repeats=1)
    bf16 = measure_inference(run, device="cpu", repeats=1, precision="bf16")
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert measure_inference(run, device="cpu", repeats=1, precision="bf16") == bf16  # reused, not re-measured


@pytest.mark.parametrize(
    "command", ["", "train", "lr-find", "compare", "report", "predict", "evaluate", "export", "archs"]
)
def test_help_does_not_import_torch(command):
    """``--help`` must answer at once: torch alone takes seconds to import."""
    args = [command, "--help"] if command else ["--help"]
    code = (
        "import sys; from typer.testing import CliRunner; from flowerfast.cli import app; "
        f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'fastai', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_compiled_model_trains_and_scores(tmp_path):
    """``--compile``: the compiled network trains, is scored in eval mode (a second graph) and saves
    weights under their usual names."""
    result = flowerfast.train(
        arch="resnet18",
        pretrained=False,
        size=32,
        epochs=1,
        bs=16,
        device="cpu",
        compile=True,
        out=tmp_path / "run",
        clean_train_sample=16,
    )
    assert result.config.compile is True
    assert all(torch.isfinite(torch.tensor(e.valid_loss)) for e in result.history)
    model = flowerfast.load_model(result.run_dir, device="cpu")  # the names load into a plain network
    assert model.classes == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
