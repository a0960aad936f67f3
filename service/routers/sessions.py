"""Sessions: create, post context points, predict, inspect, delete.

Points travel in the user's units; each session's transforms map them into the model's units
(``service.transforms``). Predictions come back in user units.

``GET /v1/sessions/{id}`` reports the session's prequential calibration and its out-of-range
fraction over every point posted: the sums the folds committed, plus those of the unfolded log,
scored the same way without writing (``service.calibration``).
"""

from __future__ import annotations

import functools
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Response

from service.calibration import Scores
from service.dependencies import ServicesDep, TenantDep
from service.errors import TooLargeError, UnprocessableError
from service.inference import log_entry, y_map_of
from service.registry import ServedModel
from service.routers import API_PREFIX, PROBLEM_RESPONSES
from service.schemas import (
    AffineOut,
    Context,
    ContextResult,
    CreateSession,
    OrjsonResponse,
    PointsBody,
    Prediction,
    Query,
    SessionInfo,
)
from service.settings import Settings
from service.store import Fold, Session
from service.text import plural
from service.transforms import AffineMap, model_points, raw_points, resolve_x, resolve_y

SESSION_ID_BYTES = 24  # 192 random bits
PRIOR_WARNING = "no context yet: this is the model's prior"

router = APIRouter(
    prefix=f"{API_PREFIX}/sessions",
    tags=["sessions"],
    responses=PROBLEM_RESPONSES,
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=128,
        description="repeats of a key (per session, the last keys are remembered) apply nothing "
        "and return the original answer",
    ),
]


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _affine_out(t: AffineMap) -> AffineOut:
    return AffineOut(shift=t.shift.tolist(), scale=t.scale.tolist())


def _y_scaling(session: Session) -> str:
    return "given" if not session.y_auto else "auto-provisional" if session.y_provisional else "auto-fixed"


def _info(session: Session, calibration: Scores, scoring: bool, y_map: AffineMap | None = None) -> SessionInfo:
    # Every read refreshes the TTL, so the session now expires one TTL from now.
    return SessionInfo(
        session_id=session.session_id,
        model=session.model,
        model_fingerprint=session.fingerprint,
        dim_x=session.dim_x,
        dim_y=session.dim_y,
        num_points=session.num_points,
        version=session.version,
        state_bytes=session.state_bytes,
        ttl_seconds=session.ttl_seconds,
        created_at=_iso(session.created_at),
        expires_at=_iso(time.time() + session.ttl_seconds),
        x_transform=_affine_out(session.x_transform),
        y_transform=_affine_out(y_map or session.y_transform),
        y_scaling=_y_scaling(session),
        out_of_range_fraction=calibration.out_of_range / session.num_points if session.num_points else 0.0,
        calibration=calibration.report(enabled=scoring),
    )


def _check_count(points: int, limit: int) -> None:
    if points > limit:
        raise TooLargeError(
            f"{plural(points, 'point')} in one request; the limit is {limit} (CMANP_MAX_POINTS_PER_REQUEST)"
        )


def _rows(body: PointsBody, name: str, dim: int) -> list[list[float]]:
    """The body's points ``name`` as rows; a flat list only where the model takes one feature (422)."""
    if body.flat(name) and dim != 1:
        example = ", ".join(f"{name}{i}" for i in range(1, dim + 1))
        raise UnprocessableError(
            f"{name} is a flat list, which means one feature per point, but the session's model takes "
            f"{plural(dim, 'feature')} per point: send {name} as a list of points, [[{example}], ...]"
        )
    return getattr(body, name)


def _points(body: PointsBody, name: str, transform: AffineMap) -> np.ndarray:
    """The body's points ``name`` in model units."""
    return model_points(_rows(body, name, len(transform.shift)), transform, name)


@router.post("", status_code=201)
async def create_session(
    body: CreateSession, services: ServicesDep, tenant: TenantDep, response: Response
) -> SessionInfo:
    """A new session; 403 when the tenant already has ``CMANP_MAX_SESSIONS_PER_TENANT`` live ones."""
    settings = services.settings
    model = services.registry.get(body.model)
    ttl = body.ttl_seconds or settings.session_ttl_seconds
    if ttl > settings.max_session_ttl_seconds:
        raise UnprocessableError(f"ttl_seconds={ttl} exceeds the limit of {settings.max_session_ttl_seconds}")
    y_spec = body.y_transform if body.y_transform is not None else model.y_transform_default
    auto = y_spec == "auto"
    session = Session(
        session_id=secrets.token_urlsafe(SESSION_ID_BYTES),
        tenant=tenant,
        model=model.name,
        fingerprint=model.fingerprint,
        x_transform=resolve_x(body.x_transform, model.dim_x, model.net.cfg.x_range),
        y_transform=resolve_y(None if auto else y_spec, model.dim_y),  # auto: a placeholder until fixed
        created_at=time.time(),
        ttl_seconds=ttl,
        y_auto=auto,
        y_fixed=not auto,
    )
    await services.quota.admit(tenant, session.session_id, ttl)
    try:
        session = await services.store.create(session, model.empty_state)
    except BaseException:
        await services.quota.release(tenant, session.session_id)
        raise
    services.metrics.sessions_created.inc()
    response.headers["Location"] = f"{router.prefix}/{session.session_id}"
    return _info(session, Scores(), services.inference.scoring)


