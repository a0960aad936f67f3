"""What goes over the wire: request and response bodies, and the orjson response class.

Request models check what can be checked without knowing the session: finite numbers (no NaN or
Inf, no strings or booleans), rectangular non-empty point arrays, matching point counts. Checks
that need the session's model (feature dimensions, point limits) happen in the routers.

Fields that take one of two shapes (a number or a list of them; a list of points or a flat list)
pick the shape from the value itself (``Discriminator``), so a value that fits neither is
reported against the shape it was meant to have, with the one constraint it broke, rather than
once per shape. The shape's tag is dropped from error locations (``BRANCH_TAGS``, service.problems).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator

from service.text import plural

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]

# The tags of the two-shape fields below; error locations leave them out (service.problems).
BRANCH_TAGS = frozenset({"number", "list", "points", "flat", "affine", "bounds"})


def _number_or_list(value: Any) -> str:
    return "list" if isinstance(value, list) else "number"


def _points_or_flat(value: Any) -> str:
    # A flat list is a non-empty list whose first item is no list; anything else is judged as points.
    return "flat" if isinstance(value, list) and value and not isinstance(value[0], list) else "points"


def _number_or_list_of(number: Any) -> Any:
    """``number | list[number]``, validated as the shape the value has (one error, not one per shape)."""
    return Annotated[
        Annotated[number, Tag("number")] | Annotated[list[number], Tag("list")], Discriminator(_number_or_list)
    ]


FiniteFloats = _number_or_list_of(FiniteFloat)  # one for every dimension, or one per dimension
PositiveFloats = _number_or_list_of(PositiveFloat)


Points = Annotated[
    Annotated[list[list[FiniteFloat]], Tag("points")] | Annotated[list[FiniteFloat], Tag("flat")],
    Discriminator(_points_or_flat),
    Field(
        description="one row per point, one column per feature: [[x1, x2], ...]; a flat list [x, ...] is one "
        "point per number, for a model with one feature (dim_x or dim_y 1)"
    ),
]


class OrjsonResponse(JSONResponse):
    """JSON via orjson: fast, and serialises numpy arrays directly (predictions are returned as arrays)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _check_points(points: list[list[float]], name: str) -> None:
    if not points:
        raise ValueError(f"{name} is empty; send at least one point")
    width = len(points[0])
    if width == 0:
        raise ValueError(f"{name} has points with no features")
    ragged = next((i for i, row in enumerate(points) if len(row) != width), None)
    if ragged is not None:
        raise ValueError(
            f"{name} is ragged: row 0 has {plural(width, 'feature')}, row {ragged} has {len(points[ragged])}"
        )


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PointsBody(Body):
    """A body with point fields: flat lists become one point per number, and are remembered as flat,
    since a flat list only fits a dimension of one feature (checked by the router against the model)."""

    _flat: frozenset[str] = PrivateAttr(frozenset())

    def as_points(self, *names: str) -> None:
        """Turn the flat lists among ``names`` into one point per number (subclasses' validators call it)."""
        flat = {name for name in names if getattr(self, name) and not isinstance(getattr(self, name)[0], list)}
        for name in flat:
            setattr(self, name, [[value] for value in getattr(self, name)])
        self._flat = frozenset(flat)

    @property
    def flat_fields(self) -> frozenset[str]:
        """The fields sent as a flat list."""
        return self._flat


# ---- transforms ---------------------------------------------------------------------------------


class Affine(Body):
    """model = (user - shift) / scale, per dimension; a number applies to every dimension."""

    shift: FiniteFloats = 0.0
    scale: PositiveFloats = Field(1.0, description="> 0")


class Bounds(Body):
    """User-unit bounds [low, high] per x dimension, mapped onto the model's training range."""

    low: FiniteFloats
    high: FiniteFloats


def _affine_or_bounds(value: Any) -> str:
    return "bounds" if isinstance(value, dict) and ("low" in value or "high" in value) else "affine"


XTransform = Annotated[
    Annotated[Affine, Tag("affine")] | Annotated[Bounds, Tag("bounds")],
    Discriminator(_affine_or_bounds),
    Field(description="{shift, scale}, or {low, high} (bounds when either of those is given)"),
]


def _affine_or_auto(value: Any) -> str:
    return "auto" if isinstance(value, str) else "affine"


YTransform = Annotated[
    Annotated[Affine, Tag("affine")] | Annotated[Literal["auto"], Tag("auto")],
    Discriminator(_affine_or_auto),
    Field(
        description='{shift, scale}, or "auto": scaled from the session\'s own points (fixed at its first fold); '
        "default: the model's (GET /v1/models: y_transform_default), else the identity"
    ),
]


class AffineOut(BaseModel):
    shift: list[float]
    scale: list[float]


# ---- sessions -----------------------------------------------------------------------------------


