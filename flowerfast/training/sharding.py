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
  model rank 0 saves; flowerfast's own :class:`~flowerfast.training.callbacks.EpochStats` sums the counts
  over the processes.
- On CPUs Accelerate must be told so (``cpu=True``) to wrap the model in DDP at all.

The fastai subclasses are in :mod:`flowerfast.training.ddp`, imported only when a job of several processes
runs: fastai's distributed module needs Accelerate (the ``distributed`` extra), which a
one-process run must not.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from flowerfast.hardware import distributed
from flowerfast.hardware.peers import peer_failures


def check_same_weights(module) -> str:
    """Every process's checksum of ``module`` (:func:`flowerfast.models.classifier.weights_sha256`, the one a
    saved model records); a one-line error naming the processes that differ from rank 0, so a
    broken job never saves a model only rank 0 holds. Returns the checksum."""
    from flowerfast.core.errors import FlowerfastError
    from flowerfast.models.classifier import weights_sha256

    mine = weights_sha256(module.state_dict())
    distributed.trace("final_weights", sha256=mine)
    sums = distributed.gather_objects(mine)
    differ = [r for r, s in enumerate(sums) if s != sums[0]]
    if differ:
        raise FlowerfastError(
            f"the processes ended with different weights (process(es) {', '.join(map(str, differ))} "
            "differ from rank 0): the job is broken; the final model is not saved"
        )
    return mine


@contextlib.contextmanager
def data_parallel(learn, device: torch.device, sync_bn: bool = False) -> Iterator[None]:
    """Every fit of ``learn`` inside the block runs on all the job's processes (DDP); outside a
    job of several processes, nothing changes."""
    procs = distributed.current()
    if not distributed.active():
        yield
        return
    from flowerfast.training.ddp import DataParallel

    cb = DataParallel(procs, device, sync_bn=sync_bn)
    learn.add_cb(cb)
    try:
        with peer_failures():
            yield
    finally:
        learn.remove_cb(cb)
