"""Event sessions: marked events ``(t, k)`` posted in time order, forecasts of the next events.

The second session kind (``service.kinds.base``), served by event models (``model.cmhp.CMHP``).

- Parameters (``EventParams``): the session's clock, ``model time = (t - time_origin) /
  time_scale`` (``time_scale``: user time units per model unit; ``time_origin`` lets absolute
  epoch seconds in: the model is exact under shifts, and times stay float64 throughout), the
  model's marks, and the last posted time, which the store's append keeps (``Order``): a post
  that starts before it is refused with 409, atomically with the append.
- Log entries: records of (float64 time in model units, int32 mark).
- Folds: the exact update; each event scored first by the state of the events before it
  (``service.kinds.events_calibration``).
- Queries (``Forecast``): at ``now`` (at or after the last event), the next event's waiting-time
  quantiles and mean and its mark probabilities; with a horizon, the expected number of events in
  ``(now, now + horizon]`` from ``COUNT_SAMPLES`` (or more) sampled futures, and sampled sequences.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from model import CMHPState
from service.errors import UnprocessableError
from service.folded_states import FoldedStates
from service.kinds.base import LogEntry, stored_state
from service.kinds.events_calibration import EventScores
from service.registry import ServedModel
from service.store import Fold, Order, Session, Snapshot

NAME = "events"
TIME_FIELD = "time"  # the meta field of the last posted time (user units), kept by the store's append
MAX_MODEL_TIME = 1e12  # |model time| accepted: far beyond any real clock once time_origin is set
COUNT_SAMPLES = 100  # sampled futures behind an expected event count (standard error ~ sd / 10)
_RECORD = np.dtype([("t", "<f8"), ("k", "<i4")])


@dataclass(frozen=True)
class EventParams:
    """An event session's clock and marks, and the latest event time posted so far (user units)."""

    time_origin: float
    time_scale: float
    num_marks: int
    last_time: float | None = None  # None before the first event

    def to_model(self, t: np.ndarray | float) -> np.ndarray:
        return (np.asarray(t, dtype=np.float64) - self.time_origin) / self.time_scale

    def to_user(self, t: np.ndarray | float) -> np.ndarray:
        return np.asarray(t, dtype=np.float64) * self.time_scale + self.time_origin

    def to_fields(self) -> dict[str, str]:
        """The session's meta fields (the last time is the store's to set)."""
        return {
            "time_origin": repr(float(self.time_origin)),
            "time_scale": repr(float(self.time_scale)),
            "num_marks": str(self.num_marks),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> EventParams:
        last = fields.get(TIME_FIELD)
        return cls(
            float(fields["time_origin"]),
            float(fields["time_scale"]),
            int(fields["num_marks"]),
            float(last) if last is not None else None,
        )


@dataclass(frozen=True)
class EventPost:
    """A post of events in user units: times (non-decreasing) and marks, as many of each."""

    times: list[float]
    marks: list[int]


@dataclass(frozen=True)
class Forecast:
    """A query on one session's snapshot, in model units: the next event after ``now``; with a
    ``horizon``, ``samples`` futures in (now, now + horizon] of at most ``max_events`` events each,
    drawn with ``seed``."""

    snapshot: Snapshot
    now: float
    quantiles: tuple[float, ...]
    horizon: float | None = None
    samples: int = COUNT_SAMPLES
    max_events: int = 1
    seed: int | None = None


@dataclass(frozen=True)
class Forecasted:
    """A forecast in model units and the session (counters included) it was made from."""

    session: Session
    wait_quantiles: np.ndarray  # [Q], counted from now
    mean_wait: float
    mark_probs: np.ndarray  # [M]
    times: np.ndarray | None = None  # [S, E] sampled event times, NaN after each sample's count
    marks: np.ndarray | None = None  # [S, E], -1 after each sample's count
    counts: np.ndarray | None = None  # [S]
    truncated: int = 0  # samples that stopped at max_events before the horizon
    seed: int | None = None

    def expected_events(self) -> tuple[float, float]:
        """The mean number of sampled events in the horizon, and its standard error (needs samples)."""
        counts = self.counts.astype(np.float64)  # type: ignore[union-attr]
        return float(counts.mean()), float(counts.std(ddof=1) / math.sqrt(len(counts)))


def log_entry(t: np.ndarray, k: np.ndarray) -> bytes:
    """Events as stored in the session log: (float64 model time, int32 mark) records."""
    records = np.empty(len(t), _RECORD)
    records["t"], records["k"] = t, k
    return records.tobytes()


def _log_events(entries: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """The events of log entries: times [1, n] float64 and marks [1, n] int64 (n may be 0)."""
    records = np.frombuffer(b"".join(entries), _RECORD)
    return torch.from_numpy(records["t"].copy()).unsqueeze(0), torch.from_numpy(records["k"].astype(np.int64))[None]


def _scores(model: ServedModel, state: CMHPState, t: torch.Tensor, k: torch.Tensor) -> tuple[CMHPState, EventScores]:
    """The state with events t, k [1, n] folded in, and each event's score by the state before it,
    read at the event before it: one batched model call over the n states (a session's first event,
    whose wait has no start, is not scored)."""
    net, before, scored = model.net, [], []
    for i in range(t.shape[1]):
        if int(state.num_events[0]):
            before.append(state)
            scored.append(i)
        state = net.update(state, t[:, i : i + 1], k[:, i : i + 1])
    if not scored:
        return state, EventScores()
    batch, index = CMHPState.concat(before), torch.tensor(scored)
    t_next, k_next = t[0, index], k[0, index]
    every_mark = torch.arange(net.cfg.num_marks).expand(len(scored), -1)
    joint = net.log_prob_next(batch, t_next.unsqueeze(1).expand_as(every_mark), every_mark)  # [n, M]
    wait_log_density = joint.logsumexp(-1)  # the marks' probabilities sum to 1
    pit = net.waiting_time_cdf(batch, t_next)
    mark_probs = (joint - wait_log_density.unsqueeze(-1)).exp()
    log_likelihood = joint.gather(-1, k_next.unsqueeze(-1)).squeeze(-1)
    return state, EventScores.of_scores(pit, log_likelihood, mark_probs, k_next)


class EventKind:
    """The event kind's model work (``service.kinds.base.SessionKind``)."""

    name = NAME

    def params(self, session: Session) -> EventParams:
        return EventParams.from_fields(session.params)

    def encode(self, params: EventParams, post: EventPost) -> LogEntry:
        """The post in model units, ordered after the session's last event by the store (``Order``);
        422 if a time or mark does not fit the session."""
        times = np.asarray(post.times, dtype=np.float64)
        marks = np.asarray(post.marks, dtype=np.int64)
        back = np.flatnonzero(np.diff(times) < 0)
        if len(back):
            i = int(back[0]) + 1
            raise UnprocessableError(
                f"times must be non-decreasing within a post: times[{i}] = {post.times[i]!r} comes after "
                f"{post.times[i - 1]!r}"
            )
        bad = np.flatnonzero((marks < 0) | (marks >= params.num_marks))
        if len(bad):
            raise UnprocessableError(
                f"marks[{int(bad[0])}] = {int(marks[bad[0]])} is not a mark of the session's model, whose marks are "
                f"0..{params.num_marks - 1}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            model_times = params.to_model(times)
        if not (np.isfinite(model_times).all() and np.abs(model_times).max() <= MAX_MODEL_TIME):
            raise UnprocessableError(
                f"times lie too far from the session's time_origin ({params.time_origin!r}): |t - time_origin| / "
                f"time_scale must stay within {MAX_MODEL_TIME:g}"
            )
        order = Order(TIME_FIELD, float(times[0]), float(times[-1]))
        return LogEntry(log_entry(model_times, marks.astype(np.int32)), len(times), order)

    # ---- folds and calibration ----------------------------------------------------------------
    def _fold_and_score(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> tuple[CMHPState, EventScores]:
        state = stored_state(model, snapshot)
        if not snapshot.log:
            return state, EventScores()
        t, k = _log_events(snapshot.log)
        if not scoring:
            return model.net.update(state, t, k), EventScores()
        return _scores(model, state, t, k)

    @torch.inference_mode()
    def fold(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> Fold:
        state, scores = self._fold_and_score(model, snapshot, scoring)
        return Fold(state.to_bytes(), scores.to_sums())

    @torch.inference_mode()
    def score_log(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> EventScores:
        return self._fold_and_score(model, snapshot, scoring)[1]

    def calibration(self, sums: Mapping[str, float]) -> EventScores:
        return EventScores.from_sums(sums)

    # ---- queries -------------------------------------------------------------------------------
    def folded_state(self, model: ServedModel, snapshot: Snapshot, folded: FoldedStates) -> CMHPState:
        """The snapshot's state with its log folded in (from the cache when it can); call under
        ``torch.inference_mode``."""

        def update(state: CMHPState, entries: list[bytes]) -> CMHPState:
            return model.net.update(state, *_log_events(entries))

        return folded.state(model.fingerprint, snapshot, lambda s: stored_state(model, s), update)

    @torch.inference_mode()
    def answer(self, model: ServedModel, folded: FoldedStates, queries: list[Forecast]) -> list[Forecasted | Exception]:
        """Next-event forecasts with the same quantiles in one batched model call (one row per query:
        the model reads each row alone, so neighbours change nothing); queries with a horizon (sampled
        futures), or whose batch fails, each alone. A query whose session fails gets its own exception."""
        answers: list[Forecasted | Exception | None] = [None] * len(queries)
        groups: dict[tuple[float, ...], list[int]] = {}
        for i, query in enumerate(queries):
            if query.horizon is None:
                groups.setdefault(query.quantiles, []).append(i)
        for quantiles, members in groups.items():
            if len(members) < 2:
                continue
            try:
                states = [self.folded_state(model, queries[i].snapshot, folded) for i in members]
                now = torch.tensor([queries[i].now for i in members], dtype=torch.float64)
                nxt = model.net.next_event(CMHPState.concat(states), now, quantiles)
            except Exception:  # noqa: BLE001 - each query is answered alone below, with its own error
                continue
            for row, i in enumerate(members):
                answers[i] = Forecasted(
                    queries[i].snapshot.session,
                    nxt.quantiles[row].numpy(),
                    float(nxt.mean[row]),
                    nxt.mark_probs[row].double().numpy(),
                )
        for i, query in enumerate(queries):
            if answers[i] is None:
                try:
                    answers[i] = self._forecast(model, query, folded)
                except Exception as e:  # noqa: BLE001 - handed to the query's caller, which re-raises it
                    answers[i] = e
        return answers  # type: ignore[return-value] - every entry is set

    def _forecast(self, model: ServedModel, query: Forecast, folded: FoldedStates) -> Forecasted:
        net = model.net
        state = self.folded_state(model, query.snapshot, folded)
        nxt = net.next_event(state, query.now, query.quantiles)
        forecast = Forecasted(
            query.snapshot.session,
            nxt.quantiles[0].numpy(),
            float(nxt.mean[0]),
            nxt.mark_probs[0].double().numpy(),
        )
        if query.horizon is None:
            return forecast
        seed = query.seed if query.seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        drawn = net.sample(state, query.horizon, query.samples, query.now, generator, query.max_events)
        return replace(
            forecast,
            times=drawn.times[0].numpy(),
            marks=drawn.marks[0].numpy(),
            counts=drawn.counts[0].numpy(),
            truncated=int(drawn.truncated[0].sum()),
            seed=seed,
        )


EVENTS = EventKind()
