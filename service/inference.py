"""Model calls, run in worker threads so that the event loop keeps serving while torch computes.

At most ``workers`` calls run at once, each with torch's intra-op thread count set to
``torch_threads`` (see ``service.settings`` for why the default is 1). Everything runs under
``torch.inference_mode``; the models are in eval mode and read-only, so threads can share them.

A fold also scores the points it folds, each against the state before it (prequential
calibration, see ``service.calibration``), unless scoring is turned off (``CMANP_CALIBRATION``).

Predictions are micro-batched: a predict that waits for a worker joins a queue, and the request
that gets the worker takes every queued predict of the same model (up to ``max_batch``) into one
batched model call. Deriving the latents and decoding run as one batch of sessions, which costs
far less per session than one call each (a model call on one session is mostly per-op overhead).
Nothing waits for a batch to fill: under light load each predict runs alone, as before.

Folded states are cached per session (``FoldedStates``): a predict on a hot session folds only
the log entries posted since the previous predict, not the whole unfolded log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np
import torch

from model import CMANPState
from service.calibration import FOLDS, Aggregates, Scores, prequential_blocks
from service.errors import CorruptStateError
from service.registry import ServedModel
from service.store import Fold, Session, Snapshot, fixed_y_fields
from service.transforms import MAX_MODEL_VALUE, AffineMap, auto_y_map

logger = logging.getLogger(__name__)

T = TypeVar("T")


def log_entry(x: np.ndarray, y: np.ndarray) -> bytes:
    """A context post as stored in the session log: float32 rows [x | y], x in model units, y in
    model units (or in user units, for an auto-scaled session: see ``service.transforms``)."""
    return np.concatenate([x, y], axis=1).astype("<f4").tobytes()


def stored_state(model: ServedModel, snapshot: Snapshot) -> CMANPState:
    """The snapshot's state blob, decoded (the model's empty state before the session's first fold);
    CorruptStateError if it fails its checks (checksum, shapes, fingerprint), which the model reports
    as ValueError, or is missing after a fold. The session cannot be served then, but the blob is
    left as it is, for an operator to look at."""
    try:
        return model.net.state_from_bytes(snapshot.state_blob(model.empty_state))
    except ValueError as e:
        logger.error("session %s: stored state unreadable: %s", snapshot.session.session_id, e)
        raise CorruptStateError(
            f"the stored state of session {snapshot.session.session_id} is unreadable ({e}); it cannot be "
            "served or updated: delete the session and create it again"
        ) from e


def _log_points(model: ServedModel, entries: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of log entries as stored: x [1, n, dim_x] and y [1, n, dim_y] (n may be 0)."""
    rows = np.frombuffer(b"".join(entries), dtype="<f4").reshape(1, -1, model.dim_x + model.dim_y)
    points = torch.from_numpy(rows.copy())
    return points[..., : model.dim_x], points[..., model.dim_x :]


def y_map_of(model: ServedModel, snapshot: Snapshot) -> AffineMap:
    """The y map the snapshot is served with: the stored one, or, while an auto-scaled session has
    not folded yet, the auto map of every point in its log (which then holds all of its points)."""
    if not snapshot.session.y_provisional:
        return snapshot.session.y_transform
    return auto_y_map(_log_points(model, snapshot.log)[1][0].numpy())


