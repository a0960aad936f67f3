"""Folds run in their own thread, at a lower CPU priority, so that queries never queue behind them.

Regression: folds shared the query workers, and a hot session's predicts waited behind its folds
(bench.service_load predict_hot with the tiled default: 80/s, p99 320 ms; see docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
from types import SimpleNamespace

from service.inference import Inference
from service.store import Fold


class BlockingKind:
    """A session kind whose fold records where it ran and blocks until released; queries answer at once."""

    name = "blocking"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fold_ran_on: tuple[str, int] | None = None

    def fold(self, model: object, snapshot: object, scoring: bool) -> Fold:
        tid = threading.get_native_id()
        self.fold_ran_on = (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid))
        assert self.release.wait(5), "the test never released the fold"
        return Fold(b"state", {})

    def answer(self, model: object, folded: object, queries: list[str]) -> list[str]:
        return [f"answer to {q}" for q in queries]


def test_a_query_is_answered_while_a_fold_runs_and_the_fold_thread_runs_at_lower_priority() -> None:
    async def scenario() -> None:
        kind = BlockingKind()
        model = SimpleNamespace(name="m", fingerprint="f")
        inference = Inference(workers=1, torch_threads=1, fold_nice=5)
        try:
            fold = asyncio.create_task(inference.fold(kind, model, None))  # type: ignore[arg-type]
            while kind.fold_ran_on is None:
                await asyncio.sleep(0.005)
            # The only query worker is free: the fold holds a thread of its own.
            assert await asyncio.wait_for(inference.answer(kind, model, "q"), 5) == "answer to q"  # type: ignore[arg-type]
            kind.release.set()
            assert (await asyncio.wait_for(fold, 5)).state == b"state"
        finally:
            inference.close()
        name, nice = kind.fold_ran_on
        assert name.startswith("fold") and threading.current_thread().name != name
        assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)

    asyncio.run(scenario())
