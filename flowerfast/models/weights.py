"""Reading weight files and loading them into a module, with errors a person can act on.

Used for ``--weights FILE`` backbones, torchvision's ImageNet weights and saved flowerfast models
alike. Nothing here unpickles arbitrary objects: safetensors holds only tensors, and torch files
are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

from flowerfast.core.errors import FlowerfastError, first_line


def read_state_dict(path: Path) -> dict:
    """Read a state dict from safetensors or a torch file, never running pickled code.

    torch files are read with ``weights_only=True``: tensors and plain containers only.
    Checkpoints that wrap the state dict (``{"model": ...}`` or ``{"state_dict": ...}``, as
    torchvision's reference scripts and Lightning write them) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowerfastError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)
        raise FlowerfastError(f"cannot read weights file {path}: {first}") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise FlowerfastError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return state


def load_state_into(model, state: dict, what: str, arch: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` strictly, turning key and shape mismatches into one readable error.

    Keys under ``ignore_prefixes`` (layers that will be cut off, such as an ImageNet classifier
    with another number of classes) are left out on both sides.
    """
    if ignore_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
    if problems:
        raise FlowerfastError(f"{what} does not fit {arch}: {', '.join(problems)}")
    model.load_state_dict(state, strict=not ignore_prefixes)
