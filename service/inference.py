"""Model calls, run in worker threads so that the event loop keeps serving while torch computes.

At most ``workers`` calls run at once, each with torch's intra-op thread count set to
``torch_threads`` (see ``service.settings`` for why the default is 1). Everything runs under
``torch.inference_mode``; the models are in eval mode and read-only, so threads can share them.

A fold also scores the points it folds, each against the state before it (prequential
calibration, see ``service.calibration``), unless scoring is turned off (``CMANP_CALIBRATION``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np
import torch

from model import CMANPState
from service.calibration import Aggregates, prequential_blocks
from service.registry import ServedModel
from service.store import Fold, Snapshot

T = TypeVar("T")


def log_entry(x: np.ndarray, y: np.ndarray) -> bytes:
    """A context post as stored in the session log: float32 rows [x | y] in model units."""
    return np.concatenate([x, y], axis=1).astype("<f4").tobytes()


def _log_points(model: ServedModel, snapshot: Snapshot) -> tuple[torch.Tensor, torch.Tensor]:
    """The snapshot's unfolded points: x [1, n, dim_x] and y [1, n, dim_y], model units (n may be 0)."""
    rows = np.frombuffer(b"".join(snapshot.log), dtype="<f4").reshape(1, -1, model.dim_x + model.dim_y)
    points = torch.from_numpy(rows.copy())
    return points[..., : model.dim_x], points[..., model.dim_x :]


def _folded(model: ServedModel, snapshot: Snapshot) -> CMANPState:
    state = model.net.state_from_bytes(snapshot.state)
    if snapshot.log:
        state = model.net.update(state, *_log_points(model, snapshot))
    return state


def _fold_and_score(model: ServedModel, snapshot: Snapshot, scoring: bool) -> tuple[CMANPState, Aggregates]:
    """The snapshot's state with its log folded in, and the log's out-of-range count and (if scoring)
    prequential scores: each block of points is scored by the state before it, then folded in."""
    net = model.net
    state = net.state_from_bytes(snapshot.state)
    if not snapshot.log:
        return state, Aggregates()
    x, y = _log_points(model, snapshot)
    aggregates = Aggregates(out_of_range=model.training_range.count_outside(x[0].numpy(), y[0].numpy()))
    if not scoring:
        return net.update(state, x, y), aggregates
    for start, stop in prequential_blocks(int(state.num_points[0]), x.shape[1]):
        block_x, block_y = x[:, start:stop], y[:, start:stop]
        mean, variance = net.predict(state, block_x)
        aggregates += Aggregates.of_scores(block_y[0], mean[0], variance[0])
        state = net.update(state, block_x, block_y)
    return state, aggregates


def _fold(model: ServedModel, snapshot: Snapshot, scoring: bool) -> Fold:
    with torch.inference_mode():
        state, aggregates = _fold_and_score(model, snapshot, scoring)
        return Fold(state.to_bytes(), aggregates.to_sums())


def _score(model: ServedModel, snapshot: Snapshot, scoring: bool) -> Aggregates:
    with torch.inference_mode():
        return _fold_and_score(model, snapshot, scoring)[1]


def _predict(model: ServedModel, snapshot: Snapshot, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        mean, variance = model.net.predict(_folded(model, snapshot), torch.from_numpy(x).unsqueeze(0))
        return mean[0].double().numpy(), variance[0].double().numpy()


class Inference:
    def __init__(self, workers: int, torch_threads: int, scoring: bool) -> None:
        torch.set_num_threads(torch_threads)
        self._limiter = anyio.CapacityLimiter(workers)
        self.scoring = scoring

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def fold(self, model: ServedModel, snapshot: Snapshot) -> Fold:
        """The session's state with its log folded in (exact update), and the log's calibration sums."""
        return await self._run(_fold, model, snapshot, self.scoring)

    async def score_log(self, model: ServedModel, snapshot: Snapshot) -> Aggregates:
        """The calibration sums the next fold of this snapshot would commit; writes nothing."""
        return await self._run(_score, model, snapshot, self.scoring)

    async def predict(self, model: ServedModel, snapshot: Snapshot, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance [m, dim_y] at x [m, dim_x], from the snapshot's state and log (model units)."""
        return await self._run(_predict, model, snapshot, x)
