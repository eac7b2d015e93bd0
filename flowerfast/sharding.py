"""A fit on several processes: fastai's distributed training (``DistributedTrainer``, which wraps
the model in DDP through Hugging Face Accelerate, and ``DistributedDL``), adapted where it does not
fit flowerfast.

What is changed, and why:

- fastai's ``DistributedDL`` broadcasts the epoch's shuffled order with ``.cuda()``, which fails
  without a GPU; :class:`ShardedDL` broadcasts on the device the backend uses (the CPU for gloo).
- fastai pads every epoch to a multiple of the number of processes by repeating photos; here a
  training epoch drops the few photos past the last multiple instead (a different few each epoch,
  as the order is shuffled), so the shards never overlap, and validation is split without padding,
  each photo scored once, in unequal shards.
- Validation runs the bare model (not DDP's wrapper, whose forward may talk to the other
  processes), after every process took rank 0's batch-norm statistics, so all of them score the
  model rank 0 saves; flowerfast's own :class:`~flowerfast.callbacks.EpochStats` sums the counts
  over the processes.
- On CPUs Accelerate must be told so (``cpu=True``) to wrap the model in DDP at all.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from fastai.distributed import DistributedDL, DistributedTrainer

from . import distributed
from .distributed import Processes


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


class ShardedDL(DistributedDL):
    """fastai's ``DistributedDL`` with flowerfast's shards (see the module's notes): the order
    rank 0 drew, broadcast on the backend's device, cut by :func:`shard_bounds`, no padding."""

    def __init__(self, dl, procs: Processes, device=None):
        super().__init__(dl, rank=procs.rank, world_size=procs.world_size, device=device)
        self.even = bool(self.dl.drop_last)
        self.kind = "train" if self.dl.shuffle else "valid"

    @property
    def rng(self):
        """The wrapped loader's generator, which draws the epoch's order (checkpoints keep it)."""
        return self.dl.rng

    def _broadcast(self, t, rank):
        buf = torch.tensor(list(t), dtype=torch.long, device=distributed.comm_device())
        with distributed.peer_failures():
            torch.distributed.broadcast(buf, rank)
        return buf.cpu().tolist()

    def __len__(self):
        start, stop = shard_bounds(self.dl.n, self.world_size, self.rank, self.even)
        size = stop - start
        return size // self.bs if self.drop_last else -(-size // self.bs)

    def get_idxs(self):
        idxs = self._broadcast(list(self.dl.get_idxs()), 0)
        self.n = self.n_padded = len(idxs)
        start, stop = shard_bounds(len(idxs), self.world_size, self.rank, self.even)
        mine = idxs[start:stop]
        if distributed.trace_enabled():
            distributed.trace("shard", kind=self.kind, items=[str(self.dataset.items[i][0]) for i in mine])
        return mine

    def to_detach(self, b, cpu=True, gather=True):
        """This process's values only: the shards have no padding to remove, and gathering each
        validation batch would need the same number of batches in every process."""
        return self._to_detach(b, cpu, gather=False)


class DataParallel(DistributedTrainer):
    """fastai's ``DistributedTrainer`` (DDP through Accelerate; ``sync_bn`` converts batch norms
    to ``SyncBatchNorm``) with :class:`ShardedDL` shards and a bare-model validation."""

    def __init__(self, procs: Processes, device: torch.device, sync_bn: bool = False):
        super().__init__(sync_bn=sync_bn, cpu=device.type == "cpu")
        self.procs = procs

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, ShardedDL) else ShardedDL(dl, self.procs, device=self.learn.model.device)

    def before_train(self):
        self.learn.model = self.ddp
        super().before_train()

    def before_validate(self):
        self.ddp = self.learn.model
        bare = distributed.unwrapped(self.ddp)
        distributed.broadcast_module(bare)  # every process validates rank 0's model
        self.learn.model = bare
        super().before_validate()

    def before_fit(self):
        with distributed.peer_failures():
            super().before_fit()
        self.ddp = self.learn.model

    def after_fit(self):
        self.learn.model = self.ddp
        super().after_fit()


def check_same_weights(module) -> str:
    """Every process's checksum of ``module`` (:func:`flowerfast.model.weights_sha256`, the one a
    saved model records); a one-line error naming the processes that differ from rank 0, so a
    broken job never saves a model only rank 0 holds. Returns the checksum."""
    from .errors import FlowerfastError
    from .model import weights_sha256

    mine = weights_sha256(module.state_dict())
    distributed.trace("final_weights", sha256=mine)
    sums = distributed.gather_objects(mine)
    differ = [r for r, s in enumerate(sums) if s != sums[0]]
    if differ:
        raise FlowerfastError(f"the processes ended with different weights (process(es) {', '.join(map(str, differ))} "
                              "differ from rank 0): the job is broken; the final model is not saved")
    return mine


@contextlib.contextmanager
def data_parallel(learn, device: torch.device, sync_bn: bool = False) -> Iterator[None]:
    """Every fit of ``learn`` inside the block runs on all the job's processes (DDP); outside a
    job of several processes, nothing changes."""
    procs = distributed.current()
    if not distributed.active():
        yield
        return
    cb = DataParallel(procs, device, sync_bn=sync_bn)
    learn.add_cb(cb)
    try:
        with distributed.peer_failures():
            yield
    finally:
        learn.remove_cb(cb)