def _model_points(
    model: ServedModel, session: Session, y_map: AffineMap, entries: list[bytes]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log entries in model units. An auto-scaled session's y is scaled here, and clipped to the
    model's accepted range: a post validated against an older copy of its map cannot poison a fold."""
    x, y = _log_points(model, entries)
    if session.y_auto and y.shape[1]:
        scaled = np.clip(y_map.to_model(y[0].double().numpy()), -MAX_MODEL_VALUE, MAX_MODEL_VALUE)
        y = torch.from_numpy(scaled.astype(np.float32)).unsqueeze(0)
    return x, y


@dataclass(frozen=True)
class _Folded:
    """A state blob with the first log entries of its session folded in."""

    blob: bytes | None  # None: no stored blob yet (the model's empty state)
    log: list[bytes]
    num_points: int  # the session's points at the time: a later snapshot never has fewer
    state: CMANPState  # the model caches its derived latents on it once it is predicted from


class FoldedStates:
    """The last folded state of recently predicted sessions (per process, LRU, at most ``capacity``).

    A predict needs the session's state with its whole unfolded log folded in. On a hot session
    the log holds up to ``fold_threshold`` points and gains a few between two predicts, so
    folding it from the blob every time costs far more than folding just the new entries into
    the state the last predict built; with no post in between, even its derived latents are
    reused. An entry serves a snapshot only if the snapshot's blob is byte-equal to the entry's
    and its log starts with the entry's log entries: appends only add at the log's tail, and only
    a fold's commit rewrites the blob (trimming the log), so the rest of the log is then exactly
    what the entry lacks. Comparing contents, not counters (fold epoch, version), keeps this
    exact even where Redis lost its last writes and then took others (failover, ``appendfsync``).
    The update is exact and order-independent: the result equals a fold from scratch up to
    float rounding.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Folded] = OrderedDict()
        self._lock = threading.Lock()  # worker threads share the cache

    def state(self, model: ServedModel, snapshot: Snapshot) -> tuple[CMANPState, AffineMap]:
        """The snapshot's state with its log folded in, and the y map it is in; call under
        ``torch.inference_mode``. A provisional auto map changes with every post, so such states
        are folded afresh and not kept."""
        session, y_map = snapshot.session, y_map_of(model, snapshot)
        if session.y_provisional:
            state = stored_state(model, snapshot)
            if snapshot.log:
                state = model.net.update(state, *_model_points(model, session, y_map, snapshot.log))
            return state, y_map
        key = (model.fingerprint, snapshot.session.session_id)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached.blob == snapshot.state and snapshot.log[: len(cached.log)] == cached.log:
            state, done = cached.state, len(cached.log)
        else:
            state, done = stored_state(model, snapshot), 0
        if done < len(snapshot.log):
            state = model.net.update(state, *_model_points(model, session, y_map, snapshot.log[done:]))
        if self.capacity and (cached is None or state is not cached.state):
            self._remember(key, _Folded(snapshot.state, snapshot.log, snapshot.session.num_points, state))
        return state, y_map

    def _remember(self, key: tuple[str, str], entry: _Folded) -> None:
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.num_points > entry.num_points:
                return  # a predict of a later snapshot got here first: keep its state
            self._entries[key] = entry
            self._entries.move_to_end(key)
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


def _interpolation_scores(model: ServedModel, before: CMANPState, x: torch.Tensor, y: torch.Tensor) -> Aggregates:
    """Scores of a fold batch x, y [1, n, .]: share j (points i = j mod FOLDS) by ``before`` merged
    with the other shares' states, all shares in one batched predict (see ``service.calibration``)."""
    net, n = model.net, x.shape[1]
    shares = [torch.arange(j, n, FOLDS) for j in range(min(FOLDS, n))]
    if len(shares) == 1:
        mean, variance = net.predict(before, x)
        return Aggregates.of_scores(y[0], mean[0], variance[0])
    alone = [net.update(net.empty_state(), x[:, idx], y[:, idx]) for idx in shares]
    without = []
    for j in range(len(shares)):
        state = before
        for k, share_state in enumerate(alone):
            if k != j:
                state = state.merge(share_state)
        without.append(state)
    width = len(shares[0])  # the first share is the largest; shorter ones are padded (queries are independent)
    xq = torch.zeros(len(shares), width, model.dim_x)
    for j, idx in enumerate(shares):
        xq[j, : len(idx)] = x[0, idx]
    mean, variance = net.predict(CMANPState.concat(without), xq)
    return sum(
        (Aggregates.of_scores(y[0, idx], mean[j, : len(idx)], variance[j, : len(idx)]) for j, idx in enumerate(shares)),
        Aggregates(),
    )


def _fold_and_score(model: ServedModel, snapshot: Snapshot, scoring: bool) -> tuple[CMANPState, Scores, AffineMap]:
    """The snapshot's state with its log folded in, the log's out-of-range count and (if scoring) its
    held-out scores: forecast (each block by the state before it) and interpolation (each share of
    the batch by the state without it); and the y map of the points."""
    net = model.net
    state = stored_state(model, snapshot)
    y_map = y_map_of(model, snapshot)
    if not snapshot.log:
        return state, Scores(), y_map
    x, y = _model_points(model, snapshot.session, y_map, snapshot.log)
    forecast = Aggregates(out_of_range=model.training_range.count_outside(x[0].numpy(), y[0].numpy()))
    if not scoring:
        return net.update(state, x, y), Scores(forecast=forecast), y_map
    interpolation = _interpolation_scores(model, state, x, y)
    for start, stop in prequential_blocks(int(state.num_points[0]), x.shape[1]):
        block_x, block_y = x[:, start:stop], y[:, start:stop]
        mean, variance = net.predict(state, block_x)
        forecast += Aggregates.of_scores(block_y[0], mean[0], variance[0])
        state = net.update(state, block_x, block_y)
    return state, Scores(interpolation, forecast), y_map


def _fold(model: ServedModel, snapshot: Snapshot, scoring: bool) -> Fold:
    with torch.inference_mode():
        state, scores, y_map = _fold_and_score(model, snapshot, scoring)
        # The first fold of an auto-scaled session fixes its map: the state is in its units from now on.
        fields = fixed_y_fields(y_map) if snapshot.session.y_provisional else {}
        return Fold(state.to_bytes(), scores.to_sums(), fields)


def _score(model: ServedModel, snapshot: Snapshot, scoring: bool) -> Scores:
    with torch.inference_mode():
        return _fold_and_score(model, snapshot, scoring)[1]


@dataclass(eq=False)  # compared by identity
class _Predict:
    """A queued predict; ``result`` is set by whichever request runs its batch."""

    model: ServedModel
    snapshot: Snapshot
    x: np.ndarray
    result: asyncio.Future[tuple[np.ndarray, np.ndarray, Session, AffineMap]]


def _newest_snapshots(batch: list[_Predict]) -> dict[str, Snapshot]:
    """Per session of the batch, its snapshot with the most posts applied.

    Every request of a session is answered from that one: it holds every point acknowledged
    before any of them arrived (versions only grow, and each snapshot is read atomically), so
    each still sees its own writes, and a hot session's concurrent predicts, each of which read
    a slightly longer log, share one state (one derivation of its latents) instead of one each.
    """
    newest: dict[str, Snapshot] = {}
    for item in batch:
        snapshot, session_id = item.snapshot, item.snapshot.session.session_id
        if session_id not in newest or snapshot.session.version > newest[session_id].session.version:
            newest[session_id] = snapshot
    return newest


def _predict_batch(
    model: ServedModel, batch: list[_Predict], folded: FoldedStates
) -> list[tuple[np.ndarray, np.ndarray, Session, AffineMap] | Exception]:
    """Predict for several sessions in one model call; a session whose state fails gets its own error.

    Each distinct state is one row of the call, with the queries of every request on it side by
    side: requests on one session share its newest snapshot (``_newest_snapshots``), and requests
    on a session that saw no post in between share the state (``FoldedStates``). Rows are
    zero-padded to the longest: the decoder treats every query independently, so neither the
    neighbours nor the padding change a prediction, and both are sliced off. A call with a single
    row predicts from that state object itself, whose derived latents the model caches: a
    repeated predict on an unchanged session decodes only. Each result carries the session (with
    its counters) of the snapshot it was computed from.
    """
    results: list[tuple[np.ndarray, np.ndarray, Session, AffineMap] | Exception | None] = [None] * len(batch)
    rows: dict[int, tuple[CMANPState, list[int]]] = {}  # id(state) -> (state, indices in batch)
    newest = _newest_snapshots(batch)
    with torch.inference_mode():
        by_session: dict[str, tuple[CMANPState, AffineMap] | Exception] = {}
        for session_id, snapshot in newest.items():
            try:
                by_session[session_id] = folded.state(model, snapshot)
            except Exception as e:  # noqa: BLE001 - handed to the requests on it, which re-raise it
                by_session[session_id] = e
        for i, item in enumerate(batch):
            folded_state = by_session[item.snapshot.session.session_id]
            if isinstance(folded_state, Exception):
                results[i] = folded_state
                continue
            state = folded_state[0]
            rows.setdefault(id(state), (state, []))[1].append(i)
        if not rows:
            return results  # type: ignore[return-value]
        queries = [np.concatenate([batch[i].x for i in indices]) for _, indices in rows.values()]
        xq = torch.zeros(len(rows), max(len(q) for q in queries), model.dim_x)
        for row, q in enumerate(queries):
            xq[row, : len(q)] = torch.from_numpy(q)
        states = [state for state, _ in rows.values()]
        mean, variance = model.net.predict(CMANPState.concat(states), xq)
        mean, variance = mean.double().numpy(), variance.double().numpy()
    for row, (_, indices) in enumerate(rows.values()):
        start = 0
        for i in indices:
            stop = start + len(batch[i].x)
            session_id = batch[i].snapshot.session.session_id
            y_map = by_session[session_id][1]  # type: ignore[index] - rows hold states, not errors
            results[i] = (mean[row, start:stop], variance[row, start:stop], newest[session_id].session, y_map)
            start = stop
    return results  # type: ignore[return-value] - every entry is set


@dataclass(frozen=True)
class Predicted:
    """A prediction in model units, float64, and the session (counters included) it was made from."""

    mean: np.ndarray  # [m, dim_y]
    variance: np.ndarray  # [m, dim_y]
    session: Session  # its num_points and version: what the prediction includes
    y_transform: AffineMap  # the y map of the state it was made from (back to user units)
    covariance: np.ndarray | None = None  # [dim_y, m, m], when asked for (joint head only)
    samples: np.ndarray | None = None  # [num_samples, m, dim_y], when asked for (joint head only)


def _predict_joint(
    model: ServedModel,
    snapshot: Snapshot,
    x: np.ndarray,
    joint: bool,
    num_samples: int | None,
    seed: int | None,
    folded: FoldedStates,
) -> Predicted:
    """The joint head's prediction (``joint``) and/or joint sample paths (``num_samples``)."""
    net = model.net
    with torch.inference_mode():
        # Sampling folds values into per-path copies of the state, never into the state itself
        # (which other predicts share), and nothing here is ever written back to the store.
        state, y_map = folded.state(model, snapshot)
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
        return Predicted(mean[0].double().numpy(), variance, snapshot.session, y_map, covariance, samples)


class Inference:
    def __init__(
        self, workers: int, torch_threads: int, max_batch: int = 16, scoring: bool = True, folded_states: int = 64
    ) -> None:
        torch.set_num_threads(torch_threads)
        self._limiter = anyio.CapacityLimiter(workers)
        self._max_batch = max_batch
        self._queue: list[_Predict] = []
        self.scoring = scoring
        self.folded = FoldedStates(folded_states)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def fold(self, model: ServedModel, snapshot: Snapshot) -> Fold:
        """The session's state with its log folded in (exact update), and the log's calibration sums."""
        return await self._run(_fold, model, snapshot, self.scoring)

    async def score_log(self, model: ServedModel, snapshot: Snapshot) -> Scores:
        """The calibration sums the next fold of this snapshot would commit; writes nothing."""
        return await self._run(_score, model, snapshot, self.scoring)

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
        ``joint``, the joint head's mean and covariance; with ``num_samples``, joint sample paths.
        Plain predicts are micro-batched across sessions; joint ones run on their own."""
        if joint or num_samples is not None:
            return await self._run(_predict_joint, model, snapshot, x, joint, num_samples, seed, self.folded)
        item = _Predict(model, snapshot, x, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        try:
            async with self._limiter:
                if item in self._queue:  # nobody took it into their batch meanwhile: run a batch with it
                    await self._run_batch(model, self._take_batch(item))
        finally:
            if item in self._queue:  # cancelled while waiting for a worker
                self._queue.remove(item)
        return Predicted(*await item.result)

    def _take_batch(self, first: _Predict) -> list[_Predict]:
        others = [p for p in self._queue if p.model is first.model and p is not first]
        batch = [first, *others[: self._max_batch - 1]]
        self._queue = [p for p in self._queue if p not in batch]
        return batch

    async def _run_batch(self, model: ServedModel, batch: list[_Predict]) -> None:
        # Shielded: other requests wait on these results, so a cancelled caller must not drop them.
        try:
            with anyio.CancelScope(shield=True):
                results = await anyio.to_thread.run_sync(_predict_batch, model, batch, self.folded)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            results = [e] * len(batch)
        for p, r in zip(batch, results, strict=True):
            if isinstance(r, Exception):
                p.result.set_exception(r)
            else:
                p.result.set_result(r)
