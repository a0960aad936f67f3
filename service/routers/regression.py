"""The routes of regression sessions (``service.kinds.regression``): post context points, predict.

Points travel in the user's units; each session's transforms map them into the model's units
(``service.transforms``). Predictions come back in user units. A session of another kind gets 409
from these routes, and nothing changes.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Response

from service.calibration import Calibration
from service.dependencies import ServicesDep, TenantDep
from service.errors import UnprocessableError
from service.kinds.base import require_kind
from service.kinds.regression import NAME, REGRESSION, Points, Predict, Predicted, RegressionParams
from service.kinds.regression_calibration import Scores
from service.registry import ServedModel
from service.routers import API_PREFIX, PROBLEM_RESPONSES
from service.routers.posts import IdempotencyKey, append, check_count
from service.schemas import (
    Affine,
    AffineOut,
    Bounds,
    Context,
    ContextResult,
    CreateSession,
    OrjsonResponse,
    Prediction,
    Query,
    SessionInfo,
)
from service.settings import Settings
from service.store import Fold, Session, Snapshot
from service.text import plural
from service.transforms import AffineMap, affine_map, bounds_map

PRIOR_WARNING = "no context yet: this is the model's prior"

router = APIRouter(
    prefix=f"{API_PREFIX}/sessions",
    tags=["sessions"],
    responses=PROBLEM_RESPONSES,
)


# ---- what the common session routes ask of the kind ---------------------------------------------
def _x_map(spec: Affine | Bounds | None, model: ServedModel) -> AffineMap:
    if spec is None:
        return AffineMap.identity(model.dim_x)
    if isinstance(spec, Bounds):
        return bounds_map(spec.low, spec.high, model.dim_x, model.net.cfg.x_range)
    return affine_map(spec.shift, spec.scale, model.dim_x, "x_transform")


def session_params(body: CreateSession, model: ServedModel) -> dict[str, str]:
    """A new session's unit maps: as given, or the model's default for y (``"auto"``: scaled from the
    session's own points, with the identity as a placeholder until its first fold)."""
    y_spec = body.y_transform if body.y_transform is not None else model.y_transform_default
    auto = y_spec == "auto"
    x_map = _x_map(body.x_transform, model)
    y_map = AffineMap.identity(model.dim_y)
    if isinstance(y_spec, Affine):
        y_map = affine_map(y_spec.shift, y_spec.scale, model.dim_y, "y_transform")
    return RegressionParams(x_map, y_map, y_auto=auto, y_fixed=not auto).to_fields()


def describe(model: ServedModel) -> dict[str, Any]:
    """A regression model's fields in GET /v1/models: its dimensions, training range and heads."""
    return {
        "dim_x": model.dim_x,
        "dim_y": model.dim_y,
        "x_range": model.training_range.x,
        "y_range": model.training_range.y,
        "y_transform_default": model.y_transform_default,
        "joint_block_size": model.joint_block_size,
    }


def _affine_out(t: AffineMap) -> AffineOut:
    return AffineOut(shift=t.shift.tolist(), scale=t.scale.tolist())


def _y_scaling(params: RegressionParams) -> str:
    return "given" if not params.y_auto else "auto-provisional" if params.y_provisional else "auto-fixed"


def info(
    common: dict[str, Any],
    session: Session,
    calibration: Calibration,
    scoring: bool,
    model: ServedModel | None,
    snapshot: Snapshot | None,
) -> SessionInfo:
    """The session as GET describes it: its unit maps (the y map it is served with), its
    out-of-range fraction and its calibration."""
    scores = cast(Scores, calibration)
    params = REGRESSION.params(session)
    y_map = params.y_transform
    if model is not None and snapshot is not None:
        y_map = REGRESSION.y_map(model, snapshot)
    num_points = session.num_points
    return SessionInfo(
        **common,
        dim_x=params.dim_x,
        dim_y=params.dim_y,
        x_transform=_affine_out(params.x_transform),
        y_transform=_affine_out(y_map),
        y_scaling=_y_scaling(params),
        out_of_range_fraction=scores.out_of_range / num_points if num_points else 0.0,
        calibration=scores.report(enabled=scoring),
    )


# ---- the kind's own routes ----------------------------------------------------------------------
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
    check_count(len(body.x), "point", services)
    session = await services.store.fixed(session_id, tenant)  # counters not read here: the append returns them
    require_kind(session, NAME, "POST context")
    model = services.registry.pinned(session.model, session.fingerprint)
    entry = REGRESSION.encode(REGRESSION.params(session), Points(body.x, body.y, body.flat_fields))

    def record_fold(fold: Fold) -> None:
        services.metrics.record_fold(model.name, REGRESSION.calibration(fold.sums).forecast)

    appended = await append(services, REGRESSION, model, session, entry, idempotency_key, response, record_fold)
    if not appended.replayed:
        services.metrics.context_posts.inc()
        services.metrics.context_points.inc(entry.points)
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
    check_count(len(body.x), "point", services)
    snapshot = await services.store.snapshot(session_id, tenant)
    session = snapshot.session
    require_kind(session, NAME, "POST predict")
    model = services.registry.pinned(session.model, session.fingerprint)
    _check_joint(body, model, services.settings)
    params = REGRESSION.params(session)
    x = REGRESSION.query_points(params, body.x, body.flat_fields)
    query = Predict(snapshot, x, body.joint, body.num_samples, body.seed)
    out: Predicted = await services.inference.answer(REGRESSION, model, query, batched=query.marginal)
    y_map = out.y_transform
    warnings = model.training_range.query_warnings(x)
    if params.y_provisional:
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
