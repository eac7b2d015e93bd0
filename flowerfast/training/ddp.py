"""fastai's distributed training classes, subclassed for flowerfast's shards (see
:mod:`flowerfast.training.sharding` for what is changed and why). Imported only by
:func:`flowerfast.training.sharding.data_parallel` when a job of several processes runs: fastai's
``fastai.distributed`` needs Hugging Face Accelerate, the ``distributed`` extra.
"""

from __future__ import annotations

import torch
from fastai.distributed import DistributedDL, DistributedTrainer

from flowerfast.hardware import distributed
from flowerfast.hardware.distributed import Processes, shard_bounds
from flowerfast.hardware.peers import peer_failures


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
        with peer_failures():
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
        with peer_failures():
            super().before_fit()
        self.ddp = self.learn.model

    def after_fit(self):
        self.learn.model = self.ddp
        super().after_fit()
