"""Several training processes, one job: torch.distributed as ``torchrun`` or ``accelerate launch``
start it (one process per GPU, or several CPU processes), seen from one process.

Why a module of its own: every other module asks the same few questions (is this a job of
several processes, which one is this, may it write files) and the answers come from the
environment the launcher sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; ``MASTER_ADDR`` and
``MASTER_PORT`` for the rendezvous). Here they are answered once, the process group is started with
the backend that fits the device (NCCL for CUDA, gloo for CPUs) and a collective timeout, and the
few collectives flowerfast makes itself (agreeing on a run folder, summing epoch counts, gathering
predictions) are wrapped so that a process that died is a one-line error, not a hang.

torch is imported inside the functions: the CLI asks :func:`current` before anything heavy loads.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from flowerfast.core.errors import FlowerfastError, ReportedByRankZero, first_line
from flowerfast.hardware.peers import peer_failures

TIMEOUT_ENV = "FLOWERFAST_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
"""How long a collective waits for the other processes before the job fails (seconds): long enough
for rank 0's own work between epochs (saving the checkpoint, the best model, the pictures), short
enough that a stuck process ends the job in minutes rather than torch's default half hour."""

TRACE_ENV = "FLOWERFAST_DISTRIBUTED_TRACE"
"""A folder for each process's record of what it did (``rank-N.json``: its pid, the photos of
every shard it loaded, the checksum of its final weights): for checking a job, outside any run
folder. Unset: nothing is recorded."""

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0


def from_environment(env=None) -> Processes:
    """The job as the launcher describes it in the environment (``torchrun``, ``accelerate launch``
    and SLURM scripts that run them set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``); one process
    when they are absent."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        rank = int(env.get("RANK", "0") or 0)
        local = int(env.get("LOCAL_RANK", str(rank)) or 0)
    except ValueError:
        raise FlowerfastError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise FlowerfastError(f"RANK {rank} does not fit WORLD_SIZE {world}: start the job with torchrun")
    return Processes(rank=rank, world_size=world, local_rank=local)


def current() -> Processes:
    return from_environment()


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes (a laptop, a CI machine)."""
    return "nccl" if device_type == "cuda" else "gloo"


def timeout_seconds(env=None) -> int:
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = int(float(text))
    except ValueError:
        raise FlowerfastError(f"{TIMEOUT_ENV} must be a number of seconds (got {text!r})") from None
    if value < 1:
        raise FlowerfastError(f"{TIMEOUT_ENV} must be at least 1 second (got {value})")
    return value


def process_device(device, procs: Processes):
    """The device of this process: with several GPUs on a machine, process ``local_rank`` takes
    GPU ``local_rank`` (made the current one, so plain ``cuda`` tensors land there too)."""
    import torch

    if not procs.distributed or device.type != "cuda":
        return device
    if procs.local_rank >= torch.cuda.device_count():
        raise FlowerfastError(
            f"process {procs.rank} (local rank {procs.local_rank}) has no GPU of its own: this "
            f"machine has {torch.cuda.device_count()}; start at most that many processes per machine"
        )
    torch.cuda.set_device(procs.local_rank)
    return torch.device("cuda", procs.local_rank)


def start_job(device_option: str) -> Processes:
    """:func:`start` for a device option (``auto``, ``cpu``, ``cuda``...), for work that must agree
    across processes before any run is set up (a comparison's folder)."""
    if not current().distributed:
        return current()
    from flowerfast.hardware.devices import resolve_device

    return start(process_device(resolve_device(device_option), current()))


def start(device) -> Processes:
    """Join the job's process group (once per process; later calls only return the job).

    The backend fits the device (:func:`backend_for`); collectives time out after
    :func:`timeout_seconds`, so a process that stops answering ends the job instead of hanging it.
    The group is left when the process exits.
    """
    import datetime

    import torch.distributed as dist

    procs = current()
    if not procs.distributed or dist.is_initialized():
        return procs
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:  # fastai's DDP wrapper is built on it
        raise FlowerfastError(
            f"training in {procs.world_size} processes needs Hugging Face Accelerate: "
            'pip install "flowerfast[distributed]"'
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise FlowerfastError(
                f"WORLD_SIZE is {procs.world_size} but {name} is not set: start the job with "
                "torchrun or accelerate launch, which set it"
            )
    try:
        dist.init_process_group(
            backend=backend_for(device.type),
            rank=procs.rank,
            world_size=procs.world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds()),
        )
    except (RuntimeError, ValueError) as exc:
        raise FlowerfastError(
            f"process {procs.rank} of {procs.world_size} could not join the job: {first_line(exc)}"
        ) from None
    atexit.register(stop)
    trace(
        "start",
        rank=procs.rank,
        world_size=procs.world_size,
        pid=os.getpid(),
        backend=backend_for(device.type),
        device=str(device),
    )
    return procs


def stop() -> None:
    """Leave the process group (at exit; harmless when there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # the other processes may be gone already: nothing left to tidy
            pass


def active() -> bool:
    """Whether this process is in a started job of several processes."""
    if not current().distributed:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def main_only(reporter):
    """``reporter`` in rank 0, a silent one elsewhere: one process speaks for the job."""
    from flowerfast.core.progress import NullReporter

    return reporter if current().is_main else NullReporter()


def unwrapped(model):
    """The network itself: DDP's wrapper (present while a fit runs in a job of several processes)
    holds it as ``.module``; a network outside a job is returned as it is."""
    return getattr(model, "module", model)


# --- collectives ------------------------------------------------------------------------------


def comm_device():
    """Where tensors for a collective live: the current GPU for NCCL, the CPU for gloo."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` in every process (each passes its own; only rank 0's counts)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    with peer_failures():
        dist.broadcast_object_list(box, src=0, device=comm_device())
    return box[0]


