"""Grad-CAM heatmaps for flowerfast models: where in a photo the model found its evidence.

Why: a prediction says *what* the model saw, a heatmap says *where*; it shows a model that learnt
the background (grass for dandelions, sky for sunflowers) rather than the flower, which accuracy
alone hides. Grad-CAM (Selvaraju et al., 2017) weights a late feature map by the mean gradient of
the class score over each channel: one forward and one backward pass, and no change to the network.

Why the grad-cam package (the ``cam`` extra), and imported only inside the functions: it brings
OpenCV, matplotlib and SciPy (seconds to import), which prediction without ``--cam`` never needs;
this module imports without it. Why the hooks go on a copy (:func:`shadow_copy`): the library hooks
the target layer and runs a backward pass; the copy's modules are new but its weights are the loaded
network's own tensors (nothing is copied), so the loaded network, which a server may be running in
another thread meanwhile, never carries a hook, a gradient or a changed flag, even if Grad-CAM fails.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import atomic_write_bytes
from flowerfast.models.classifier import ConcatPool2d, ModelSpec
from flowerfast.models.nets import TimmBody

if TYPE_CHECKING:
    from PIL.Image import Image

    from flowerfast.infer.predict import LoadedModel

CAM_BATCH = 16  # photos per Grad-CAM pass in write_overlays: a backward pass keeps every activation alive
CAM_SUFFIX = ".cam.png"
IMAGE_WEIGHT = 0.5
"""The photo's share of an overlay (the heatmap's colours have the rest): in equal parts both stay
readable, the flower under the colours and the colours over a busy photo."""


def require_cam_extra() -> None:
    """The grad-cam package is an extra: say which one when it is missing, before any work."""
    import importlib.util

    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise FlowerfastError('Grad-CAM needs the cam extra: pip install "flowerfast[cam]"')


# ----------------------------------------------------------------------------------------------
# The target layer


def body_of(network: nn.Module) -> nn.Module:
    """The feature body of a flowerfast network (``Sequential(body, head)``, the head starting with
    flowerfast's concat pool); anything else is refused: the target layer is chosen by the body's
    layout, which only flowerfast's own model files pin down (a fastai export's may be anything)."""
    head = network[-1] if isinstance(network, nn.Sequential) and len(network) == 2 else None
    if not (isinstance(head, nn.Sequential) and len(head) > 0 and isinstance(head[0], ConcatPool2d)):
        raise FlowerfastError(
            "Grad-CAM needs a flowerfast model file (.safetensors + .json, or a run folder): this "
            "network is not flowerfast's body + head (a fastai export?)"
        )
    return network[0]


def _children(module: nn.Module) -> list[nn.Module]:
    return list(module.children())


def _timm_body(body: nn.Module) -> Optional[nn.Module]:
    if isinstance(body, TimmBody):
        return body
    last = _children(body)[-1:] or [None]
    return last[0] if isinstance(last[0], TimmBody) else None


def _last_relu(body: nn.Module) -> Optional[nn.Module]:
    relus = [m for m in body.modules() if isinstance(m, nn.ReLU)]
    return relus[-1] if relus else None


def _last_block(body: nn.Module) -> Optional[nn.Module]:
    """The last block of a last child that is a stage of blocks (each a module of modules)."""
    stage = (_children(body)[-1:] or [None])[0]
    if isinstance(stage, nn.Sequential) and len(stage) > 0 and all(_children(block) for block in stage):
        return stage[-1]
    return None


def _last_child(body: nn.Module) -> nn.Module:
    return (_children(body)[-1:] or [body])[0]


class CamFamily(NamedTuple):
    """A family of bodies and the layer Grad-CAM looks at in it (``None``: not this family)."""

    name: str
    layer: Callable[[nn.Module, ModelSpec], Optional[nn.Module]]


FAMILIES: tuple[CamFamily, ...] = (
    # timm: the TimmBody itself. Its output (forward_features) is the final feature map, after the
    # head convolution and its activation: the last map with places in it, and one layout for all.
    CamFamily("timm", lambda body, spec: _timm_body(body)),
    # VGG: the last ReLU of the features, the last map before the final max pool. Twice the
    # resolution of the pooled map (14 rather than 7 at 224 px) and the same evidence, unpooled.
    CamFamily("vgg", lambda body, spec: _last_relu(body) if spec.arch.startswith("vgg") else None),
    # ResNet-like (torchvision ResNet, ResNeXt, wide ResNet; ConvNeXt, MobileNet too): the last block
    # of the last stage, whose output (after the shortcut and its ReLU) is the feature map pooled.
    CamFamily("resnet", lambda body, spec: _last_block(body)),
    # anything else: the body's last child, whose output is the body's feature map.
    CamFamily("other", lambda body, spec: _last_child(body)),
)
"""Tried in order; the first family that finds its layer in a body names it."""


def cam_family(network: nn.Module, spec: ModelSpec) -> tuple[str, nn.Module]:
    """The family of ``network``'s body (a name of :data:`FAMILIES`) and its target layer."""
    body = body_of(network)
    for family in FAMILIES:
        layer = family.layer(body, spec)
        if layer is not None:
            return family.name, layer
    raise AssertionError("the last family matches every body")  # pragma: no cover


