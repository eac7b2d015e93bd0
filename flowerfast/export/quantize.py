"""int8 post-training quantization of an export (``flowerfast export --int8``), checked on the
run's validation photos before it is written.

Why int8: on a CPU, fp32 prediction runs at the speed of the network's matrix multiplies, and
int8 ones do four times the work per instruction (VNNI, AMX) or about twice (AVX2).

Why OpenVINO with NNCF, not ONNX Runtime's static QDQ quantization: both were measured on the same
model, photos and CPU (``benchmarks/bench_int8.py``): OpenVINO's int8 network was both faster
and closer to fp32 (on a 2-core AMD EPYC with AVX2, EfficientNet-Lite0 fine-tuned on the shared
flowers: 591 images/s against ONNX Runtime's 406; 77.5% against 71.3%, fp32 76.5%).

Why the overflow fix on every layer: CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply
uint8 activations by int8 weights into 16-bit sums that saturate; NNCF then keeps weights on 7
bits so the sums stay in range. NNCF's default fixes only the first layer, which suits VNNI; on
AVX2 the same model lost 5.4 points of accuracy with no fix at all, 1.3 with NNCF's default, and
gained 1.0 with it on every layer. The exported file may be deployed on either kind of CPU, so it
is always fixed.

Why check on the validation photos: an int8 network answers differently from the fp32 one on
photos near a class boundary, and only accuracy on real photos says whether that matters. The
calibration photos are validation photos too, as the network never trained on them; the check
runs on every validation photo.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from flowerfast.core.errors import FlowerfastError
from flowerfast.infer.batches import ImageFileDataset, collate_images
from flowerfast.infer.predict import LoadedModel

MAX_ACCURACY_LOSS = 1.0
"""Points of validation accuracy an int8 export may lose against fp32 before it is refused."""
CALIBRATION_IMAGES = 300
"""Validation photos NNCF collects activation ranges on (its own default subset size)."""
CHECK_BATCH = 32


@dataclass
class Int8Check:
    """The int8 network against the fp32 one on the run's validation photos: accuracies, the
    share of photos both give the same top answer (``agreement``), and how many photos set the
    quantization ranges."""

    images: int
    calibration_images: int
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float

    @property
    def loss_points(self) -> float:
        """Accuracy lost to int8, in points (negative: gained)."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss_points": self.loss_points}


def require_int8_extra() -> None:
    import importlib.util

    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    if missing:
        raise FlowerfastError(f'int8 export needs {" and ".join(missing)}: pip install "flowerfast[openvino]"')


def check_max_accuracy_loss(points: float) -> float:
    if not points >= 0:
        raise FlowerfastError(
            f"$max_accuracy_loss must be 0 or more points, not {points}", parameters=("max_accuracy_loss",)
        )
    return float(points)


def input_batches(model: LoadedModel, files: Sequence[Path], bs: int = CHECK_BATCH):
    """The network inputs of ``files`` (float, contiguous ``NCHW``), in order, ``bs`` at a time;
    an unreadable photo is an error (the split names photos that were readable when it was made)."""
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(list(files), model.preprocessing.load), batch_size=bs, collate_fn=collate_images
    )
    for _, images, bad in loader:
        if bad:
            index, reason = next(iter(bad.items()))
            raise FlowerfastError(f"cannot read a validation photo ({reason}): {files[index]}")
        yield model.preprocessing.to_input(images).float().contiguous()


def calibration_sample(files: Sequence[Path], n: int = CALIBRATION_IMAGES, seed: int = 0) -> list[Path]:
    """Up to ``n`` of ``files``, chosen at random but the same each time (the export is repeatable)."""
    files = list(files)
    return sorted(random.Random(seed).sample(files, n)) if len(files) > n else files


def quantize(ov_model, model: LoadedModel, files: Sequence[Path]):
    """``ov_model`` (the fp32 OpenVINO network with its softmax) quantized to int8 by NNCF, its
    ranges collected on ``files``: weights per channel, activations per tensor, the overflow fix
    on every layer (see the module's docstring)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    items = [x[i : i + 1].numpy() for x in input_batches(model, files) for i in range(len(x))]
    with quiet_nncf():
        return nncf.quantize(
            ov_model,
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(items),
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
        )


def quiet_nncf():
    """NNCF's log and progress bars silenced: the library reports nothing on the terminal itself."""
    import contextlib
    import io
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def compare_int8(
    model: LoadedModel, int8_file: Path, files: Sequence[Path], labels: Sequence[str], calibration_images: int
) -> Int8Check:
    """The fp32 model and the int8 OpenVINO file on every validation photo, each as predict runs
    it (:meth:`LoadedModel.scores`, the int8 file with an export's network and preprocessing)."""
    from flowerfast.infer.exported import OpenVinoNetwork, RuntimePreprocessing

    spec = model.spec
    int8_model = LoadedModel(
        OpenVinoNetwork(int8_file),
        spec,
        torch.device("cpu"),
        int8_file,
        RuntimePreprocessing(spec.size, spec.mean, spec.std),
        outputs="probabilities",
    )
    targets = torch.tensor([model.classes.index(label) for label in labels])
    fp32, int8 = (top_answers(m, files) for m in (model, int8_model))
    n = len(files)
    return Int8Check(
        images=n,
        calibration_images=calibration_images,
        fp32_accuracy=int((fp32 == targets).sum()) / n,
        int8_accuracy=int((int8 == targets).sum()) / n,
        agreement=int((fp32 == int8).sum()) / n,
    )


def top_answers(model: LoadedModel, files: Sequence[Path]) -> torch.Tensor:
    """The index of each photo's top class; an unreadable photo is an error (the split names
    photos that were readable when it was made)."""
    _, probs, _, errors = model.scores(files)
    if errors:
        index, reason = next(iter(errors.items()))
        raise FlowerfastError(f"cannot read a validation photo ({reason}): {files[index]}")
    return probs.argmax(dim=1)


def refuse_if_worse(check: Int8Check, max_accuracy_loss: float) -> Int8Check:
    """``check``, or a one-line error when int8 loses more than ``max_accuracy_loss`` points."""
    if check.loss_points > max_accuracy_loss + 1e-9:
        raise FlowerfastError(
            f"the int8 model is {check.int8_accuracy:.1%} right on the {check.images} validation photos against "
            f"fp32's {check.fp32_accuracy:.1%} ({check.loss_points:.1f} points lost, more than {max_accuracy_loss:g}); "
            "nothing was written: export without $int8, or accept the loss with $max_accuracy_loss",
            parameters=("int8", "max_accuracy_loss"),
        )
    return check
