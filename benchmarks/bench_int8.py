"""Benchmark: int8 prediction against fp32 and bf16, side by side in one run. Not a test.

    python benchmarks/bench_int8.py [--data ../shared/data/flowers] [--models RUN,RUN] [--threads N]

For each model (by default a resnet18 from random weights and an EfficientNet-Lite0 from its
ImageNet weights, both trained now on ``--data`` at 128 px by ``flowerfast train``), six ways to
run it, each loaded as predict loads it (:func:`flowerfast.load_model`):

  PyTorch fp32          the run folder, as ``flowerfast predict`` runs it (the baseline);
  PyTorch bf16          the same with ``--precision bf16`` (autocast; fast only on CPUs with bf16);
  ONNX Runtime fp32     ``flowerfast export --format onnx``;
  OpenVINO fp32         ``flowerfast export --format openvino``;
  ONNX Runtime int8     the ONNX file quantized here by ONNX Runtime's static QDQ quantization
                        (uint8 activations, int8 weights per channel, weights on 7 bits, calibrated
                        on the same validation photos as flowerfast's), the contender flowerfast
                        did not keep;
  OpenVINO int8         ``flowerfast export --int8`` (NNCF).

Each is timed on photos decoded beforehand (the network and its preprocessing, as predict
computes a batch): images/s at batch ``--bs`` (64) and the median latency of one photo; then
run on the whole validation split of the run through predict's own path, for its accuracy and its
top-1 agreement with PyTorch fp32. Goal (issue): int8 at least 2.5x PyTorch fp32 images/s, within
1 point of its accuracy.

First, the ceiling: what int8 gains over fp32 on this CPU where it gains most, on convolutions
alone. Four 3x3 convolutions with ReLU, at each of resnet18's stage shapes at 128 px (64 channels
at 32x32 to 512 at 4x4), batch 64, in OpenVINO fp32 and quantized by NNCF with flowerfast's
settings: a network made of such layers cannot gain more than this ratio from int8 here.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import add_data_argument, machine_line, run_flowerfast

CONTENDERS = (
    "PyTorch fp32",
    "PyTorch bf16",
    "ONNX Runtime fp32",
    "OpenVINO fp32",
    "ONNX Runtime int8",
    "OpenVINO int8",
)
DEFAULT_ARCHS = ("resnet18", "tf_efficientnet_lite0")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_argument(ap)
    ap.add_argument("--models", default=None, help="run folders to measure, comma-separated; default: train both")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of each model trained when --models is not given")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--latency-runs", type=int, default=100, help="single-photo runs timed for the p50")
    ap.add_argument("--seconds", type=float, default=4.0, help="time spent on each contender's throughput")
    ap.add_argument("--threads", type=int, default=None, help="compute threads (default: torch's)")
    return ap.parse_args(argv)


def trained_runs(args, tmp: Path) -> list[Path]:
    if args.models:
        return [Path(m) for m in args.models.split(",")]
    runs = []
    for arch in DEFAULT_ARCHS:
        out = tmp / arch
        pretrained = "--pretrained" if arch != "resnet18" else "--no-pretrained"
        argv = ["train", "--data", str(args.data), "--arch", arch, "--epochs", str(args.epochs), pretrained]
        print(f"training: flowerfast {' '.join(argv)}", flush=True)
        run_flowerfast([*argv, "--out", str(out)])
        runs.append(out)
    return runs


def ort_int8(onnx_file: Path, model, files: list[Path], out: Path) -> Path:
    """``onnx_file`` quantized by ONNX Runtime (static QDQ, u8s8, per channel, 7-bit weights: the
    best of its settings measured on this kind of CPU), calibrated on ``files``; with its JSON."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from flowerfast.export.quantize import input_batches

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"input": x.numpy()} for x in input_batches(model, files))

        def get_next(self):
            return next(self.batches, None)

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(onnx_file), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
    )
    shutil.copy(onnx_file.with_name(onnx_file.name + ".json"), out.with_name(out.name + ".json"))
    return out


def contender_models(run: Path, folder: Path) -> dict:
    """Each contender of :data:`CONTENDERS` as a loaded model, exported into ``folder``."""
    import flowerfast
    from flowerfast.export.quantize import calibration_sample
    from flowerfast.infer.photosets import validation_split
    from flowerfast.runs.folder import RunFolder

    onnx = flowerfast.export_model(run, format="onnx", out=folder / "fp32.onnx").path
    openvino = flowerfast.export_model(run, format="openvino", out=folder / "fp32.xml").path
    started = time.perf_counter()
    int8 = flowerfast.export_model(run, int8=True, out=folder / "int8.xml", max_accuracy_loss=100)
    print(f"  flowerfast export --int8: {time.perf_counter() - started:.0f} s; {int8.int8.to_dict()}", flush=True)
    pytorch = flowerfast.load_model(run, device="cpu")
    _, files, _, _ = validation_split(RunFolder(run))
    ort = ort_int8(onnx, pytorch, calibration_sample(files), folder / "ort-int8.onnx")
    return {
        "PyTorch fp32": pytorch,
        "PyTorch bf16": flowerfast.load_model(run, device="cpu", precision="bf16"),
        "ONNX Runtime fp32": flowerfast.load_model(onnx),
        "OpenVINO fp32": flowerfast.load_model(openvino),
        "ONNX Runtime int8": flowerfast.load_model(ort),
        "OpenVINO int8": flowerfast.load_model(int8.path),
    }


def throughput(model, images: torch.Tensor, seconds: float) -> float:
    """Images/s of ``model.probabilities_of`` on one decoded batch, run for about ``seconds``."""
    model.probabilities_of(images)  # warm-up: first-call allocations and kernel choices
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.probabilities_of(images)
        done += len(images)
    return done / (time.perf_counter() - started)


