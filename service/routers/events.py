"""The routes of event sessions (``service.kinds.events``): post events, forecast the next ones.

Times travel in the session's units (``time_origin``, ``time_scale``), waits and horizons in its
time units; the kind works in the model's. A session of another kind gets 409 from these routes,
and nothing changes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Response

from service.calibration import Calibration
from service.dependencies import ServicesDep, TenantDep
from service.errors import UnprocessableError
from service.kinds.base import require_kind
from service.kinds.events import COUNT_SAMPLES, EVENTS, NAME, EventParams, EventPost, Forecast, Forecasted
from service.kinds.events_calibration import EventScores
from service.registry import ServedModel
from service.routers import API_PREFIX, PROBLEM_RESPONSES
from service.routers.posts import IdempotencyKey, append, check_count
from service.schemas import CreateSession, EventForecast, Events, EventSessionInfo, EventsResult, ForecastQuery
from service.settings import Settings
from service.store import Fold, Session, Snapshot
from service.text import plural

PRIOR_WARNING = "no events yet: this is the model's prior"
MIN_EVENTS_PER_SAMPLE = 10  # the fewest events a sampled future may hold before it is cut

router = APIRouter(prefix=f"{API_PREFIX}/sessions", tags=["sessions"], responses=PROBLEM_RESPONSES)


# ---- what the common session routes ask of the kind ---------------------------------------------
def session_params(body: CreateSession, model: ServedModel) -> dict[str, str]:
    """A new session's clock (default: the model's own, from 0) and its model's marks."""
    origin = body.time_origin if body.time_origin is not None else 0.0
    scale = body.time_scale if body.time_scale is not None else 1.0
    return EventParams(origin, scale, model.net.cfg.num_marks).to_fields()


def describe(model: ServedModel) -> dict[str, Any]:
    """An event model's fields in GET /v1/models."""
    return {"num_marks": model.net.cfg.num_marks}


def info(
    common: dict[str, Any],
    session: Session,
    calibration: Calibration,
    scoring: bool,
    model: ServedModel | None,
    snapshot: Snapshot | None,
) -> EventSessionInfo:
    """The session as GET describes it: its clock, marks, last event time and calibration."""
    params = EVENTS.params(session)
    return EventSessionInfo(
        **common,
        num_events=session.num_points,
        time_origin=params.time_origin,
        time_scale=params.time_scale,
        num_marks=params.num_marks,
        last_time=params.last_time,
        calibration=cast(EventScores, calibration).report(enabled=scoring),
    )


