"""Regression sessions: points (x, y) posted as they arrive, Gaussian predictions at query inputs.

The first session kind (``service.kinds.base``); image completion is regression with dim_x = 2.

- Parameters (``RegressionParams``): per-dimension affine maps between the user's units and the
  model's, for x and for y (``service.transforms``). With ``"y_transform": "auto"`` the y map is
  the mean and spread of the session's own points: provisional, recomputed from the log on every
  read, until the first fold fixes it (``Fold.fields``).
- Log entries: float32 rows [x | y], x in model units, y in model units (in user units for an
  auto-scaled session, scaled when folded).
- Queries (``Predict``): the predictive mean and variance at query inputs, micro-batched across
  sessions into one model call; with a joint head, covariances and joint sample paths, alone.
- Calibration: Gaussian z-scores of held-out points (``service.kinds.regression_calibration``),
  plus the count of points outside the model's training range.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import orjson
import torch

from model import CMANPState
from service.calibration import FOLDS, prequential_blocks
from service.errors import UnprocessableError
from service.folded_states import FoldedStates
from service.kinds.base import LogEntry, stored_state
from service.kinds.regression_calibration import Aggregates, Scores, scores_batch
from service.registry import ServedModel
from service.store import Fold, Session, Snapshot
from service.text import plural
from service.transforms import MAX_MODEL_VALUE, AffineMap, auto_y_map, model_points, raw_points

NAME = "regression"


def _affine_field(t: AffineMap) -> str:
    return orjson.dumps({"shift": t.shift, "scale": t.scale}, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _affine(raw: str) -> AffineMap:
    return AffineMap.from_lists(**orjson.loads(raw))


@dataclass(frozen=True)
class RegressionParams:
    """A regression session's unit maps: ``model = (user - shift) / scale`` for x and for y."""

    x_transform: AffineMap
    y_transform: AffineMap
    # "y_transform": "auto": the log holds y in user units, and y_transform is a placeholder until
    # the first fold fixes it (service.transforms.auto_y_map).
    y_auto: bool = False
    y_fixed: bool = True

    @property
    def y_provisional(self) -> bool:
        """True while the y map is recomputed from the session's points on every read."""
        return self.y_auto and not self.y_fixed

    @property
    def dim_x(self) -> int:
        return len(self.x_transform.shift)

    @property
    def dim_y(self) -> int:
        return len(self.y_transform.shift)

    def to_fields(self) -> dict[str, str]:
        """The session's meta fields (the same names and formats as before kinds were recorded)."""
        return {
            "x_transform": _affine_field(self.x_transform),
            "y_transform": _affine_field(self.y_transform),
            "y_auto": "1" if self.y_auto else "0",
            "y_fixed": "1" if self.y_fixed else "0",
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> RegressionParams:
        return cls(
            _affine(fields["x_transform"]),
            _affine(fields["y_transform"]),
            y_auto=fields.get("y_auto") == "1",  # sessions created before auto scaling have neither field
            y_fixed=fields.get("y_fixed", "1") == "1",
        )


def fixed_y_fields(y_map: AffineMap) -> dict[str, str]:
    """The meta fields that fix an auto-scaled session's y map (set by its first fold's commit)."""
    return {"y_transform": _affine_field(y_map), "y_fixed": "1"}


@dataclass(frozen=True)
class Points:
    """A post of context points in user units: rows of x and rows of y, as many of each."""

    x: list[list[float]]
    y: list[list[float]]
    flat: frozenset[str] = frozenset()  # the fields sent as a flat list: one number per point


@dataclass(frozen=True)
class Predict:
    """A query on one session's snapshot: at inputs x [m, dim_x] (model units, float32), the
    marginal mean and variance; with ``joint``, the joint head's mean and covariance; with
    ``num_samples``, joint sample paths (drawn with ``seed``, or a random one)."""

    snapshot: Snapshot
    x: np.ndarray
    joint: bool = False
    num_samples: int | None = None
    seed: int | None = None

    @property
    def marginal(self) -> bool:
        """Only marginals are asked for: such queries are batched across sessions."""
        return not self.joint and self.num_samples is None


@dataclass(frozen=True)
class Predicted:
    """A prediction in model units, float64, and the session (counters included) it was made from."""

    mean: np.ndarray  # [m, dim_y]
    variance: np.ndarray  # [m, dim_y]
    session: Session  # its num_points and version: what the prediction includes
    y_transform: AffineMap  # the y map of the state it was made from (back to user units)
    covariance: np.ndarray | None = None  # [dim_y, m, m], when asked for (joint head only)
    samples: np.ndarray | None = None  # [num_samples, m, dim_y], when asked for (joint head only)


def _rows(points: list[list[float]], name: str, dim: int, flat: frozenset[str]) -> list[list[float]]:
    """Rows of points ``name``; a flat list only where the model takes one feature (422)."""
    if name in flat and dim != 1:
        example = ", ".join(f"{name}{i}" for i in range(1, dim + 1))
        raise UnprocessableError(
            f"{name} is a flat list, which means one feature per point, but the session's model takes "
            f"{plural(dim, 'feature')} per point: send {name} as a list of points, [[{example}], ...]"
        )
    return points


def log_entry(x: np.ndarray, y: np.ndarray) -> bytes:
    """Points as stored in the session log: float32 rows [x | y], x in model units, y in model
    units (or in user units, for an auto-scaled session: see ``service.transforms``)."""
    return np.concatenate([x, y], axis=1).astype("<f4").tobytes()


def _log_points(model: ServedModel, entries: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of log entries as stored: x [1, n, dim_x] and y [1, n, dim_y] (n may be 0)."""
    stored = np.frombuffer(b"".join(entries), dtype="<f4").reshape(1, -1, model.dim_x + model.dim_y)
    points = torch.from_numpy(stored.copy())
    return points[..., : model.dim_x], points[..., model.dim_x :]


def _model_points(
    model: ServedModel, params: RegressionParams, y_map: AffineMap, entries: list[bytes]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log entries in model units. An auto-scaled session's y is scaled here, and clipped to the
    model's accepted range: a post validated against an older copy of its map cannot poison a fold."""
    x, y = _log_points(model, entries)
    if params.y_auto and y.shape[1]:
        scaled = np.clip(y_map.to_model(y[0].double().numpy()), -MAX_MODEL_VALUE, MAX_MODEL_VALUE)
        y = torch.from_numpy(scaled.astype(np.float32)).unsqueeze(0)
    return x, y


def _interpolation_scores(
    model: ServedModel, before: CMANPState, x: torch.Tensor, y: torch.Tensor
) -> tuple[Aggregates, CMANPState]:
    """Scores of a fold batch x, y [1, n, .]: share j (points i = j mod FOLDS) by ``before`` merged
    with the other shares' states, all shares in one batched predict (see ``service.calibration``);
    and ``before`` with the whole batch folded in, merged from the shares' states (exact, and the
    fold then need not update it again)."""
    net, n = model.net, x.shape[1]
    shares = [torch.arange(j, n, FOLDS) for j in range(min(FOLDS, n))]
    if len(shares) == 1:
        mean, variance = net.predict(before, x)
        return Aggregates.of_scores(y[0], mean[0], variance[0]), net.update(before, x, y)
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
    scores = sum(
        (Aggregates.of_scores(y[0, idx], mean[j, : len(idx)], variance[j, : len(idx)]) for j, idx in enumerate(shares)),
        Aggregates(),
    )
    return scores, without[0].merge(alone[0])


def _y_map(model: ServedModel, params: RegressionParams, snapshot: Snapshot) -> AffineMap:
    if not params.y_provisional:
        return params.y_transform
    return auto_y_map(_log_points(model, snapshot.log)[1][0].numpy())


def _newest_snapshots(batch: list[Predict]) -> dict[str, Snapshot]:
    """Per session of the batch, its snapshot with the most posts applied.

    Every query of a session is answered from that one: it holds every point acknowledged
    before any of them arrived (versions only grow, and each snapshot is read atomically), so
    each still sees its own writes, and a hot session's concurrent predicts, each of which read
    a slightly longer log, share one state (one derivation of its latents) instead of one each.
    """
    newest: dict[str, Snapshot] = {}
    for query in batch:
        snapshot, session_id = query.snapshot, query.snapshot.session.session_id
        if session_id not in newest or snapshot.session.version > newest[session_id].session.version:
            newest[session_id] = snapshot
    return newest


class RegressionKind:
    """The regression kind's model work (``service.kinds.base.SessionKind``)."""

    name = NAME

    def params(self, session: Session) -> RegressionParams:
        return RegressionParams.from_fields(session.params)

    def encode(self, params: RegressionParams, post: Points) -> LogEntry:
        """The post in model units (y in user units for an auto-scaled session, checked against its
        map once that is fixed); 422 if a point does not fit the session."""
        x = self.query_points(params, post.x, post.flat)
        if params.y_auto:  # the log keeps user units; checked against the map if it is fixed already
            y_rows = _rows(post.y, "y", params.dim_y, post.flat)
            y = raw_points(y_rows, params.dim_y, "y")
            if params.y_fixed:
                model_points(y_rows, params.y_transform, "y")
        else:
            y = model_points(_rows(post.y, "y", params.dim_y, post.flat), params.y_transform, "y")
        return LogEntry(log_entry(x, y), len(x))

    def query_points(self, params: RegressionParams, x: list[list[float]], flat: frozenset[str]) -> np.ndarray:
        """Inputs x in model units, float32 [m, dim_x]; 422 if they do not fit the session."""
        return model_points(_rows(x, "x", params.dim_x, flat), params.x_transform, "x")

    def y_map(self, model: ServedModel, snapshot: Snapshot) -> AffineMap:
        """The y map the snapshot is served with: the stored one, or, while an auto-scaled session has
        not folded yet, the auto map of every point in its log (which then holds all of its points)."""
        return _y_map(model, self.params(snapshot.session), snapshot)

    # ---- folds and calibration ----------------------------------------------------------------
    def _fold_and_score(
        self, model: ServedModel, snapshot: Snapshot, scoring: bool
    ) -> tuple[CMANPState, Scores, AffineMap]:
        """The snapshot's state with its log folded in, the log's out-of-range count and (if scoring, and
        ``scores_batch`` picks the batch) its held-out scores: forecast (each block by the state before
        it) and interpolation (each share of the batch by the state without it); and the y map of the
        points."""
        net, params = model.net, self.params(snapshot.session)
        scored = Scores.from_sums(snapshot.session.sums).interpolation.points
        scoring = scoring and scores_batch(scored, snapshot.fold_epoch)
        state = stored_state(model, snapshot)
        y_map = _y_map(model, params, snapshot)
        if not snapshot.log:
            return state, Scores(), y_map
        x, y = _model_points(model, params, y_map, snapshot.log)
        forecast = Aggregates(out_of_range=model.training_range.count_outside(x[0].numpy(), y[0].numpy()))
        if not scoring:
            return net.update(state, x, y), Scores(forecast=forecast), y_map
        interpolation, folded = _interpolation_scores(model, state, x, y)
        for start, stop in prequential_blocks(int(state.num_points[0]), x.shape[1]):
            block_x, block_y = x[:, start:stop], y[:, start:stop]
            mean, variance = net.predict(state, block_x)
            forecast += Aggregates.of_scores(block_y[0], mean[0], variance[0])
            # The last block needs no update: the interpolation's merge has every point in already.
            state = folded if stop == x.shape[1] else net.update(state, block_x, block_y)
        return state, Scores(interpolation, forecast), y_map

    @torch.inference_mode()
    def fold(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> Fold:
        state, scores, y_map = self._fold_and_score(model, snapshot, scoring)
        # The first fold of an auto-scaled session fixes its map: the state is in its units from now on.
        fields = fixed_y_fields(y_map) if self.params(snapshot.session).y_provisional else {}
        return Fold(state.to_bytes(), scores.to_sums(), fields)

    @torch.inference_mode()
    def score_log(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> Scores:
        return self._fold_and_score(model, snapshot, scoring)[1]

    def calibration(self, sums: Mapping[str, float]) -> Scores:
        return Scores.from_sums(sums)

    # ---- queries -------------------------------------------------------------------------------
    def folded_state(
        self, model: ServedModel, snapshot: Snapshot, folded: FoldedStates
    ) -> tuple[CMANPState, AffineMap]:
        """The snapshot's state with its log folded in, and the y map it is in; call under
        ``torch.inference_mode``. A provisional auto map changes with every post, so such states
        are folded afresh from the whole log, and reused only while the log is unchanged."""
        params = self.params(snapshot.session)
        y_map = _y_map(model, params, snapshot)

        def update(state: CMANPState, entries: list[bytes]) -> CMANPState:
            return model.net.update(state, *_model_points(model, params, y_map, entries))

        if params.y_provisional:

            def build(snapshot: Snapshot) -> CMANPState:
                state = stored_state(model, snapshot)
                return update(state, snapshot.log) if snapshot.log else state

            return folded.exact(model.fingerprint, snapshot, build), y_map
        return folded.state(model.fingerprint, snapshot, functools.partial(stored_state, model), update), y_map

    @torch.inference_mode()
    def answer(self, model: ServedModel, folded: FoldedStates, queries: list[Predict]) -> list[Predicted | Exception]:
        """Marginal queries in one batched model call; joint ones (there is one at a time) each alone."""
        answers: list[Predicted | Exception | None] = [None] * len(queries)
        marginal = [i for i, q in enumerate(queries) if q.marginal]
        if marginal:
            batched = self._predict_batch(model, [queries[i] for i in marginal], folded)
            for i, answer in zip(marginal, batched, strict=True):
                answers[i] = answer
        for i, query in enumerate(queries):
            if not query.marginal:
                try:
                    answers[i] = self._predict_joint(model, query, folded)
                except Exception as e:  # noqa: BLE001 - handed to the query's caller, which re-raises it
                    answers[i] = e
        return answers  # type: ignore[return-value] - every entry is set

    def _predict_batch(
        self, model: ServedModel, batch: list[Predict], folded: FoldedStates
    ) -> list[Predicted | Exception]:
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
        results: list[Predicted | Exception | None] = [None] * len(batch)
        rows: dict[int, tuple[CMANPState, list[int]]] = {}  # id(state) -> (state, indices in batch)
        newest = _newest_snapshots(batch)
        by_session: dict[str, tuple[CMANPState, AffineMap] | Exception] = {}
        for session_id, snapshot in newest.items():
            try:
                by_session[session_id] = self.folded_state(model, snapshot, folded)
            except Exception as e:  # noqa: BLE001 - handed to the requests on it, which re-raise it
                by_session[session_id] = e
        for i, query in enumerate(batch):
            folded_state = by_session[query.snapshot.session.session_id]
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
                session = newest[session_id].session
                results[i] = Predicted(mean[row, start:stop], variance[row, start:stop], session, y_map)
                start = stop
        return results  # type: ignore[return-value] - every entry is set

    def _predict_joint(self, model: ServedModel, query: Predict, folded: FoldedStates) -> Predicted:
        """The joint head's prediction (``joint``) and/or joint sample paths (``num_samples``)."""
        net, snapshot = model.net, query.snapshot
        # Sampling folds values into per-path copies of the state, never into the state itself
        # (which other predicts share), and nothing here is ever written back to the store.
        state, y_map = self.folded_state(model, snapshot, folded)
        xq = torch.from_numpy(query.x).unsqueeze(0)
        covariance = samples = None
        if query.joint:
            mean, cov = net.joint_predict(state, xq)
            covariance = cov[0].numpy()
            variance = np.ascontiguousarray(np.diagonal(covariance, axis1=-2, axis2=-1).T)
        else:
            mean, var = net.predict(state, xq)
            variance = var[0].double().numpy()
        if query.num_samples is not None:
            seed = query.seed if query.seed is not None else secrets.randbits(63)
            generator = torch.Generator().manual_seed(seed)
            samples = net.sample(state, xq, query.num_samples, generator=generator)[:, 0].double().numpy()
        return Predicted(mean[0].double().numpy(), variance, snapshot.session, y_map, covariance, samples)


REGRESSION = RegressionKind()