def gather_objects(value: Any) -> list:
    """Every process's ``value``, in rank order, in every process."""
    if not active():
        return [value]
    import torch.distributed as dist

    out: list = [None] * current().world_size
    with peer_failures():
        dist.all_gather_object(out, value)
    return out


def sum_counts(values: Sequence[float]) -> list[float]:
    """``values`` summed over every process (float64, exact for counts)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=comm_device())
    with peer_failures():
        dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_tensor(t) -> None:
    """Overwrite ``t`` with rank 0's values, in place."""
    if not active():
        return
    import torch
    import torch.distributed as dist

    buf = t.detach().to(comm_device())
    with peer_failures():
        dist.broadcast(buf, src=0)
    if buf.data_ptr() != t.data_ptr():
        with torch.no_grad():
            t.copy_(buf.to(t.device))


def broadcast_module(module) -> None:
    """Rank 0's weights and buffers (batch-norm statistics) in every process's ``module``.

    DDP keeps the weights equal (every process applies the same averaged gradients), but each
    process updates its batch-norm statistics from its own batches; before validating, saving or
    scoring, all take rank 0's, so every process holds the model rank 0 saves.
    """
    if not active():
        return
    for t in module.state_dict().values():
        broadcast_tensor(t)


def agree(check: Callable[[], T]) -> T:
    """Run ``check`` in rank 0 and give its result, or its error, to every process.

    For decisions only rank 0 may take (the name and creation of the run folder): the others wait
    for the answer instead of deciding differently (a timestamped folder name) or hanging when
    rank 0 refuses. Another process re-raises rank 0's error as :class:`ReportedByRankZero`, so
    the message is shown once.
    """
    if not active():
        return check()
    error, result = None, None
    if current().is_main:
        try:
            result = check()
        except FlowerfastError as exc:
            error = (exc.template, exc.parameters)
    error, result = broadcast_object((error, result))
    if error is not None:
        raise (FlowerfastError if current().is_main else ReportedByRankZero)(*error)
    return result


def shared_error(message: str, parameters: Sequence[str] = ()) -> FlowerfastError:
    """The error every process of a job meets alike (the same curve, the same summed figures), to
    raise: rank 0 shows it, the others end quietly (:class:`ReportedByRankZero`)."""
    kind = ReportedByRankZero if active() and not current().is_main else FlowerfastError
    return kind(message, parameters)


def all_ready(error: Optional[FlowerfastError | str]) -> None:
    """Every process says whether its setup worked; if one failed, all stop, and rank 0 names the
    processes and the reason (a photo folder missing on one machine, a GPU that is not there).
    An error keeps the parameters it names, so the CLI still prints them as flags."""
    if isinstance(error, str):
        error = FlowerfastError(error)
    if not active():
        if error is not None:
            raise FlowerfastError(error.template, error.parameters)
        return
    errors = gather_objects(None if error is None else (error.template, error.parameters))
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    parameters = sorted({p for _, (_, named) in failed for p in named})
    if not current().is_main:
        raise ReportedByRankZero(failed[0][1][0], parameters)
    reasons = sorted({template for _, (template, _) in failed})
    if len(reasons) == 1 and len(failed) == len(errors):
        raise FlowerfastError(reasons[0], parameters)
    raise FlowerfastError("; ".join(f"process {r}: {template}" for r, (template, _) in failed), parameters)


@contextlib.contextmanager
def each_ready() -> Iterator[None]:
    """The block's :class:`FlowerfastError` in any process stops every process at the block's end
    (see :func:`all_ready`); outside a job the error is raised as usual."""
    if not active():
        yield
        return
    error = None
    try:
        yield
    except ReportedByRankZero:
        raise
    except FlowerfastError as exc:
        error = exc
    all_ready(error)


# --- the record of what each process did --------------------------------------------------------


_trace_events: list[dict] = []


def trace_enabled() -> bool:
    return bool(os.environ.get(TRACE_ENV))


def trace(event: str, **fields) -> None:
    """Add an event to this process's record in ``$FLOWERFAST_DISTRIBUTED_TRACE/rank-N.json``
    (rewritten atomically; nothing when the variable is unset)."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return
    from flowerfast.core.files import atomic_write_text

    _trace_events.append({"event": event, **fields})
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / f"rank-{current().rank}.json", json.dumps(_trace_events))


def read_trace(folder: Path | str, rank: int) -> list[dict]:
    """The events process ``rank`` recorded (see :data:`TRACE_ENV`)."""
    path = Path(folder) / f"rank-{rank}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def shard_bounds(n: int, world_size: int, rank: int, even: bool) -> tuple[int, int]:
    """The slice ``[start, stop)`` of an epoch's ``n`` indices that process ``rank`` takes.

    ``even`` (training): every process the same number, ``n // world_size`` (the rest dropped for
    this epoch), because every step of DDP needs every process. Otherwise (validation) the
    processes split all ``n`` as evenly as they go, so each photo is scored exactly once.
    """
    if even:
        per = n // world_size
        return rank * per, (rank + 1) * per
    return n * rank // world_size, n * (rank + 1) // world_size