@router.get("/{session_id}")
async def get_session(session_id: str, services: ServicesDep, tenant: TenantDep) -> SessionInfo:
    """The session's metadata, its calibration and its out-of-range fraction."""
    snapshot = await services.store.snapshot(session_id, tenant)
    session = snapshot.session
    calibration = Scores.from_sums(session.sums)
    # A session whose model is gone keeps readable metadata; its unfolded log can no longer be scored.
    model = services.registry.serving(session.model, session.fingerprint)
    if model is not None and snapshot.log:
        calibration += await services.inference.score_log(model, snapshot)
    y_map = y_map_of(model, snapshot) if model is not None else None
    return _info(session, calibration, services.inference.scoring, y_map)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, services: ServicesDep, tenant: TenantDep) -> None:
    await services.store.delete(session_id, tenant)
    await services.quota.release(tenant, session_id)
    services.metrics.sessions_deleted.inc()


@router.post("/{session_id}/context")
async def add_context(
    session_id: str,
    body: Context,
    services: ServicesDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ContextResult:
    """Add points to the session's context; the answer counts every point applied so far."""
    _check_count(len(body.x), services.settings.max_points_per_request)
    session = await services.store.fixed(session_id, tenant)  # counters not read here: the append returns them
    model = services.registry.pinned(session.model, session.fingerprint)
    x = _points(body, "x", session.x_transform)
    if session.y_auto:  # the log keeps user units; checked against the map if it is fixed already
        rows = _rows(body, "y", session.dim_y)
        y = raw_points(rows, session.dim_y, "y")
        if session.y_fixed:
            model_points(rows, session.y_transform, "y")
    else:
        y = _points(body, "y", session.y_transform)
    compute_fold = functools.partial(services.inference.fold, model)

    def record_fold(fold: Fold) -> None:
        services.metrics.record_fold(model.name, Scores.from_sums(fold.sums).forecast)

    entry = log_entry(x, y)
    appended = await services.store.append(session, entry, len(x), idempotency_key, compute_fold, record_fold)
    if appended.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        services.metrics.idempotent_replays.inc()
    else:
        services.metrics.context_posts.inc()
        services.metrics.context_points.inc(len(x))
    return ContextResult(num_points=appended.num_points, version=appended.version)


def _check_joint(body: Query, model: ServedModel, settings: Settings) -> None:
    """Joint outputs need a joint head, and their size is bounded (422 otherwise)."""
    if not (body.joint or body.num_samples is not None):
        return
    block = model.joint_block_size
    if block is None:
        raise UnprocessableError(
            f"model {model.name!r} has no joint head, so it cannot return covariances or joint samples; "
            "use a model whose joint_block_size is set in GET /v1/models (a CMANP-AND)"
        )
    m = len(body.x)
    limit = min(block, settings.max_joint_targets or block)
    if body.joint and m > limit:
        raise UnprocessableError(
            f"joint=true returns a covariance for at most {plural(limit, 'target')} (the model's block size or "
            f"CMANP_MAX_JOINT_TARGETS), got {m}; for more targets ask for joint sample paths with num_samples"
        )
    if body.num_samples is not None and body.num_samples * m > settings.max_sample_values:
        raise UnprocessableError(
            f"num_samples x targets = {body.num_samples} x {m} = {body.num_samples * m} exceeds the limit of "
            f"{settings.max_sample_values} (CMANP_MAX_SAMPLE_VALUES); ask for fewer samples or targets"
        )


@router.post("/{session_id}/predict", response_model=Prediction, response_model_exclude_none=True)
async def predict(session_id: str, body: Query, services: ServicesDep, tenant: TenantDep) -> OrjsonResponse:
    """Predictive mean and variance at the query points, given every point applied so far.

    ``joint`` adds the joint covariance, ``num_samples`` joint sample paths (models with a joint
    head). Sampling folds sampled values into in-memory copies only: the session never changes.
    """
    _check_count(len(body.x), services.settings.max_points_per_request)
    snapshot = await services.store.snapshot(session_id, tenant)
    session = snapshot.session
    model = services.registry.pinned(session.model, session.fingerprint)
    _check_joint(body, model, services.settings)
    x = _points(body, "x", session.x_transform)
    out = await services.inference.predict(model, snapshot, x, body.joint, body.num_samples, body.seed)
    y_map = out.y_transform
    warnings = model.training_range.query_warnings(x)
    if session.y_provisional:
        warnings.append(
            f"y_transform is auto and provisional: the mean and standard deviation of the {out.session.num_points} "
            f"points so far (fixed at the session's first fold, after {services.settings.fold_threshold_points} points)"
        )
    with np.errstate(over="ignore"):
        result = {
            "mean": y_map.mean_to_user(out.mean),
            "variance": y_map.variance_to_user(out.variance),
            "num_points": out.session.num_points,  # a concurrent predict's newer snapshot may have served it
            "version": out.session.version,
            "warnings": warnings,
        }
        if out.session.num_points == 0:
            result["warnings"].insert(0, PRIOR_WARNING)
        if out.covariance is not None:
            result["covariance"] = y_map.covariance_to_user(out.covariance)
        if out.samples is not None:
            result["samples"] = y_map.mean_to_user(out.samples)
    if not all(np.isfinite(result[k]).all() for k in ("mean", "variance", "covariance", "samples") if k in result):
        # JSON has no Inf or NaN; e.g. a huge y_transform.scale overflows the variance (scale squared).
        raise UnprocessableError("the prediction is not a finite number in this session's units (see its y_transform)")
    services.metrics.predictions.inc()
    services.metrics.predicted_points.inc(len(x))
    # Returned as numpy arrays straight to orjson: much faster than validating lists of floats.
    return OrjsonResponse(result)
