"""Running an exported model file (ONNX through ONNX Runtime, OpenVINO IR through OpenVINO) with
predict, evaluate and serve.

Why: an export is what gets deployed; running it through the same commands checks it on real
photos, with the same preprocessing, the same answers and the same JSON as the model it came
from. The export's own JSON (``best.onnx.json``, written by :mod:`flowerfast.export`) says what
the model is and how a photo becomes its input; its graph already divides by the temperature and
applies the softmax, so its outputs are probabilities (:attr:`LoadedModel.outputs`).
Exports of fastai ``learn.export()`` pickles carry fastai's own transforms, which only fastai can
reproduce: those are refused here (predict the ``.pkl`` itself with ``trust_pickle``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import NamedTuple

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.infer.preprocessing import FlowerfastPreprocessing
from flowerfast.models.classifier import ModelSpec

EXPORTED_SUFFIXES = (".onnx", ".xml")


def info_path(path: Path) -> Path:
    """Where the JSON describing an export at ``path`` is: ``best.onnx.json``."""
    return path.with_name(path.name + ".json")


def is_exported_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES


class OnnxNetwork:
    """An ONNX Runtime session with the call of a network: a float ``(N, C, H, W)`` tensor in,
    the graph's output tensor out (on the CPU)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own classes for a damaged or foreign file
            raise FlowerfastError(f"cannot load the ONNX model {path}: {str(exc).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().cpu().contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(out)

    def eval(self) -> "OnnxNetwork":
        return self


class OpenVinoNetwork:
    """An OpenVINO model compiled for the CPU with the call of a network, on torch's thread count
    (``--threads``) and in fp32 where the file is fp32 (OpenVINO would otherwise pick bf16 on CPUs
    that have it, and the answers would not be those the export was checked with). One inference
    at a time: an infer request is not safe to share between threads (the server's are many)."""

    def __init__(self, path: Path):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with several lines for a damaged file
            raise FlowerfastError(
                f"cannot load the OpenVINO model {path}: {str(exc).strip().splitlines()[0]}"
            ) from None
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().cpu().contiguous().numpy()
        with self.lock:
            out = self.request.infer({0: batch})[0].copy()
        return torch.from_numpy(out)

    def eval(self) -> "OpenVinoNetwork":
        return self


class Runtime(NamedTuple):
    """What runs an exported file: the format's name in a sentence, the module that runs it, the
    extra that brings it, and the network class."""

    label: str
    module: str
    extra: str
    network: type


RUNTIMES = {
    ".onnx": Runtime("ONNX", "onnxruntime", "onnx", OnnxNetwork),
    ".xml": Runtime("OpenVINO", "openvino", "openvino", OpenVinoNetwork),
}
"""The runtime of each exported suffix."""


def require_runtime(path: Path) -> None:
    """A one-line error naming the extra when the runtime of ``path``'s format is missing."""
    import importlib.util

    runtime = RUNTIMES[path.suffix.lower()]
    if importlib.util.find_spec(runtime.module) is None:
        raise FlowerfastError(
            f'running an {runtime.label} model needs {runtime.module}: pip install "flowerfast[{runtime.extra}]"'
        )


def read_export_info(path: Path) -> dict:
    """The export's JSON, checked to be flowerfast's description of a flowerfast model."""
    info_file = info_path(path)
    try:
        info = json.loads(info_file.read_text())
    except FileNotFoundError:
        raise FlowerfastError(
            f"{info_file} is missing: an exported model runs with the JSON flowerfast export writes beside it"
        ) from None
    except (OSError, ValueError) as exc:
        raise FlowerfastError(f"cannot read {info_file}: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != "flowerfast-preprocessing":
        raise FlowerfastError(f"{info_file} is not a flowerfast export description")
    if "center_crop" not in info or "reduce" not in info:
        raise FlowerfastError(
            f"{path} was exported from a fastai export, whose transforms only fastai reproduces: "
            "predict the .pkl itself with $trust_pickle=True",
            parameters=("trust_pickle",),
        )
    return info


class RuntimePreprocessing(FlowerfastPreprocessing):
    """flowerfast's preprocessing, with the batch normalised by numpy on one thread: the batch
    goes to ONNX Runtime or OpenVINO, whose own thread pool computes the network. Torch's pool,
    woken by a batch this size, keeps spinning on the same cores after each operation and slows
    the runtime down (serving an OpenVINO int8 Lite0 on two cores: 249 requests/s with torch's
    threads preparing the batch, 335 with torch on one thread). The same float32 operations in
    the same order, so the input is the one :func:`~flowerfast.infer.preprocessing.normalise`
    gives."""

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        import numpy as np

        x = images.cpu().numpy().astype(np.float32)
        x /= np.float32(255.0)
        x -= np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        x /= np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return torch.from_numpy(x)


def load_exported(path: Path) -> tuple[OnnxNetwork | OpenVinoNetwork, ModelSpec, FlowerfastPreprocessing]:
    """``(network, spec, preprocessing)`` of an exported ONNX or OpenVINO file and its JSON."""
    require_runtime(path)
    if not path.is_file():
        raise FlowerfastError(f"model not found: {path}")
    info = read_export_info(path)
    spec = ModelSpec(
        arch=info["arch"],
        classes=list(info["classes"]),
        size=int(info["size"]),
        cut=0,
        num_features=0,
        mean=list(info["mean"]),
        std=list(info["std"]),
        temperature=float(info.get("temperature", 1.0)),
        multi_label=bool(info.get("multi_label", False)),
        thresholds=[float(t) for t in info.get("thresholds", [])],
        format="flowerfast-export",
    )
    network = RUNTIMES[path.suffix.lower()].network(path)
    return network, spec, RuntimePreprocessing(spec.size, spec.mean, spec.std)