def cam_layer(network: nn.Module, spec: ModelSpec) -> nn.Module:
    """The layer whose feature map Grad-CAM weights, chosen by the body's family (:data:`FAMILIES`):
    the last map that still has places in it, as late as possible (its channels mean most)."""
    return cam_family(network, spec)[1]


# ----------------------------------------------------------------------------------------------
# Heatmaps


def shadow_copy(network: nn.Module) -> nn.Module:
    """New modules around ``network``'s own weight tensors (none copied), which need no gradient.

    Why: the library's hooks and the backward pass then touch only the copy, and the weights'
    gradients, which Grad-CAM never uses, are not computed at all (the input carries the gradient).
    """
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in network.parameters()}
    memo.update((id(b), b) for b in network.buffers())
    return copy.deepcopy(network, memo)


def check_images(images: torch.Tensor, channels: int) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        raise FlowerfastError(
            "$images must be a uint8 batch (N, C, H, W), as Preprocessing.load opens them", parameters=("images",)
        )
    if images.shape[1] != channels:
        raise FlowerfastError(
            f"$images have {images.shape[1]} channels; the model takes {channels}", parameters=("images",)
        )
    return images


def check_targets(targets: Optional[Sequence[int]], n_images: int, n_classes: int) -> Optional[list[int]]:
    """The class index for each image, checked here: the library would fail deep inside on a bad one."""
    if targets is None:
        return None
    chosen = [int(t) for t in targets]
    if len(chosen) != n_images:
        raise FlowerfastError(
            f"$targets must give one class index per image: {len(chosen)} for {n_images} images",
            parameters=("targets",),
        )
    for t in chosen:
        if not 0 <= t < n_classes:
            raise FlowerfastError(
                f"$targets must be class indices from 0 to {n_classes - 1}, not {t}", parameters=("targets",)
            )
    return chosen


def heatmaps(loaded: LoadedModel, images: torch.Tensor, targets: Optional[Sequence[int]] = None) -> np.ndarray:
    """Grad-CAM maps, float32 ``(N, H, W)`` in [0, 1] at the images' size, of a ``uint8`` batch
    ``(N, C, H, W)`` (as :meth:`Preprocessing.load` opens them), for the class ``targets[i]`` of each
    image, by default the one the network predicts.

    Each map is scaled to [0, 1] on its own (by the library): it says where, not how strongly. The
    network runs in float32 whatever ``loaded.precision`` says, with gradients even inside a caller's
    ``inference_mode``; ``loaded.network`` itself is left untouched (:func:`shadow_copy`).
    """
    require_cam_extra()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = check_images(images, loaded.preprocessing.channels)
    chosen = check_targets(targets, len(images), loaded.spec.n_classes)
    if len(images) == 0:
        return np.zeros((0, *images.shape[2:]), dtype=np.float32)
    network = shadow_copy(loaded.network)
    layer = cam_layer(network, loaded.spec)
    with torch.inference_mode(False), torch.enable_grad():
        x = loaded.preprocessing.to_input(images.to(loaded.device)).contiguous(memory_format=loaded.memory_format)
        x = x.clone().requires_grad_(True)  # the one tensor needing a gradient: the copy's weights need none
        cam = GradCAM(model=network, target_layers=[layer])
        try:  # not `with cam`: its __exit__ swallows an IndexError and would hide a real failure
            maps = cam(input_tensor=x, targets=None if chosen is None else [ClassifierOutputTarget(t) for t in chosen])
        finally:
            cam.activations_and_grads.release()
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Pictures


