"""Dynamic batching: items that arrive together go through one function call together.

Why: a network computes a batch of 16 images much faster than 16 batches of one (on a GPU many
times, on a CPU about twice), but a web server receives images one request at a time. A
:class:`BatchQueue` collects the items of concurrent requests for at most ``max_wait`` seconds
after the first one arrived (or until ``max_batch`` are waiting), hands them to ``run_batch`` in a
worker thread, and gives each caller its own results. Items that arrived while the previous batch
was computing have already waited, so the next batch leaves at once: under load the batches fill
up by themselves, and a lone request waits at most ``max_wait``.

Why a thread of its own: ``run_batch`` (the network) takes milliseconds to seconds; run on the
event loop it would stop the server from accepting, reading and answering other requests.
One thread, because the network already uses every core for one batch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    """What the queue has done: batches run, items in them, the largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "items": self.items,
            "largest_batch": self.largest,
            "mean_batch": round(self.mean_batch, 3),
        }


class BatchQueue(Generic[Item, Result]):
    """Collect items from concurrent callers of :meth:`submit` into batches for ``run_batch``.

    ``run_batch(items) -> results`` gets a list of at most ``max_batch`` items and returns one
    result per item, in order; it runs in a worker thread of its own. ``max_batch=1`` turns
    batching off (each item alone, one at a time). Use it inside a running event loop:
    ``await queue.start()`` before the first :meth:`submit`, ``await queue.stop()`` at the end.
    """

    def __init__(
        self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch: int = 16, max_wait: float = 0.005
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative, not {max_wait}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: Optional[asyncio.Queue] = None
        self._worker: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowerfast-batch")
        self._worker = asyncio.create_task(self._serve(), name="flowerfast-batch-queue")

    async def stop(self) -> None:
        """Stop taking batches; callers still waiting get ``asyncio.CancelledError``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Queue ``items`` (they may end up in different batches) and wait for their results."""
        if self._queue is None or self._worker is None:
            raise RuntimeError("BatchQueue.submit before start()")
        loop = asyncio.get_running_loop()
        arrived = time.monotonic()
        futures = []
        for item in items:
            future = loop.create_future()
            self._queue.put_nowait(((item, arrived), future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        """Wait for one item, then take more until ``max_batch`` or its ``max_wait`` is over."""
        assert self._queue is not None
        (item, arrived), future = await self._queue.get()
        batch = [(item, future)]
        deadline = arrived + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    (item, _), future = self._queue.get_nowait()  # already waiting: no reason to leave it
                else:
                    (item, _), future = await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            batch.append((item, future))
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, future) for item, future in await self._next_batch() if not future.done()]
            if not batch:
                continue  # every caller gave up (a closed connection) while waiting
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [item for item, _ in batch])
            except Exception as exc:  # the callers' error, not the queue's: it goes on serving
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
