"""Micro-batching of calls that run in worker threads: queue, then take everything waiting.

A call that waits for a worker joins the queue; the call that gets the worker takes every queued
item (up to ``max_batch``) into one call of the batch function, which answers each item (with a
result or with its own exception). Nothing waits for a batch to fill: under light load each item
runs alone, and batches form only while items queue for a busy worker. A model call on a batch of
items costs far less per item than one call each (a call on one item is mostly per-op overhead).

In the spirit of Ray Serve's ``@serve.batch``, without its wait for a batch to fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.to_thread

Item = TypeVar("Item")
Result = TypeVar("Result")

# Answers one batch in a worker thread: a result or an exception per item, in the items' order.
BatchFn = Callable[[list[Item]], Sequence[Result | Exception]]


@dataclass(eq=False)  # compared by identity
class _Waiting(Generic[Item, Result]):
    """A queued item; ``answer`` is set by whichever call runs its batch."""

    item: Item
    answer: asyncio.Future[Result]


class Batcher(Generic[Item, Result]):
    """Batches the items of concurrent calls into calls of ``fn``, each run in a worker thread while
    holding one token of ``limiter`` (the pool of workers, which batchers may share)."""

    def __init__(self, fn: BatchFn, max_batch: int, limiter: anyio.CapacityLimiter) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.limiter = limiter
        self._queue: list[_Waiting[Item, Result]] = []

    async def __call__(self, item: Item) -> Result:
        """The answer to ``item``, computed alone or in a batch with the items queued beside it."""
        waiting: _Waiting[Item, Result] = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        try:
            async with self.limiter:
                if waiting in self._queue:  # nobody took it into their batch meanwhile: run a batch with it
                    await self._run(self._take(waiting))
        finally:
            if waiting in self._queue:  # cancelled while waiting for a worker
                self._queue.remove(waiting)
        return await waiting.answer

    def _take(self, first: _Waiting[Item, Result]) -> list[_Waiting[Item, Result]]:
        others = [w for w in self._queue if w is not first]
        batch = [first, *others[: self.max_batch - 1]]
        self._queue = [w for w in self._queue if w not in batch]
        return batch

    async def _run(self, batch: list[_Waiting[Item, Result]]) -> None:
        # Shielded: other calls wait on these answers, so a cancelled caller must not drop them.
        items = [w.item for w in batch]
        try:
            with anyio.CancelScope(shield=True):
                answers = await anyio.to_thread.run_sync(self.fn, items)
        except Exception as e:  # noqa: BLE001 - every item of the batch gets the error
            answers = [e] * len(batch)
        for waiting, answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                waiting.answer.set_exception(answer)
            else:
                waiting.answer.set_result(answer)