# ---- the kind's own routes ----------------------------------------------------------------------
@router.post("/{session_id}/events")
async def add_events(
    session_id: str,
    body: Events,
    services: ServicesDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> EventsResult:
    """Add events, in time order: none may come before the session's last event (409, nothing applied)."""
    check_count(len(body.times), "event", services)
    session = await services.store.fixed(session_id, tenant)  # counters not read here: the append returns them
    require_kind(session, NAME, "POST events")
    model = services.registry.pinned(session.model, session.fingerprint)
    entry = EVENTS.encode(EVENTS.params(session), EventPost(body.times, body.marks))

    def record_fold(fold: Fold) -> None:
        services.metrics.record_event_fold(model.name, EVENTS.calibration(fold.sums))

    appended = await append(services, EVENTS, model, session, entry, idempotency_key, response, record_fold)
    if not appended.replayed:
        services.metrics.event_posts.inc()
        services.metrics.events.inc(entry.points)
    # The post was applied after every earlier one (or is the replay of such a post): its last time is the session's.
    return EventsResult(num_events=appended.num_points, version=appended.version, last_time=body.times[-1])


def _samples(body: ForecastQuery, settings: Settings) -> tuple[int, int]:
    """Sampled futures and the most events each may hold: num_samples x events <= CMANP_MAX_SAMPLE_VALUES (422)."""
    samples = max(body.num_samples or 0, COUNT_SAMPLES)
    max_events = settings.max_sample_values // samples
    if max_events < MIN_EVENTS_PER_SAMPLE:
        raise UnprocessableError(
            f"num_samples={body.num_samples} leaves fewer than {MIN_EVENTS_PER_SAMPLE} events per sample within "
            f"CMANP_MAX_SAMPLE_VALUES ({settings.max_sample_values}); ask for at most "
            f"{settings.max_sample_values // MIN_EVENTS_PER_SAMPLE} samples"
        )
    return samples, max_events


def _now(body: ForecastQuery, params: EventParams) -> float:
    """The forecast time in user units: as asked, at or after the last event (422 before it)."""
    if body.now is None:
        return params.last_time if params.last_time is not None else params.time_origin
    if params.last_time is not None and body.now < params.last_time:
        raise UnprocessableError(
            f"now={body.now!r} is before the session's last event at {params.last_time!r}: forecasts are made at "
            "or after the last event"
        )
    return body.now


def _user_samples(out: Forecasted, params: EventParams, num_samples: int) -> list[dict[str, list]]:
    samples = []
    for i in range(num_samples):
        n = int(out.counts[i])  # type: ignore[index]
        times = params.to_user(out.times[i, :n]).tolist()  # type: ignore[index]
        samples.append({"times": times, "marks": out.marks[i, :n].tolist()})  # type: ignore[index]
    return samples


@router.post("/{session_id}/forecast")
async def forecast(session_id: str, body: ForecastQuery, services: ServicesDep, tenant: TenantDep) -> EventForecast:
    """The next event after ``now``: its waiting-time quantiles and mean, and its mark probabilities.

    With ``horizon``, the expected number of events in (now, now + horizon], estimated from sampled
    futures (at least 100; their count and the estimate's standard error come with it); with
    ``num_samples``, that many of the sampled futures. Sampling never changes the session.
    """
    snapshot = await services.store.snapshot(session_id, tenant)
    session = snapshot.session
    require_kind(session, NAME, "POST forecast")
    model = services.registry.pinned(session.model, session.fingerprint)
    params = EVENTS.params(session)
    now = _now(body, params)
    query = Forecast(snapshot, float(params.to_model(now)), tuple(body.quantiles))
    if body.horizon is not None:
        samples, max_events = _samples(body, services.settings)
        query = replace(query, horizon=body.horizon / params.time_scale, samples=samples, max_events=max_events)
        query = replace(query, seed=body.seed)
    out: Forecasted = await services.inference.answer(EVENTS, model, query, batched=body.horizon is None)
    warnings = [PRIOR_WARNING] if out.session.num_points == 0 else []
    result: dict[str, Any] = {
        "now": now,
        "last_time": params.last_time,
        "num_events": out.session.num_points,
        "version": out.session.version,
        "quantiles": body.quantiles,
        "wait_quantiles": (out.wait_quantiles * params.time_scale).tolist(),
        "mean_wait": out.mean_wait * params.time_scale,
        "mark_probabilities": out.mark_probs.tolist(),
        "warnings": warnings,
    }
    if out.counts is not None:
        expected, error = out.expected_events()
        result |= {
            "horizon": body.horizon,
            "expected_events": expected,
            "expected_events_std_error": error,
            "count_samples": len(out.counts),
            "seed": out.seed,
        }
        if out.truncated:
            warnings.append(
                f"{plural(out.truncated, 'sampled future')} reached {query.max_events} events before the horizon "
                "(CMANP_MAX_SAMPLE_VALUES / samples): expected_events is a lower bound; ask for a shorter horizon"
            )
        if body.num_samples is not None:
            result["samples"] = _user_samples(out, params, body.num_samples)
    if not np.isfinite([result["mean_wait"], *result["wait_quantiles"], result.get("expected_events", 0.0)]).all():
        raise UnprocessableError("the forecast is not a finite number in this session's units (see its time_scale)")
    services.metrics.forecasts.inc()
    return EventForecast(**result)
