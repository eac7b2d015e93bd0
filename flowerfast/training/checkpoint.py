"""Resumable training state: ``checkpoint.pt`` in a run folder, written after every epoch.

Why one file with everything (as torchvision's reference ``train.py`` does): a run must continue
exactly where it stopped, in the middle of a one-cycle schedule that fastai cannot restart by
itself. The checkpoint holds the model, the optimizer's state (Adam's moments), how many epochs
are done (which gives the phase, frozen or full, and the position in its one-cycle schedule), every
random number generator the next epoch draws from (Python's, NumPy's, torch's, each DataLoader's),
the history and best epoch so far, the options and resolved configuration, a hash of the split and
the size of every photo. With those, a resumed run on a CPU with ``--workers 0`` repeats the
uninterrupted run loss for loss, and a resume against changed data, split or options is refused
with a message naming what changed.

The file holds only tensors and plain values, so it loads with ``torch.load(weights_only=True)``:
opening it never runs code. It is written atomically (:func:`flowerfast.core.files.atomic_write`), so a
kill during the write leaves the previous epoch's checkpoint whole.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch

from flowerfast.core.errors import FlowerfastError, first_line
from flowerfast.core.files import atomic_write
from flowerfast.runs.folder import EpochRecord, SplitRow, relative_path

FORMAT = "flowerfast-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """The state of a run after ``epoch`` completed epochs (0: before the first)."""

    epoch: int
    model: dict
    optimizer: Optional[dict]
    rng: dict
    options: dict
    config: dict
    split_sha256: str
    data_files: dict[str, int]
    history: list[dict] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_accuracy: Optional[float] = None
    seconds: float = 0.0
    rng_ranks: list[dict] = field(default_factory=list)
    """In a job of several processes, each process's generators (``rng`` is rank 0's): every
    process draws its own augmentations, and resumes its own stream."""
    ema: Optional[dict] = None
    """``--ema``: the moving average of the weights and its step count
    (:meth:`flowerfast.training.ema.WeightAverage.state_dict`)."""

    def rng_of(self, rank: int) -> dict:
        """The generators process ``rank`` resumes with (``rng`` for a run of one process)."""
        return self.rng_ranks[rank] if self.rng_ranks else self.rng

    def records(self) -> list[EpochRecord]:
        return [EpochRecord(**r) for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        """What ``torch.save`` writes: tensors, and plain values for the rest (a NumPy float in
        the history would make the file unreadable with ``weights_only``)."""
        plain = {
            k: plain_values(getattr(self, k))
            for k in ("options", "config", "data_files", "history", "best_epoch", "best_accuracy", "seconds")
        }
        optimizer = None
        if self.optimizer is not None:  # fastai's scheduler leaves NumPy floats in the param groups
            optimizer = {
                "state": self.optimizer["state"],
                "param_groups": [plain_numbers(g) for g in self.optimizer["param_groups"]],
            }
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__, **plain, "optimizer": optimizer}


def plain_numbers(value):
    """NumPy scalars inside dicts, lists and tuples replaced by Python numbers (tensors kept)."""
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_numbers(v) for v in value)
    if not isinstance(value, torch.Tensor) and hasattr(value, "item") and hasattr(value, "dtype"):
        return value.item()
    return value


def plain_values(value):
    """``value`` as JSON would give it back: dicts, lists, strings, numbers, booleans, None."""
    import json

    from flowerfast.core.files import json_default

    return json.loads(json.dumps(value, default=json_default))


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically, streamed (no second copy in memory)."""
    return atomic_write(path, lambda fh: torch.save(checkpoint.to_dict(), fh))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True`` (never unpickling code); a damaged or foreign
    file is a one-line error."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on foreign files
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FlowerfastError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            reason = "it holds more than tensors and plain values, and is not unpickled"
        else:
            reason = first_line(exc)
        raise FlowerfastError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FlowerfastError(f"{path} is not a flowerfast checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise FlowerfastError(
            f"{path} is a checkpoint of format version {data.get('format_version')}, "
            f"this flowerfast reads version {FORMAT_VERSION}"
        )
    names = set(Checkpoint.__dataclass_fields__)
    return Checkpoint(**{k: v for k, v in data.items() if k in names})


# --- random number generators ----------------------------------------------------------------


def capture_rng(loaders: Sequence = ()) -> dict:
    """Every generator the next epoch draws from: Python's (crops, erasing), NumPy's, torch's on
    the CPU and CUDA (flips, dropout, batch augmentation) and each fastai DataLoader's own
    (the shuffle)."""
    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "loaders": [dl.rng.getstate() for dl in loaders],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, loaders: Sequence = ()) -> None:
    """Put every generator back as :func:`capture_rng` found it."""
    import numpy as np

    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for dl, dl_state in zip(loaders, state.get("loaders", [])):
        dl.rng.setstate(_as_tuple(dl_state))


def _as_tuple(value):
    """``random`` wants its state as nested tuples, exactly as ``getstate`` gave it."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- what a resume must find unchanged -------------------------------------------------------


def split_sha256(rows: Iterable[SplitRow], root: Path) -> str:
    """A hash of the split: every file (relative to the data folder), its class and its side."""
    digest = hashlib.sha256()
    for row in rows:
        line = f"{relative_path(row.file, root)}\t{row.label}\t{int(row.is_valid)}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def data_files(files: Iterable[Path], root: Path) -> dict[str, int]:
    """Each photo the scan found (relative to the data folder) and its size in bytes: what a
    resume compares to tell that photos were added, removed or replaced. Sizes, not times, so a
    data folder copied to another disk still matches."""
    sizes = {}
    for f in files:
        try:
            sizes[relative_path(f, root)] = os.stat(f).st_size
        except OSError:
            sizes[relative_path(f, root)] = -1
    return sizes


def describe_data_change(before: dict[str, int], now: dict[str, int]) -> Optional[str]:
    """``None`` when the photos are the same; else what changed, with an example of each kind."""
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    changed = sorted(f for f in set(before) & set(now) if before[f] != now[f])
    parts = [
        f"{len(names)} photo(s) {what} (e.g. {names[0]})"
        for names, what in ((added, "added"), (removed, "removed or unreadable"), (changed, "changed"))
        if names
    ]
    return "; ".join(parts) if parts else None


RESUME_MAY_CHANGE = ("data", "device", "workers", "threads", "cache", "cache_dir", "trackers")
"""Options that say where and how a run computes, not what: a resumed run may change them (the
data folder may move, as long as its photos are the same)."""

RESOLVED_MUST_MATCH = (
    "size",
    "classes",
    "n_train",
    "n_valid",
    "bs",
    "lr",
    "freeze_epochs",
    "body_lr",
    "pretrained",
    "clean_train_images",
    "class_weights",
    "processes",
    "fixed_bn",
    "min_scale",
)
"""Resolved values that decide the run's arithmetic: a resume that resolves any of them
differently is refused (``processes``: the number of processes shares out every epoch and sets
the effective batch size, so a run resumes with as many as it started with)."""

RESOLVED_DEFAULTS = {"processes": 1, "fixed_bn": False, "min_scale": 0.35}
"""What a checkpoint written before a value was recorded had: runs of one process."""
