"""Python clients for the service: ``CMANPClient`` (blocking) and ``AsyncCMANPClient`` (asyncio), on httpx.

Results are typed dataclasses; points and predictions are numpy arrays (a 1-D array means one
feature per point). Failures come back as ``CMANPError`` carrying the problem details. Sessions of
regression models take points (``add_context``, ``predict``), sessions of event models take events
(``add_events``, ``forecast``).

Transient failures (connection errors, timeouts, 502/503/504, and 429 from the rate limit) are
retried with exponential backoff, honouring ``Retry-After``. Each ``add_context`` and ``add_events``
call generates one Idempotency-Key and sends it with every retry, so a retry whose first attempt
did reach the server applies nothing twice. ``create_session`` is only retried when the server
cannot have acted on the request (it could not be reached, or it answered 429 or 503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson
from numpy.typing import ArrayLike

RETRY_STATUSES = frozenset({429, 502, 503, 504})
NOT_APPLIED_STATUSES = frozenset({429, 503})  # the server refused before acting: safe to resend anything
T = TypeVar("T")


class CMANPError(Exception):
    """An error answer of the service (RFC 9457 problem details)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail = status, title, detail


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    model_fingerprint: str
    dim_x: int
    dim_y: int
    num_points: int
    version: int
    state_bytes: int
    ttl_seconds: int
    created_at: str
    expires_at: str
    x_transform: dict[str, list[float]]
    y_transform: dict[str, list[float]]
    out_of_range_fraction: float
    calibration: dict[str, Any]  # status, coverage, PIT histogram, ... (see the API docs)
    y_scaling: str = "given"  # or "auto-provisional" / "auto-fixed" ("y_transform": "auto")
    kind: str = "regression"


@dataclass(frozen=True)
class EventSessionInfo:
    session_id: str
    model: str
    model_fingerprint: str
    num_events: int
    version: int
    state_bytes: int
    ttl_seconds: int
    created_at: str
    expires_at: str
    time_origin: float
    time_scale: float  # user time units per model time unit
    num_marks: int
    last_time: float | None  # the latest event time posted; None before the first
    calibration: dict[str, Any]  # status, PIT histogram, compensator, marks, ... (see the API docs)
    kind: str = "events"


@dataclass(frozen=True)
class ContextResult:
    num_points: int
    version: int  # context posts applied to the session so far
    replayed: bool  # the server had seen this Idempotency-Key: nothing was applied


@dataclass(frozen=True)
class EventsResult:
    num_events: int
    version: int  # event posts applied to the session so far
    last_time: float  # the session's latest event time
    replayed: bool  # the server had seen this Idempotency-Key: nothing was applied


@dataclass(frozen=True)
class EventForecast:
    """The next event after ``now`` (user units); with a horizon, the expected events in it."""

    now: float
    last_time: float | None
    num_events: int
    version: int
    quantiles: np.ndarray  # [Q] levels
    wait_quantiles: np.ndarray  # [Q] waiting times from now
    mean_wait: float
    mark_probabilities: np.ndarray  # [num_marks]
    warnings: list[str]
    horizon: float | None = None
    expected_events: float | None = None  # in (now, now + horizon], from count_samples sampled futures
    expected_events_std_error: float | None = None
    count_samples: int | None = None
    seed: int | None = None
    samples: list[tuple[np.ndarray, np.ndarray]] | None = None  # (times, marks) per sampled future


@dataclass(frozen=True)
class Prediction:
    mean: np.ndarray  # [m, dim_y], user units
    variance: np.ndarray  # [m, dim_y]
    num_points: int
    version: int
    warnings: list[str]  # e.g. queries outside the model's training input range
    covariance: np.ndarray | None = None  # [dim_y, m, m], asked for with joint=True
    samples: np.ndarray | None = None  # [S, m, dim_y] joint sample paths, asked for with num_samples=S


@dataclass(frozen=True)
class ModelInfo:
    name: str
    fingerprint: str
    dim_x: int | None  # dim_x, dim_y and x_range: regression models only
    dim_y: int | None
    x_range: tuple[float, float] | None
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    default: bool
    joint_block_size: int | None = None  # set for models with a joint head (covariances, samples)
    y_transform_default: str | None = None  # "auto": sessions without a y_transform scale themselves
    session_kind: str = "regression"  # or "events"
    num_marks: int | None = None  # event models: marks 0..num_marks-1


def _from_json(cls: type[T], data: dict[str, Any]) -> T:
    """Build a result dataclass, ignoring fields a newer server may add."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _points(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    array = array[:, None] if array.ndim == 1 else array
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D [points, features], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class _Call:
    """One API request, as data: both clients send it, retrying as its kind allows."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True  # safe to resend even if the first attempt may have been applied

    def content(self) -> bytes | None:
        return None if self.body is None else orjson.dumps(self.body, option=orjson.OPT_SERIALIZE_NUMPY)


# ---- requests and results, shared by both clients ------------------------------------------------


def _create_call(**fields: Any) -> _Call:
    return _Call("POST", "/v1/sessions", {k: v for k, v in fields.items() if v is not None}, idempotent=False)


