"""Folds run in a child process at a lower CPU priority, so that queries never queue behind them
and never wait for the GIL a fold holds; a fold there is the fold computed in process.

Regressions: folds shared the query workers, and a hot session's predicts waited behind its folds
(bench.service_load predict_hot with the tiled default: 80/s, p99 320 ms); then, in a thread of
their own, they still held the GIL between torch calls (context_hot p99 22-41 ms against 14-24 ms
in a process; docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from service import fold_process
from service.errors import UnavailableError
from service.fold_process import FoldProcess
from service.inference import Inference
from service.kinds.regression import REGRESSION, RegressionParams, log_entry
from service.registry import ServedModel
from service.store import Fold, Session, Snapshot
from service.transforms import AffineMap
from tests.service.helpers import REPO, sample_points


class ProbeKind:
    """A session kind whose fold reports where it ran and, given a path, waits for that file first
    (or dies, if the path is "die"); queries answer at once. Module level, so the child can unpickle it."""

    name = "probe"

    def fold(self, model: object, snapshot: str | None, scoring: bool) -> Fold:
        if snapshot == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while snapshot is not None and not Path(snapshot).exists():
            assert time.monotonic() < deadline, "the test never released the fold"
            time.sleep(0.005)
        where = {"pid": str(os.getpid()), "nice": str(os.getpriority(os.PRIO_PROCESS, 0)), "model": model.name}  # type: ignore[attr-defined]
        return Fold(b"state", {}, where)

    def answer(self, model: object, folded: object, queries: list[str]) -> list[str]:
        return [f"answer to {q}" for q in queries]


MODEL = ServedModel.load(REPO / "checkpoints" / "cmanp-gp-rbf.safetensors")  # the child loads it from there


def test_a_query_is_answered_while_a_fold_runs_in_a_lower_priority_process(tmp_path: Path) -> None:
    release = tmp_path / "release"

    async def scenario() -> Fold:
        kind = ProbeKind()
        inference = Inference(workers=1, torch_threads=1, fold_nice=5, models=[MODEL])
        try:
            fold = asyncio.create_task(inference.fold(kind, MODEL, str(release)))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            # The only query worker is free, and the event loop runs: the fold is elsewhere.
            assert await asyncio.wait_for(inference.answer(kind, MODEL, "q"), 5) == "answer to q"  # type: ignore[arg-type]
            assert not fold.done()
            release.touch()
            return await asyncio.wait_for(fold, 30)
        finally:
            inference.close()

    done = asyncio.run(scenario())
    assert done.state == b"state" and done.fields["model"] == MODEL.name
    assert int(done.fields["pid"]) != os.getpid()
    assert int(done.fields["nice"]) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)


def test_a_dead_fold_process_fails_its_fold_with_503_and_a_new_one_starts_after_a_back_off(monkeypatch) -> None:
    """A child that dies soon after its start is replaced only after a back-off (folds fail fast
    meanwhile, as 503s: their points stay in the log), so a child that cannot run is not restarted
    in a loop."""
    monkeypatch.setattr(fold_process, "FIRST_BACKOFF_SECONDS", 0.5)

    async def scenario() -> tuple[Fold, Fold]:
        kind = ProbeKind()
        inference = Inference(workers=1, torch_threads=1, models=[MODEL])
        try:
            first = await inference.fold(kind, MODEL, None)  # type: ignore[arg-type]
            with pytest.raises(UnavailableError, match="fold process died"):
                await inference.fold(kind, MODEL, "die")  # type: ignore[arg-type]
            with pytest.raises(UnavailableError, match="restarting"):
                await inference.fold(kind, MODEL, None)  # type: ignore[arg-type]
            await asyncio.sleep(0.6)
            return first, await asyncio.wait_for(inference.fold(kind, MODEL, None), 30)  # type: ignore[arg-type]
        finally:
            inference.close()

    first, after = asyncio.run(scenario())
    assert first.fields["pid"] != after.fields["pid"]


def test_a_fold_in_the_fold_process_is_the_fold_computed_in_process() -> None:
    model = ServedModel.load(REPO / "checkpoints" / "cmanp-gp-rbf.safetensors")
    x, y = sample_points(40, seed=21)
    identity = AffineMap.identity(1)
    session = Session(
        "s",
        "t",
        model.name,
        model.fingerprint,
        REGRESSION.name,
        RegressionParams(identity, identity).to_fields(),
        0.0,
        60,
        40,
        1,
    )
    log = [log_entry(x[i : i + 1].astype(np.float32), y[i : i + 1].astype(np.float32)) for i in range(40)]
    snapshot = Snapshot(session, None, log, log_points=40, fold_epoch=0)

    async def in_child() -> Fold:
        inference = Inference(workers=1, torch_threads=1, models=[model])
        try:
            return await inference.fold(REGRESSION, model, snapshot)
        finally:
            inference.close()

    there, here = asyncio.run(in_child()), REGRESSION.fold(model, snapshot, True)
    assert there.state == here.state and there.sums == here.sums and there.fields == here.fields


def test_the_fold_process_refuses_a_checkpoint_that_changed_since_the_service_loaded_it() -> None:
    other = dataclasses.replace(MODEL, path=REPO / "checkpoints" / "cmanp-gp-general.safetensors")

    async def scenario() -> None:
        folds = FoldProcess({other.fingerprint: other})
        try:
            folds.start()
            with pytest.raises(RuntimeError, match="checkpoints changed"):
                await folds.started()
        finally:
            folds.close()

    asyncio.run(scenario())