class CreateSession(Body):
    """A new session of the kind its model serves; each kind takes its own parameters (regression:
    x_transform, y_transform; events: time_origin, time_scale), and refuses the others'."""

    model: str | None = Field(None, description="a name from GET /v1/models; default: the default model")
    x_transform: XTransform | None = None
    y_transform: YTransform | None = None
    time_origin: FiniteFloat | None = Field(
        None, description="event sessions: the user time that is the model's time 0 (e.g. an epoch second); default 0"
    )
    time_scale: PositiveFloat | None = Field(
        None, description="event sessions: user time units per model time unit; default 1"
    )
    ttl_seconds: int | None = Field(None, ge=1, description="idle expiry; default: CMANP_SESSION_TTL_SECONDS")


class ScoreReport(BaseModel):
    """Figures of one set of held-out scores (see ``service.calibration``), in model units."""

    status: Literal["ok", "insufficient_data", "miscalibrated"]
    reasons: list[str] = Field(description="why the status is miscalibrated; empty otherwise")
    scored_points: int = Field(description="points scored by a state that did not contain them")
    mean_log_density: float | None = Field(description="mean log predictive density per point")
    standardised_residual_mean: float | None = Field(description="of z = (y - mean) / std; calibrated: 0")
    standardised_residual_variance: float | None = Field(description="of z; calibrated: 1")
    coverage: dict[str, float] = Field(description="fraction of values inside the central 50%, 90%, 95% intervals")
    pit_histogram: list[int] = Field(description="counts of PIT = Phi(z) in 10 equal bins of [0, 1]; calibrated: flat")


class CalibrationReport(ScoreReport):
    """The session's calibration: the interpolation scores (each point by a state holding the other
    points around it), with the one-step-ahead forecast scores beside them; ``status`` is
    ``miscalibrated`` when either is."""

    enabled: bool = Field(description="whether this server scores points (CMANP_CALIBRATION)")
    forecast: ScoreReport = Field(description="each point scored by the state of the points before it")


class SessionInfo(BaseModel):
    kind: Literal["regression"] = "regression"
    session_id: str
    model: str
    model_fingerprint: str
    dim_x: int
    dim_y: int
    num_points: int
    version: int = Field(description="number of context posts applied")
    state_bytes: int
    ttl_seconds: int
    created_at: str
    expires_at: str
    x_transform: AffineOut
    y_transform: AffineOut
    y_scaling: Literal["given", "auto-provisional", "auto-fixed"] = Field(
        description="how y_transform was set: by the creator, or from the session's points (provisional until "
        "the first fold, then fixed)"
    )
    out_of_range_fraction: float = Field(
        description="fraction of the points whose x or y lies outside the model's training range (model units)"
    )
    calibration: CalibrationReport


class EventCalibrationReport(BaseModel):
    """An event session's calibration: each event (but the first) scored by the forecast made at the
    event before it (docs/SERVICE.md, "Event sessions")."""

    enabled: bool = Field(description="whether this server scores events (CMANP_CALIBRATION)")
    status: Literal["ok", "insufficient_data", "miscalibrated"]
    reasons: list[str] = Field(description="why the status is miscalibrated; empty otherwise")
    scored_events: int
    mean_log_likelihood: float | None = Field(description="per event, of its wait and mark (model time units)")
    mean_mark_log_likelihood: float | None
    mean_compensator: float | None = Field(description="mean time-rescaled wait -log(1 - PIT); calibrated: 1")
    pit_mean: float | None = Field(description="of the waits' PITs; calibrated: 0.5")
    pit_variance: float | None = Field(description="of the waits' PITs; calibrated: 1/12 = 0.0833")
    pit_histogram: list[int] = Field(
        description="counts of the waits' PITs in 10 equal bins of [0, 1]; calibrated: flat"
    )
    pit_serial_correlation: float | None = Field(
        description="lag-1 correlation of consecutive waits' PITs; calibrated: 0 (independent)"
    )
    mark_observed: list[int] = Field(description="scored events per mark")
    mark_expected: list[float] = Field(description="per mark, the sum of its forecast probabilities")


class EventSessionInfo(BaseModel):
    kind: Literal["events"] = "events"
    session_id: str
    model: str
    model_fingerprint: str
    num_points: int = Field(description="events applied (the same as num_events)")
    num_events: int
    version: int = Field(description="number of event posts applied")
    state_bytes: int
    ttl_seconds: int
    created_at: str
    expires_at: str
    time_origin: float
    time_scale: float
    num_marks: int = Field(description="marks are 0..num_marks-1")
    last_time: float | None = Field(description="the latest event time posted (user units); null before the first")
    calibration: EventCalibrationReport


AnySessionInfo = Annotated[SessionInfo | EventSessionInfo, Field(discriminator="kind")]


class Events(Body):
    times: list[FiniteFloat] = Field(
        min_length=1, description="event times in the session's units, non-decreasing, none before its last event"
    )
    marks: list[Annotated[int, Field(strict=True)]] = Field(description="one mark per event, 0..num_marks-1")

    @model_validator(mode="after")
    def _same_length(self) -> Events:
        if len(self.times) != len(self.marks):
            raise ValueError(f"times has {plural(len(self.times), 'event')} but marks has {len(self.marks)}")
        return self


class EventsResult(BaseModel):
    num_events: int
    version: int
    last_time: float = Field(description="the latest event time of the session (user units)")