def _context_call(session_id: str, x: ArrayLike, y: ArrayLike, idempotency_key: str | None) -> _Call:
    body = {"x": _points(x, "x"), "y": _points(y, "y")}
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    return _Call("POST", f"/v1/sessions/{session_id}/context", body, headers)


def _events_call(session_id: str, times: ArrayLike, marks: ArrayLike, idempotency_key: str | None) -> _Call:
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if not np.isfinite(t).all():
        raise ValueError("times contains NaN or Inf")
    body = {"times": t, "marks": np.asarray(marks, dtype=np.int64).reshape(-1)}
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    return _Call("POST", f"/v1/sessions/{session_id}/events", body, headers)


def _forecast_call(session_id: str, **fields: Any) -> _Call:
    body = {k: v for k, v in fields.items() if v is not None}
    return _Call("POST", f"/v1/sessions/{session_id}/forecast", body)


def _predict_call(session_id: str, x: ArrayLike, joint: bool, num_samples: int | None, seed: int | None) -> _Call:
    body: dict[str, Any] = {"x": _points(x, "x")}
    if joint:
        body["joint"] = True
    body.update({k: v for k, v in (("num_samples", num_samples), ("seed", seed)) if v is not None})
    return _Call("POST", f"/v1/sessions/{session_id}/predict", body)


def _session(response: httpx.Response) -> SessionInfo | EventSessionInfo:
    data = response.json()
    return _from_json(EventSessionInfo if data.get("kind") == "events" else SessionInfo, data)


def _context_result(response: httpx.Response) -> ContextResult:
    data = response.json()
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    return ContextResult(data["num_points"], data["version"], replayed)


def _events_result(response: httpx.Response) -> EventsResult:
    data = response.json()
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    return EventsResult(data["num_events"], data["version"], data["last_time"], replayed)


def _event_forecast(response: httpx.Response) -> EventForecast:
    data = response.json()
    arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("quantiles", "wait_quantiles", "mark_probabilities")}
    samples = data.get("samples")
    if samples is not None:
        data["samples"] = [
            (np.asarray(s["times"], dtype=np.float64), np.asarray(s["marks"], np.int64)) for s in samples
        ]
    return _from_json(EventForecast, data | arrays)


def _prediction(response: httpx.Response) -> Prediction:
    data = response.json()
    covariance, samples = (
        None if data.get(k) is None else np.asarray(data[k], dtype=np.float64) for k in ("covariance", "samples")
    )
    mean, variance = np.asarray(data["mean"], dtype=np.float64), np.asarray(data["variance"], dtype=np.float64)
    return Prediction(mean, variance, data["num_points"], data["version"], data["warnings"], covariance, samples)


def _models(response: httpx.Response) -> list[ModelInfo]:
    return [_from_json(ModelInfo, m) for m in response.json()["models"]]


def _checked(outcome: httpx.Response | httpx.TransportError) -> httpx.Response:
    if isinstance(outcome, httpx.TransportError):
        raise outcome
    if outcome.is_success:
        return outcome
    try:
        problem = outcome.json()
        raise CMANPError(outcome.status_code, problem["title"], problem["detail"])
    except (ValueError, KeyError, TypeError):
        raise CMANPError(outcome.status_code, outcome.reason_phrase, outcome.text) from None


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff: float = 0.1  # seconds before the first retry; doubles each time
    max_backoff: float = 5.0

    def delay(self, attempt: int, call: _Call, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before retrying ``call`` after ``outcome`` of attempt ``attempt`` (0-based); None: stop."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            # A connect error means the request never left; anything later may have been applied.
            if not (call.idempotent or isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)):
                return None
            retry_after = 0.0
        elif outcome.status_code in RETRY_STATUSES and (call.idempotent or outcome.status_code in NOT_APPLIED_STATUSES):
            header = outcome.headers.get("Retry-After", "")
            retry_after = float(header) if header.isdigit() else 0.0
        else:
            return None
        return min(self.max_backoff, max(retry_after, self.backoff * 2**attempt))


def _http_options(api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"headers": headers, "timeout": timeout}


