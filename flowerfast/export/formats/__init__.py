"""The export formats, one module per format in this package: a new format is a new file.

Each module (``onnx.py``, ``torchscript.py``) defines ``FORMAT``, an :class:`ExportFormat`: its
name (the module's), its file suffixes, how to write a network to bytes, how to run the written
file on a batch (the check against PyTorch) and the extra it needs. The names are read from the
files alone (:func:`format_names`, with :mod:`pkgutil`), so ``flowerfast export --help`` lists
them without importing torch; a format's module is imported only when it is used. Modules whose
name starts with ``_`` are not formats.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from flowerfast.core.errors import FlowerfastError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
"""``format="auto"``: the format the output file's suffix names, else the preferred one installed."""


@dataclass(frozen=True)
class ExportFormat:
    """One way to write a trained classifier (softmax included) to a file.

    name: ``format=`` names it (``--format`` on the command line); the name of its module.
    label: how a sentence names it (``ONNX``).
    suffixes: the file suffixes it is known by; the first is the default (``best.onnx``).
    write: ``write(network, example)``: the file's bytes, traced or exported on ``example``
        (a ``float32`` batch ``(N, C, H, W)``) with a dynamic batch axis; a format of several
        files returns them by suffix (:meth:`files`).
    companions: the suffixes of the files written beside the main one, under its name
        (OpenVINO's weights: ``best.xml`` and ``best.bin``).
    run: ``run(path, batch)``: the probabilities the written file gives for ``batch`` on the
        CPU, compared with PyTorch's before the file is put in place.
    requires: the modules ``write`` and ``run`` import beyond torch; ``extra`` the flowerfast
        extra that brings them (``pip install "flowerfast[onnx]"``).
    auto_rank: ``format="auto"`` without a suffix to follow takes the installed format of the
        lowest rank; ``None``: only when asked for by name or suffix.
    """

    name: str
    label: str
    suffixes: tuple[str, ...]
    write: Callable[["torch.nn.Module", "torch.Tensor"], bytes | dict[str, bytes]]
    run: Callable[[Path, "torch.Tensor"], "torch.Tensor"]
    companions: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    extra: Optional[str] = None
    auto_rank: Optional[int] = None

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def files(self, data: bytes | dict[str, bytes]) -> dict[str, bytes]:
        """What :attr:`write` returned, as the bytes of each file by suffix: ``""`` for the main
        file (the path asked for), a companion's suffix for each companion."""
        files = data if isinstance(data, dict) else {"": data}
        if set(files) != {"", *self.companions}:
            raise TypeError(f"the {self.label} format wrote {sorted(files)}, not the main file and {self.companions}")
        return files

    def paths(self, path: Path) -> dict[str, Path]:
        """Where each file of an export at ``path`` goes, by the suffix :meth:`files` gives it."""
        return {"": path, **{suffix: path.with_suffix(suffix) for suffix in self.companions}}

    def available(self) -> bool:
        """Whether the modules it needs can be imported."""
        try:
            for module in self.requires:
                importlib.import_module(module)
        except ImportError:
            return False
        return True

    def require(self) -> None:
        """A one-line error naming the extra to install when the format's modules are missing."""
        if not self.available():
            raise FlowerfastError(
                f"{self.label} export needs {' and '.join(self.requires)}: pip install flowerfast[{self.extra}]"
            )


def format_names() -> tuple[str, ...]:
    """The formats' names, in order, from the modules of this package (none is imported)."""
    return tuple(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_format(name: str) -> ExportFormat:
    """The format called ``name`` (its module imported); an unknown name is a one-line error."""
    names = format_names()
    if name not in names:
        raise FlowerfastError(
            f"$format must be one of {', '.join((AUTO, *names))} (got {name!r})", parameters=("format",)
        )
    fmt = importlib.import_module(f"{__name__}.{name}").FORMAT
    if fmt.name != name:
        raise TypeError(f"{__name__}.{name} defines the format {fmt.name!r}: a format is named as its module")
    return fmt


def formats() -> dict[str, ExportFormat]:
    """Every format, by name."""
    return {name: get_format(name) for name in format_names()}


def choose_format(format: str, out: Optional[Path | str] = None) -> ExportFormat:
    """The format asked for; ``auto``: the one whose suffix ``out`` has, else the installed
    format that ``auto`` prefers (the one of lowest ``auto_rank``)."""
    name = str(format).lower()
    if name != AUTO:
        return get_format(name)
    every = formats().values()
    suffix = Path(out).suffix.lower() if out is not None else ""
    for fmt in every:
        if suffix and suffix in fmt.suffixes:
            return fmt
    ranked = sorted((f for f in every if f.auto_rank is not None), key=lambda f: f.auto_rank)
    for fmt in ranked:
        if fmt.available():
            return fmt
    raise FlowerfastError(
        f"$format={AUTO!r} found no installed format to choose: name one of {', '.join(format_names())}",
        parameters=("format",),
    )
