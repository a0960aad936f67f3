"""Model calls, run in worker threads so that the event loop keeps serving while torch computes.

At most ``workers`` calls run at once, each with torch's intra-op thread count set to
``torch_threads`` (see ``service.settings`` for why the default is 1). Everything runs under
``torch.inference_mode``; the models are in eval mode and read-only, so threads can share them.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Predicted:
    """A prediction in model units, float64."""

    mean: np.ndarray  # [m, dim_y]
    variance: np.ndarray  # [m, dim_y]
    covariance: np.ndarray | None = None  # [dim_y, m, m], when asked for (joint head only)
    samples: np.ndarray | None = None  # [num_samples, m, dim_y], when asked for (joint head only)


def _predict(
    model: ServedModel, snapshot: Snapshot, x: np.ndarray, joint: bool, num_samples: int | None, seed: int | None
) -> Predicted:
    net = model.net
    with torch.inference_mode():
        # A fresh state object built from the snapshot: sampling folds values into copies of
        # it, and nothing here is ever written back to the store.
        state = _folded(model, snapshot)
        xq = torch.from_numpy(x).unsqueeze(0)
        covariance = samples = None
        if joint:
            mean, cov = net.joint_predict(state, xq)
            covariance = cov[0].numpy()
            variance = np.ascontiguousarray(np.diagonal(covariance, axis1=-2, axis2=-1).T)
        else:
            mean, var = net.predict(state, xq)
            variance = var[0].double().numpy()
        if num_samples is not None:
            generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
            samples = net.sample(state, xq, num_samples, generator=generator)[:, 0].double().numpy()
        return Predicted(mean[0].double().numpy(), variance, covariance, samples)


class Inference:
    def __init__(self, workers: int, torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)
        self._limiter = anyio.CapacityLimiter(workers)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def fold(self, model: ServedModel, snapshot: Snapshot) -> bytes:
        """The session's state with its log folded in (exact update)."""
        return await self._run(_fold, model, snapshot)

    async def predict(
        self,
        model: ServedModel,
        snapshot: Snapshot,
        x: np.ndarray,
        joint: bool = False,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> Predicted:
        """The prediction at x [m, dim_x] from the snapshot's state and log (model units); with
        ``joint``, the joint head's mean and covariance; with ``num_samples``, joint sample paths."""
        return await self._run(_predict, model, snapshot, x, joint, num_samples, seed)