def overlay(image: torch.Tensor, heatmap: np.ndarray) -> Image:
    """``heatmap`` (``(H, W)`` in [0, 1]) drawn in colour over ``image`` (``uint8`` ``(C, H, W)``),
    as an RGB picture: the photo weighs :data:`IMAGE_WEIGHT`. A grayscale photo is drawn in gray."""
    require_cam_extra()
    from PIL import Image as PILImage
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.dtype != torch.uint8:
        raise FlowerfastError("$image must be a uint8 image (C, H, W)", parameters=("image",))
    if image.shape[0] not in (1, 3):
        raise FlowerfastError(f"$image must have 1 or 3 channels, not {image.shape[0]}", parameters=("image",))
    rgb = image.detach().cpu().expand(3, -1, -1) if image.shape[0] == 1 else image.detach().cpu()
    photo = rgb.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != photo.shape[:2]:
        raise FlowerfastError(f"$heatmap is {heat.shape}; the image is {photo.shape[:2]}", parameters=("heatmap",))
    drawn = show_cam_on_image(photo, np.clip(heat, 0.0, 1.0), use_rgb=True, image_weight=IMAGE_WEIGHT)
    return PILImage.fromarray(drawn).convert("RGB")


def png_bytes(picture: Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def overlay_png(loaded: LoadedModel, image: torch.Tensor) -> bytes:
    """One ``uint8`` ``(C, H, W)`` image to the PNG of its overlay for the predicted class: what the
    web server sends back."""
    return png_bytes(overlay(image, heatmaps(loaded, image[None])[0]))


def unique_name(stem: str, used: set[str]) -> str:
    """``<stem>.cam.png``, or ``<stem>-2.cam.png``, ``-3``... when an earlier input of the same call
    took it. Compared case-folded: on macOS and Windows ``A.cam.png`` and ``a.cam.png`` are one file."""
    name, n = f"{stem}{CAM_SUFFIX}", 1
    while name.casefold() in used:
        n += 1
        name = f"{stem}-{n}{CAM_SUFFIX}"
    used.add(name.casefold())
    return name


def make_out_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowerfastError(f"cannot create the heatmap folder {out_dir}: {exc.strerror or exc}") from None
    if not out_dir.is_dir():
        raise FlowerfastError(f"the heatmap folder {out_dir} is not a folder")
    return out_dir


def write_overlays(
    loaded: LoadedModel, paths: Sequence[Path], out_dir: Path, reporter=None
) -> list[tuple[Path, Optional[Path], Optional[str]]]:
    """For ``flowerfast predict --cam DIR``: each photo's overlay for its predicted class, written
    atomically to ``out_dir/<stem>.cam.png`` (see :func:`unique_name`: no input of this call
    overwrites another's), in batches of :data:`CAM_BATCH`.

    Returns ``(path, written file, None)`` per input in order, or ``(path, None, reason)`` for a file
    that cannot be read (the others are still written). Names go to the readable files in input
    order. ``reporter`` hears of each batch, as ``"grad-cam"``.
    """
    from flowerfast.infer.batches import ImageFileDataset, collate_images, default_workers

    require_cam_extra()
    body_of(loaded.network)  # a fastai export is refused before any photo is read
    out_dir = make_out_dir(out_dir)
    paths = [Path(p) for p in paths]
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(paths, loaded.preprocessing.load),
        batch_size=CAM_BATCH,
        shuffle=False,
        num_workers=default_workers(len(paths), CAM_BATCH, loaded.device),
        collate_fn=collate_images,
    )
    results: dict[int, tuple[Path, Optional[Path], Optional[str]]] = {}
    used: set[str] = set()
    if reporter is not None:
        reporter.batches_started("grad-cam", len(loader))
    for indices, images, bad in loader:
        results.update((i, (paths[i], None, reason)) for i, reason in bad)
        if images is not None:
            for i, image, heat in zip(indices, images, heatmaps(loaded, images)):
                target = out_dir / unique_name(paths[i].stem, used)
                atomic_write_bytes(target, png_bytes(overlay(image, heat)))
                results[i] = (paths[i], target, None)
        if reporter is not None:
            reporter.batch_done("grad-cam")
    if reporter is not None:
        reporter.finished()
    return [results[i] for i in range(len(paths))]
