"""Model calls, run in worker threads so that the event loop keeps serving while torch computes.

At most ``workers`` calls run at once, each with torch's intra-op thread count set to
``torch_threads`` (see ``service.settings`` for why the default is 1). Everything runs under
``torch.inference_mode``; the models are in eval mode and read-only, so threads can share them.
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
from service.registry import ServedModel
from service.store import Snapshot

T = TypeVar("T")


def log_entry(x: np.ndarray, y: np.ndarray) -> bytes:
    """A context post as stored in the session log: float32 rows [x | y] in model units."""
    return np.concatenate([x, y], axis=1).astype("<f4").tobytes()


def _folded(model: ServedModel, snapshot: Snapshot) -> CMANPState:
    net = model.net
    state = net.state_from_bytes(snapshot.state)
    if snapshot.log:
        rows = np.frombuffer(b"".join(snapshot.log), dtype="<f4").reshape(-1, model.dim_x + model.dim_y)
        points = torch.from_numpy(rows.copy()).unsqueeze(0)
        state = net.update(state, points[..., : model.dim_x], points[..., model.dim_x :])
    return state


def _fold(model: ServedModel, snapshot: Snapshot) -> bytes:
    with torch.inference_mode():
        return _folded(model, snapshot).to_bytes()


def _predict(model: ServedModel, snapshot: Snapshot, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        mean, variance = model.net.predict(_folded(model, snapshot), torch.from_numpy(x).unsqueeze(0))
        return mean[0].double().numpy(), variance[0].double().numpy()


class Inference:
    def __init__(self, workers: int, torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)
        self._limiter = anyio.CapacityLimiter(workers)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def fold(self, model: ServedModel, snapshot: Snapshot) -> bytes:
        """The session's state with its log folded in (exact update)."""
        return await self._run(_fold, model, snapshot)

    async def predict(self, model: ServedModel, snapshot: Snapshot, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance [m, dim_y] at x [m, dim_x], from the snapshot's state and log (model units)."""
        return await self._run(_predict, model, snapshot, x)
