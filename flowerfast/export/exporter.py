"""Writing a trained classifier in one of the export formats (:mod:`flowerfast.export.formats`),
checked against PyTorch before it is put in place; in int8, checked on the run's validation
photos (:mod:`flowerfast.export.quantize`)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.export.formats import ExportFormat, choose_format
from flowerfast.infer.exported import info_path, is_exported_file
from flowerfast.infer.photosets import run_of, validation_split
from flowerfast.infer.predict import LoadedModel, as_loaded_model, check_finite, check_pickle_allowed

if TYPE_CHECKING:
    from flowerfast.export.quantize import Int8Check

CHECK_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """What was written and how closely the export matches PyTorch (max abs difference in probabilities)."""

    path: Path
    preprocessing: Path
    format: str
    max_abs_diff: float
    tolerance: float = CHECK_TOLERANCE
    int8: Optional["Int8Check"] = None  # with int8=True: the int8 network against fp32 on the validation photos


class WithSoftmax(torch.nn.Module):
    """The classifier plus its calibration and softmax, so exported outputs are the probabilities
    ``predict`` gives (the logits divided by the model's temperature inside the graph); for a
    multi-label model a sigmoid per class instead, its thresholds in the JSON beside it."""

    def __init__(self, network: torch.nn.Module, temperature: float = 1.0, multi_label: bool = False):
        super().__init__()
        self.network = network
        self.temperature = float(temperature)
        self.multi_label = multi_label

    def forward(self, x):
        if self.multi_label:
            return torch.sigmoid(self.network(x))
        return torch.softmax(self.network(x) / self.temperature, dim=-1)


def preprocessing_info(model: LoadedModel, fmt: str) -> dict:
    """The preprocessing recipe, written for someone implementing it without flowerfast.

    The model's :class:`~flowerfast.infer.preprocessing.Preprocessing` describes itself (resize and crop,
    or a fastai export's own transforms); the input and output of the exported file are added here.
    """
    spec = model.spec
    recipe = model.preprocessing.describe()
    steps = recipe.pop("steps")
    channels = model.preprocessing.channels
    return {
        "format": "flowerfast-preprocessing",
        "model_format": fmt,
        "classes": list(spec.classes),
        "size": spec.size,
        **recipe,
        "input": {
            "name": "input",
            "layout": "NCHW",
            "dtype": "float32",
            "shape": ["batch", channels, spec.size, spec.size],
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(spec.classes)],
            "meaning": "a sigmoid per class: the photo has each class whose probability reaches its threshold"
            if spec.multi_label
            else "softmax over classes of the logits divided by the temperature (in the graph)",
        },
        "temperature": spec.temperature,
        **({"multi_label": True, "thresholds": spec.class_thresholds()} if spec.multi_label else {}),
        "steps": steps,
        "source_model": str(model.source),
        "arch": spec.arch,
    }


def default_export_path(model: LoadedModel, fmt: ExportFormat) -> Path:
    src = model.source
    if src.is_dir():
        from flowerfast.models.classifier import model_paths

        src = model_paths(src)[0]
    return src.with_suffix(fmt.suffix)


def export_model(
    model_or_path,
    format: str = "auto",
    out: Optional[Path | str] = None,
    check: bool = True,
    trust_pickle: bool = False,
    force: bool = False,
    int8: bool = False,
    max_accuracy_loss: Optional[float] = None,
) -> ExportResult:
    """Write the model in ``format`` (``onnx``: ``.onnx``, ``torchscript``: ``.pt``, ``openvino``:
    ``.xml`` and ``.bin``; see :func:`flowerfast.export.format_names`) plus ``<file>.json``, its
    preprocessing.

    ``out`` defaults to the model file with the format's suffix (``runs/x/best.onnx``); an existing
    file is replaced only with ``force``. The export is written beside its target and checked
    there; only an export that passes its check is put in place, so a failed one leaves nothing.
    Exports run on the CPU with a dynamic batch axis. ``format="auto"`` follows the suffix of
    ``out`` (``.onnx``, ``.pt``, ``.xml``); without one it is the preferred format installed: ONNX
    where the ``onnx`` extra is installed, else TorchScript (which needs nothing more).

    ``int8`` writes an OpenVINO network quantized to int8 (the ``openvino`` extra; ``auto`` means
    OpenVINO then), calibrated and checked on the run's validation photos, so it needs a run
    folder (or a model file in one). It is refused when it loses more than ``max_accuracy_loss``
    points of accuracy against fp32 (default :data:`~flowerfast.export.quantize.MAX_ACCURACY_LOSS`).
    """
    if max_accuracy_loss is not None and not int8:
        raise FlowerfastError("$max_accuracy_loss is for $int8 exports", parameters=("max_accuracy_loss", "int8"))
    fmt = choose_format("openvino" if int8 and str(format).lower() == "auto" and out is None else format, out)
    if isinstance(model_or_path, (str, Path)) and is_exported_file(model_or_path):
        raise FlowerfastError(f"{model_or_path} is already an export: export the run or model file it came from")
    check_pickle_allowed(model_or_path, trust_pickle)  # before anything else: never a hint to install onnx first
    fmt.require()
    int8_plan = plan_int8(model_or_path, fmt, max_accuracy_loss) if int8 else None
    model = as_loaded_model(model_or_path, device="cpu", trust_pickle=trust_pickle)
    if model.device.type != "cpu":
        model = as_loaded_model(model.source, device="cpu", trust_pickle=True)  # already opened by the caller
    if int8 and model.spec.multi_label:
        raise FlowerfastError(
            "$int8 checks top-1 accuracy against fp32, which a multi-label model does not have: export it in fp32",
            parameters=("int8",),
        )
    path = export_target(Path(out).expanduser() if out is not None else default_export_path(model, fmt), fmt, force)
    # A plain-layout copy: the exported weights should not depend on the layout used for speed here.
    network = copy.deepcopy(model.network).to(memory_format=torch.contiguous_format)
    wrapped = WithSoftmax(network, model.spec.temperature, model.spec.multi_label).eval()
    shape = (model.preprocessing.channels, model.spec.size, model.spec.size)  # channels, height, width
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    info = preprocessing_info(model, fmt.name)
    if int8_plan is not None:
        files, checker = int8_files(model, wrapped, example, *int8_plan)
        info["precision"] = "int8"
    else:
        check_batch = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = check_finite(wrapped(check_batch), model.source)
        files = fmt.files(fmt.write(wrapped, example))
        checker = tolerance_check(fmt, check_batch, expected) if check else None
    found = put_in_place(fmt, files, path, info, checker)
    return ExportResult(
        path=path,
        preprocessing=info_path(path),
        format=fmt.name,
        max_abs_diff=found.get("max_abs_diff", float("nan")),
        int8=found.get("int8"),
    )


def plan_int8(model_or_path, fmt: ExportFormat, max_accuracy_loss: Optional[float]) -> tuple:
    """What an int8 export needs, checked before anything is computed: the OpenVINO format, the
    extra, the run's validation photos and a valid ``max_accuracy_loss``."""
    from flowerfast.export import quantize

    if fmt.name != "openvino":
        raise FlowerfastError(
            f"$int8 exports are OpenVINO (.xml), not {fmt.label}: OpenVINO's int8 was faster and more accurate "
            "than ONNX Runtime's where both were measured",
            parameters=("int8",),
        )
    quantize.require_int8_extra()
    loss = quantize.check_max_accuracy_loss(
        quantize.MAX_ACCURACY_LOSS if max_accuracy_loss is None else max_accuracy_loss
    )
    run = run_of(model_or_path.source if isinstance(model_or_path, LoadedModel) else model_or_path)
    if run is None:
        raise FlowerfastError(
            "$int8 calibrates and checks on a run's validation photos: give the run folder (or a model file in it)",
            parameters=("int8",),
        )
    _, files, labels, skipped = validation_split(run)
    if skipped or not files:
        raise FlowerfastError(
            f"$int8 needs the run's validation photos, and {len(skipped)} of them are gone from "
            f"{run.read_config().data}",
            parameters=("int8",),
        )
    return files, labels, loss


def int8_files(model: LoadedModel, wrapped: torch.nn.Module, example: torch.Tensor, files, labels, loss: float):
    """The int8 OpenVINO files of ``wrapped`` and the check that refuses them when they lose more
    than ``loss`` points on the validation photos."""
    from flowerfast.export import quantize
    from flowerfast.export.formats import openvino

    sample = quantize.calibration_sample(files)
    quantized = quantize.quantize(openvino.convert(wrapped, example), model, sample)

    def checker(staged: Path) -> dict:
        found = quantize.compare_int8(model, staged, files, labels, len(sample))
        return {"int8": quantize.refuse_if_worse(found, loss)}

    return openvino.serialized(quantized), checker


def tolerance_check(fmt: ExportFormat, batch: torch.Tensor, expected: torch.Tensor) -> Callable[[Path], dict]:
    """The check of a full-precision export: its probabilities on ``batch`` within
    :data:`CHECK_TOLERANCE` of PyTorch's (``expected``)."""

    def checker(staged: Path) -> dict:
        diff = float((expected - fmt.run(staged, batch)).abs().max())
        if not diff <= CHECK_TOLERANCE:
            raise FlowerfastError(
                f"the exported {fmt.name} model differs from PyTorch by {diff:.2e} "
                f"(more than {CHECK_TOLERANCE:.0e}); nothing was written"
            )
        return {"max_abs_diff": diff}

    return checker


def export_target(path: Path, fmt: ExportFormat, force: bool) -> Path:
    """``path``, checked to be a file that can be written (it and its companions replaced only
    with ``force``)."""
    if path.is_dir():
        raise FlowerfastError(f"$out must be a file, not a folder: {path}", parameters=("out",))
    if not path.parent.exists():
        raise FlowerfastError(f"output folder does not exist: {path.parent}")
    if fmt.companions and path.suffix.lower() not in fmt.suffixes:
        raise FlowerfastError(f"$out of an {fmt.label} export must end in {fmt.suffix}: {path}", parameters=("out",))
    if not force:
        for existing in (*fmt.paths(path).values(), info_path(path)):
            if existing.exists():
                raise FlowerfastError(
                    f"{existing} already exists: pass $force=True to replace it", parameters=("force",)
                )
    if not path.parent.is_dir():
        raise FlowerfastError(f"cannot write to {path.parent}: it is a file, not a folder")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise FlowerfastError(f"cannot write to {path.parent}: permission denied")
    return path


def put_in_place(
    fmt: ExportFormat, files: dict[str, bytes], path: Path, info: dict, check: Optional[Callable[[Path], dict]]
) -> dict:
    """Write ``files`` (by suffix, :meth:`ExportFormat.files`) beside ``path``, run ``check`` on
    them there (it raises to refuse them, else returns what it found), then move them to ``path``
    and its companions, the preprocessing JSON first; what the check found (``{}`` unchecked)."""
    from flowerfast.core.files import atomic_write_bytes, write_json

    staged = path.with_name(f".{path.name}.{os.getpid()}.staged{path.suffix}")  # checked here, then put in place
    staged_files = fmt.paths(staged)
    try:
        for suffix, data in files.items():
            atomic_write_bytes(staged_files[suffix], data)
        found = check(staged) if check is not None else {}
        write_json(info_path(path), {**info, **{k: v.to_dict() for k, v in found.items() if hasattr(v, "to_dict")}})
        for suffix, target in fmt.paths(path).items():
            os.replace(staged_files[suffix], target)
    except OSError as exc:
        raise FlowerfastError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for staged_file in staged_files.values():
            staged_file.unlink(missing_ok=True)
    return found