class CMANPClient:
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing the default is safe
    ) -> None:
        self._http = httpx.Client(base_url=base_url, **_http_options(api_key, timeout))
        self.retry = retry

    def _send(self, call: _Call) -> httpx.Response:
        content = call.content()
        for attempt in range(self.retry.retries + 1):
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    call.method, call.path, content=content, headers=call.headers
                )
            except httpx.TransportError as e:
                outcome = e
            delay = self.retry.delay(attempt, call, outcome)
            if delay is None:
                break
            time.sleep(delay)
        return _checked(outcome)

    def create_session(
        self,
        model: str | None = None,
        x_transform: dict[str, Any] | None = None,
        y_transform: dict[str, Any] | str | None = None,
        ttl_seconds: int | None = None,
        *,
        time_origin: float | None = None,
        time_scale: float | None = None,
    ) -> SessionInfo | EventSessionInfo:
        """A session of the kind ``model`` serves: x/y transforms for regression, the clock for events."""
        call = _create_call(
            model=model,
            x_transform=x_transform,
            y_transform=y_transform,
            ttl_seconds=ttl_seconds,
            time_origin=time_origin,
            time_scale=time_scale,
        )
        return _session(self._send(call))

    def add_context(
        self, session_id: str, x: ArrayLike, y: ArrayLike, idempotency_key: str | None = None
    ) -> ContextResult:
        return _context_result(self._send(_context_call(session_id, x, y, idempotency_key)))

    def predict(
        self,
        session_id: str,
        x: ArrayLike,
        joint: bool = False,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> Prediction:
        """Mean and variance at x; ``joint`` adds the covariance, ``num_samples`` joint sample paths
        (``seed`` makes them reproducible). Both need a model with a joint head."""
        return _prediction(self._send(_predict_call(session_id, x, joint, num_samples, seed)))

    def add_events(
        self, session_id: str, times: ArrayLike, marks: ArrayLike, idempotency_key: str | None = None
    ) -> EventsResult:
        """Post events (times non-decreasing, none before the session's last event; 409 otherwise)."""
        return _events_result(self._send(_events_call(session_id, times, marks, idempotency_key)))

    def forecast(
        self,
        session_id: str,
        now: float | None = None,
        quantiles: ArrayLike | None = None,
        horizon: float | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> EventForecast:
        """The next event after ``now`` (default: the last event); with ``horizon``, the expected number of
        events in (now, now + horizon]; with ``num_samples``, sampled futures (``seed``: reproducible)."""
        q = None if quantiles is None else np.asarray(quantiles, dtype=np.float64).reshape(-1)
        call = _forecast_call(session_id, now=now, quantiles=q, horizon=horizon, num_samples=num_samples, seed=seed)
        return _event_forecast(self._send(call))

    def get_session(self, session_id: str) -> SessionInfo | EventSessionInfo:
        return _session(self._send(_Call("GET", f"/v1/sessions/{session_id}")))

    def delete_session(self, session_id: str) -> None:
        self._send(_Call("DELETE", f"/v1/sessions/{session_id}"))

    def models(self) -> list[ModelInfo]:
        return _models(self._send(_Call("GET", "/v1/models")))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CMANPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncCMANPClient:
    """asyncio client with the same methods as ``CMANPClient``, as coroutines."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing the default is safe
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, **_http_options(api_key, timeout))
        self.retry = retry

    async def _send(self, call: _Call) -> httpx.Response:
        content = call.content()
        for attempt in range(self.retry.retries + 1):
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    call.method, call.path, content=content, headers=call.headers
                )
            except httpx.TransportError as e:
                outcome = e
            delay = self.retry.delay(attempt, call, outcome)
            if delay is None:
                break
            await asyncio.sleep(delay)
        return _checked(outcome)

    async def create_session(
        self,
        model: str | None = None,
        x_transform: dict[str, Any] | None = None,
        y_transform: dict[str, Any] | str | None = None,
        ttl_seconds: int | None = None,
        *,
        time_origin: float | None = None,
        time_scale: float | None = None,
    ) -> SessionInfo | EventSessionInfo:
        """See ``CMANPClient.create_session``."""
        call = _create_call(
            model=model,
            x_transform=x_transform,
            y_transform=y_transform,
            ttl_seconds=ttl_seconds,
            time_origin=time_origin,
            time_scale=time_scale,
        )
        return _session(await self._send(call))

    async def add_context(
        self, session_id: str, x: ArrayLike, y: ArrayLike, idempotency_key: str | None = None
    ) -> ContextResult:
        return _context_result(await self._send(_context_call(session_id, x, y, idempotency_key)))

    async def predict(
        self,
        session_id: str,
        x: ArrayLike,
        joint: bool = False,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> Prediction:
        """See ``CMANPClient.predict``."""
        return _prediction(await self._send(_predict_call(session_id, x, joint, num_samples, seed)))

    async def add_events(
        self, session_id: str, times: ArrayLike, marks: ArrayLike, idempotency_key: str | None = None
    ) -> EventsResult:
        """See ``CMANPClient.add_events``."""
        return _events_result(await self._send(_events_call(session_id, times, marks, idempotency_key)))

    async def forecast(
        self,
        session_id: str,
        now: float | None = None,
        quantiles: ArrayLike | None = None,
        horizon: float | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> EventForecast:
        """See ``CMANPClient.forecast``."""
        q = None if quantiles is None else np.asarray(quantiles, dtype=np.float64).reshape(-1)
        call = _forecast_call(session_id, now=now, quantiles=q, horizon=horizon, num_samples=num_samples, seed=seed)
        return _event_forecast(await self._send(call))

    async def get_session(self, session_id: str) -> SessionInfo | EventSessionInfo:
        return _session(await self._send(_Call("GET", f"/v1/sessions/{session_id}")))

    async def delete_session(self, session_id: str) -> None:
        await self._send(_Call("DELETE", f"/v1/sessions/{session_id}"))

    async def models(self) -> list[ModelInfo]:
        return _models(await self._send(_Call("GET", "/v1/models")))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCMANPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
