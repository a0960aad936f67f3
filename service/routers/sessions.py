"""Sessions of every kind: create, inspect, delete.

What a session holds and answers depends on its kind (``service.kinds``): the kind's routes
(``service.routers.kinds``) give a new session its parameters and describe it. ``GET
/v1/sessions/{id}`` reports the session's calibration over every point posted: the sums the folds
committed, plus those of the unfolded log, scored the same way without writing
(``service.calibration``).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response

from service.dependencies import ServicesDep, TenantDep
from service.errors import UnprocessableError
from service.registry import ServedModel
from service.routers import API_PREFIX, PROBLEM_RESPONSES
from service.routers.kinds import routes_of
from service.schemas import AnySessionInfo, CreateSession
from service.store import Session

SESSION_ID_BYTES = 24  # 192 random bits
COMMON_FIELDS = frozenset({"model", "ttl_seconds"})  # of CreateSession; the others are the kinds' parameters

router = APIRouter(
    prefix=f"{API_PREFIX}/sessions",
    tags=["sessions"],
    responses=PROBLEM_RESPONSES,
)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _common_info(session: Session) -> dict[str, Any]:
    # Every read refreshes the TTL, so the session now expires one TTL from now.
    return {
        "session_id": session.session_id,
        "model": session.model,
        "model_fingerprint": session.fingerprint,
        "num_points": session.num_points,
        "version": session.version,
        "state_bytes": session.state_bytes,
        "ttl_seconds": session.ttl_seconds,
        "created_at": _iso(session.created_at),
        "expires_at": _iso(time.time() + session.ttl_seconds),
    }


def _check_fields(body: CreateSession, kind_fields: frozenset[str], model: ServedModel) -> None:
    """422 for parameters of another kind of session than the model serves (nothing is created)."""
    given = {name for name in body.model_fields_set if getattr(body, name) is not None}
    foreign = sorted(given - COMMON_FIELDS - kind_fields)
    if foreign:
        raise UnprocessableError(
            f"{', '.join(foreign)}: not a parameter of {model.session_kind} sessions, which model {model.name!r} "
            f"serves (their parameters: {', '.join(sorted(kind_fields))})"
        )


@router.post("", status_code=201)
async def create_session(
    body: CreateSession, services: ServicesDep, tenant: TenantDep, response: Response
) -> AnySessionInfo:
    """A new session of the kind its model serves; 403 when the tenant already has
    ``CMANP_MAX_SESSIONS_PER_TENANT`` live ones."""
    settings = services.settings
    model = services.registry.get(body.model)
    routes = routes_of(model.session_kind)
    _check_fields(body, routes.create_fields, model)
    ttl = body.ttl_seconds or settings.session_ttl_seconds
    if ttl > settings.max_session_ttl_seconds:
        raise UnprocessableError(f"ttl_seconds={ttl} exceeds the limit of {settings.max_session_ttl_seconds}")
    session = Session(
        session_id=secrets.token_urlsafe(SESSION_ID_BYTES),
        tenant=tenant,
        model=model.name,
        fingerprint=model.fingerprint,
        kind=routes.kind.name,
        params=routes.params(body, model),
        created_at=time.time(),
        ttl_seconds=ttl,
    )
    await services.quota.admit(tenant, session.session_id, ttl)
    try:
        session = await services.store.create(session, model.empty_state)
    except BaseException:
        await services.quota.release(tenant, session.session_id)
        raise
    services.metrics.sessions_created.inc()
    response.headers["Location"] = f"{router.prefix}/{session.session_id}"
    calibration = routes.kind.calibration({})
    return routes.info(_common_info(session), session, calibration, services.inference.scoring, None, None)


@router.get("/{session_id}")
async def get_session(session_id: str, services: ServicesDep, tenant: TenantDep) -> AnySessionInfo:
    """The session's metadata and its calibration."""
    snapshot = await services.store.snapshot(session_id, tenant)
    session = snapshot.session
    routes = routes_of(session.kind)
    calibration = routes.kind.calibration(session.sums)
    # A session whose model is gone keeps readable metadata; its unfolded log can no longer be scored.
    model = services.registry.serving(session.model, session.fingerprint)
    if model is not None and snapshot.log:
        calibration += await services.inference.score_log(routes.kind, model, snapshot)
    return routes.info(_common_info(session), session, calibration, services.inference.scoring, model, snapshot)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, services: ServicesDep, tenant: TenantDep) -> None:
    await services.store.delete(session_id, tenant)
    await services.quota.release(tenant, session_id)
    services.metrics.sessions_deleted.inc()