def latency_ms(model, image: torch.Tensor, runs: int) -> float:
    """Median milliseconds of one photo through ``model.probabilities_of``."""
    for _ in range(5):
        model.probabilities_of(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.probabilities_of(image)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure_run(run: Path, args, tmp: Path) -> list[dict]:
    from flowerfast.infer.photosets import validation_split
    from flowerfast.runs.folder import RunFolder

    folder = tmp / f"exports-{run.name}"
    folder.mkdir()
    models = contender_models(run, folder)
    _, files, labels, _ = validation_split(RunFolder(run))
    base = models["PyTorch fp32"]
    images = torch.stack([base.preprocessing.load(f) for f in files[: args.bs]])
    rows, reference = [], None
    for name in CONTENDERS:
        model = models[name]
        _, probs, _, errors = model.scores(files, bs=args.bs)
        assert not errors, errors
        top = probs.argmax(dim=1)
        reference = top if reference is None else reference
        targets = torch.tensor([model.classes.index(label) for label in labels])
        rows.append(
            {
                "contender": name,
                "images/s": throughput(model, images, args.seconds),
                "p50 ms": latency_ms(model, images[:1], args.latency_runs),
                "accuracy": int((top == targets).sum()) / len(files),
                "agreement": int((top == reference).sum()) / len(files),
            }
        )
        print(f"  {name}: {rows[-1]}", flush=True)
    return rows


INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


def cpu_features() -> str:
    """Which of the instruction sets that int8 and bf16 depend on this CPU has (Linux)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo)"
    have = set(flags.split(":", 1)[1].split())
    return ", ".join(f"{flag} {'yes' if flag in have else 'no'}" for flag in INT8_FLAGS)


RESNET18_STAGES = ((64, 32), (128, 16), (256, 8), (512, 4))
"""(channels, height and width) of resnet18's four stages for a 128 px input."""


def openvino_speed(ov_model, x, seconds: float) -> float:
    """Batches/s of an OpenVINO model on ``x``, compiled as flowerfast compiles an export."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
    request = ov.Core().compile_model(ov_model, "CPU", config).create_infer_request()
    request.infer({0: x})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        request.infer({0: x})
        done += 1
    return done / (time.perf_counter() - started)


def conv_ceiling(args) -> None:
    """int8 against fp32 on convolutions alone (see the module's docstring)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    from flowerfast.export.quantize import quiet_nncf

    print("\nceiling: four 3x3 convolutions + ReLU, batch 64, OpenVINO fp32 against NNCF int8 (flowerfast's settings)")
    for channels, side in RESNET18_STAGES:
        layers = [
            torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU()) for _ in range(4)
        ]
        x = torch.rand(64, channels, side, side, generator=torch.Generator().manual_seed(0))
        fp32 = ov.convert_model(
            torch.nn.Sequential(*layers).eval(), example_input=x[:1], input=[(-1, channels, side, side)]
        )
        with quiet_nncf():
            int8 = nncf.quantize(
                fp32,
                nncf.Dataset([x[i : i + 1].numpy() for i in range(32)]),
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=32,
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
            )
        f = openvino_speed(fp32, x.numpy(), args.seconds)
        i = openvino_speed(int8, x.numpy(), args.seconds)
        gmacs = 4 * channels * channels * 9 * side * side * 64 / 1e9
        print(
            f"  {channels:3} channels at {side:2}x{side:<2}: fp32 {f * gmacs:6.1f} GMAC/s, int8 {i * gmacs:6.1f}: {i / f:.2f}x"
        )


def print_table(run: Path, arch: str, rows: list[dict], n: int) -> None:
    base = rows[0]
    print(f"\n{arch} ({run}), {n} validation photos")
    print(f"{'contender':20} {'images/s':>9} {'vs fp32':>8} {'p50 ms':>7} {'accuracy':>9} {'points':>7} {'agree':>7}")
    for r in rows:
        print(
            f"{r['contender']:20} {r['images/s']:9.1f} {r['images/s'] / base['images/s']:7.2f}x {r['p50 ms']:7.2f} "
            f"{r['accuracy']:9.2%} {100 * (r['accuracy'] - base['accuracy']):+7.2f} {r['agreement']:7.2%}"
        )
    best = rows[CONTENDERS.index("OpenVINO int8")]
    speed = best["images/s"] / base["images/s"]
    points = 100 * (best["accuracy"] - base["accuracy"])
    over_openvino = best["images/s"] / rows[CONTENDERS.index("OpenVINO fp32")]["images/s"]
    met = "met" if speed >= 2.5 and points >= -1 else "not met"
    print(
        f"OpenVINO int8: {speed:.2f}x PyTorch fp32 images/s ({over_openvino:.2f}x OpenVINO fp32), accuracy "
        f"{points:+.2f} points: goal (2.5x, within 1 point) {met}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import flowerfast

    print(machine_line(), flush=True)
    print(f"CPU features: {cpu_features()}", flush=True)
    conv_ceiling(args)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        results = []
        for run in trained_runs(args, Path(tmp)):
            print(f"measuring {run}", flush=True)
            spec = flowerfast.load_model(run, device="cpu").spec
            rows = measure_run(run, args, Path(tmp))
            results.append((run, f"{spec.arch} at {spec.size} px", rows))
        for run, arch, rows in results:
            from flowerfast.infer.photosets import validation_split
            from flowerfast.runs.folder import RunFolder

            print_table(run, arch, rows, len(validation_split(RunFolder(run))[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
