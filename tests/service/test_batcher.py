"""The micro-batcher: calls that queue for a busy worker are answered together, each with its own answer."""

from __future__ import annotations

import threading

import anyio
import pytest

from service.batcher import Batcher


class Doubler:
    """A batch function that doubles numbers, fails on negative ones, and records its batches; the
    first call blocks until ``release`` is set, so that the calls behind it queue."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        return [ValueError(f"negative: {i}") if i < 0 else 2 * i for i in items]


async def _call_all(batcher: Batcher, items: list[int], fn: Doubler) -> dict[int, object]:
    """Call the batcher with every item at once, the first one alone on the worker until all queue."""
    answers: dict[int, object] = {}

    async def one(item: int) -> None:
        try:
            answers[item] = await batcher(item)
        except ValueError as e:
            answers[item] = e

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, items[0])
        await anyio.to_thread.run_sync(fn.started.wait, 10)
        for item in items[1:]:
            tg.start_soon(one, item)
        await anyio.sleep(0.05)  # let them queue behind the busy worker
        fn.release.set()
    return answers


def test_a_lone_call_runs_alone_without_waiting_for_a_batch_to_fill() -> None:
    fn = Doubler()
    fn.release.set()
    batcher = Batcher(fn, max_batch=16, limiter=anyio.CapacityLimiter(1))

    async def run() -> list[int]:
        with anyio.fail_after(5):
            return [await batcher(i) for i in (1, 2, 3)]

    assert anyio.run(run) == [2, 4, 6]
    assert fn.batches == [[1], [2], [3]]


def test_calls_queued_behind_a_busy_worker_are_answered_in_one_batch() -> None:
    fn = Doubler()
    batcher = Batcher(fn, max_batch=16, limiter=anyio.CapacityLimiter(1))
    answers = anyio.run(_call_all, batcher, [1, 2, 3, 4, 5], fn)
    assert answers == {i: 2 * i for i in range(1, 6)}
    assert fn.batches[0] == [1] and sorted(fn.batches[1]) == [2, 3, 4, 5] and len(fn.batches) == 2


@pytest.mark.parametrize("max_batch", [1, 2, 3])
def test_no_batch_is_larger_than_max_batch(max_batch: int) -> None:
    fn = Doubler()
    batcher = Batcher(fn, max_batch=max_batch, limiter=anyio.CapacityLimiter(1))
    answers = anyio.run(_call_all, batcher, list(range(1, 8)), fn)
    assert answers == {i: 2 * i for i in range(1, 8)}
    assert max(len(b) for b in fn.batches) == max_batch
    assert sorted(i for b in fn.batches for i in b) == list(range(1, 8))


def test_an_item_that_fails_fails_only_its_own_call() -> None:
    fn = Doubler()
    batcher = Batcher(fn, max_batch=16, limiter=anyio.CapacityLimiter(1))
    answers = anyio.run(_call_all, batcher, [1, -2, 3], fn)
    assert answers[1] == 2 and answers[3] == 6
    assert isinstance(answers[-2], ValueError) and str(answers[-2]) == "negative: -2"
    assert sorted(fn.batches[1]) == [-2, 3]


def test_a_batch_function_that_raises_fails_every_call_of_its_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError(f"broken on {len(items)}")

    batcher = Batcher(broken, max_batch=16, limiter=anyio.CapacityLimiter(1))

    async def run() -> None:
        with pytest.raises(RuntimeError, match="broken on 1"):
            await batcher(1)

    anyio.run(run)


def test_a_call_cancelled_while_queued_is_never_computed() -> None:
    fn = Doubler()
    batcher = Batcher(fn, max_batch=16, limiter=anyio.CapacityLimiter(1))

    async def run() -> int:
        async with anyio.create_task_group() as tg:
            first: list[int] = []

            async def call_first() -> None:
                first.append(await batcher(1))

            tg.start_soon(call_first)
            await anyio.to_thread.run_sync(fn.started.wait, 10)
            with anyio.move_on_after(0.05):  # queued behind the busy worker, then given up
                await batcher(2)
            fn.release.set()
        return first[0]

    assert anyio.run(run) == 2
    assert fn.batches == [[1]]