Probability = Annotated[float, Field(strict=True, gt=0, lt=1)]


class ForecastQuery(Body):
    now: FiniteFloat | None = Field(
        None, description="when the forecast is made (user units), at or after the last event; default: the last event"
    )
    quantiles: list[Probability] = Field(
        [0.05, 0.5, 0.95], min_length=1, max_length=99, description="levels of the waiting-time quantiles"
    )
    horizon: PositiveFloat | None = Field(
        None, description="also estimate the number of events in (now, now + horizon] from sampled futures"
    )
    num_samples: int | None = Field(
        None, strict=True, ge=1, description="also return this many sampled futures up to the horizon (needs horizon)"
    )
    seed: int | None = Field(
        None, strict=True, ge=0, lt=2**63, description="seed of the sampled futures, for reproducible draws"
    )

    @model_validator(mode="after")
    def _sampling_needs_a_horizon(self) -> ForecastQuery:
        for name in ("num_samples", "seed"):
            if getattr(self, name) is not None and self.horizon is None:
                raise ValueError(f"{name} is only used with horizon")
        return self


class SampledEvents(BaseModel):
    times: list[float]
    marks: list[int]


class EventForecast(BaseModel):
    now: float
    last_time: float | None
    num_events: int
    version: int
    quantiles: list[float]
    wait_quantiles: list[float] = Field(description="waiting times from now (user units) at the quantile levels")
    mean_wait: float
    mark_probabilities: list[float] = Field(description="of the next event's mark, 0..num_marks-1")
    horizon: float | None = None
    expected_events: float | None = Field(None, description="mean number of sampled events in (now, now + horizon]")
    expected_events_std_error: float | None = Field(None, description="its Monte-Carlo standard error")
    count_samples: int | None = Field(None, description="the number of sampled futures behind expected_events")
    seed: int | None = Field(None, description="the seed of the sampled futures (reuse it to draw them again)")
    samples: list[SampledEvents] | None = Field(None, description="num_samples only: sampled futures")
    warnings: list[str]


class Context(PointsBody):
    x: Points
    y: Points

    @model_validator(mode="after")
    def _rectangular(self) -> Context:
        self.as_points("x", "y")
        _check_points(self.x, "x")
        _check_points(self.y, "y")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {plural(len(self.x), 'point')} but y has {len(self.y)}")
        return self


class ContextResult(BaseModel):
    num_points: int
    version: int


class Query(PointsBody):
    x: Points
    joint: bool = Field(
        False,
        strict=True,
        description="also return the joint covariance of the targets (models with a joint head; at most "
        "CMANP_MAX_JOINT_TARGETS targets, by default the model's block size b_Q)",
    )
    num_samples: int | None = Field(
        None,
        strict=True,
        ge=1,
        description="also return this many joint sample paths (models with a joint head; any number of "
        "targets, num_samples x targets at most CMANP_MAX_SAMPLE_VALUES)",
    )
    seed: int | None = Field(
        None, strict=True, ge=0, lt=2**63, description="seed of the sample paths, for reproducible draws"
    )

    @model_validator(mode="after")
    def _rectangular(self) -> Query:
        self.as_points("x")
        _check_points(self.x, "x")
        if self.seed is not None and self.num_samples is None:
            raise ValueError("seed is only used with num_samples")
        return self


class Prediction(BaseModel):
    mean: list[list[float]] = Field(description="[m][dim_y]; with joint=true, the joint head's mean")
    variance: list[list[float]] = Field(description="[m][dim_y]; with joint=true, the covariance's diagonal")
    covariance: list[list[list[float]]] | None = Field(
        None, description="joint=true only: [dim_y][m][m], one covariance matrix of the m targets per output dim"
    )
    samples: list[list[list[float]]] | None = Field(
        None, description="num_samples only: [num_samples][m][dim_y] joint sample paths"
    )
    num_points: int
    version: int
    warnings: list[str] = Field(description="e.g. queries outside the model's training input range")


# ---- models and errors --------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str
    fingerprint: str
    session_kind: str = Field(description="the kind of session the model serves: regression or events")
    config: dict[str, Any]
    metrics: dict[str, Any] | None = Field(description="headline eval numbers from the model card, if any")
    default: bool
    # regression models
    dim_x: int | None = None
    dim_y: int | None = None
    x_range: tuple[float, float] | None = Field(None, description="training input range (regression models)")
    y_range: tuple[float, float] | None = Field(
        None, description="training output range (model card); None: not stated, or not a regression model"
    )
    y_transform_default: str | None = Field(
        None, description='"auto": sessions that give no y_transform are scaled from their own points; null: identity'
    )
    joint_block_size: int | None = Field(
        None, description="targets per joint block (b_Q) of a model with a joint head (joint, num_samples); else null"
    )
    # event models
    num_marks: int | None = Field(None, description="event models: marks are 0..num_marks-1")


class ModelList(BaseModel):
    default_model: str
    models: list[ModelInfo]


class Problem(BaseModel):
    type: str
    title: str
    detail: str
    status: int
