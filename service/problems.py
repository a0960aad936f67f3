"""Errors as RFC 9457 problem details: ``{type, title, detail, status}``, media type application/problem+json.

Handlers raise a ``ServiceError`` subclass (``service.errors``), whose class gives the status.
Request validation errors become 422 (400 for malformed JSON, 415 for a body not sent as JSON),
Redis outages become 503 with ``Retry-After``, and anything unexpected is logged and becomes a
bare 500 that leaks nothing.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError, UnavailableError
from service.schemas import BRANCH_TAGS, OrjsonResponse

logger = logging.getLogger(__name__)

MAX_REPORTED_VALIDATION_ERRORS = 5


class ProblemResponse(OrjsonResponse):
    media_type = "application/problem+json"


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> ProblemResponse:
    # type "about:blank" means the status code says it all; the title is then its phrase (RFC 9457 4.2.1).
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "detail": detail, "status": status}
    return ProblemResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[int | str, ...]) -> str:
    """``body.x.1``: the path to the bad value, without the tags of two-shape fields (service.schemas)."""
    return ".".join(str(part) for part in loc if part not in BRANCH_TAGS)


def _format_validation_errors(exc: RequestValidationError) -> str:
    errors = exc.errors()
    parts = [f"{_location(e['loc'])}: {e['msg']}" for e in errors[:MAX_REPORTED_VALIDATION_ERRORS]]
    more = len(errors) - MAX_REPORTED_VALIDATION_ERRORS
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def _service_error(_: Request, exc: ServiceError) -> ProblemResponse:
    return problem(exc.status, exc.detail, exc.headers)


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is one FastAPI parses as JSON: application/json or application/*+json."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def _validation_error(request: Request, exc: RequestValidationError) -> ProblemResponse:
    errors = exc.errors()
    malformed = [e for e in errors if e["type"] == "json_invalid"]
    if malformed:
        return problem(400, f"malformed JSON body: {malformed[0].get('ctx', {}).get('error', 'cannot parse')}")
    content_type = request.headers.get("content-type")
    if any(e["loc"][:1] == ("body",) for e in errors) and not is_json(content_type):
        # FastAPI reads a body as JSON only when the header says so; otherwise every field looks missing.
        sent = f"this request's was {content_type!r}" if content_type else "this request had none"
        return problem(415, f"the body must be JSON, sent with the header 'Content-Type: application/json' ({sent})")
    return problem(422, _format_validation_errors(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> ProblemResponse:
    return problem(exc.status_code, str(exc.detail), exc.headers)


async def _redis_unavailable(_: Request, exc: Exception) -> ProblemResponse:
    logger.warning("redis unavailable: %s", exc)
    return problem(503, "the session store (Redis) is unavailable; retry shortly", UnavailableError.headers)


async def _redis_error(request: Request, exc: Exception) -> ProblemResponse:
    # Redis refuses a write past maxmemory (noeviction) before it changes anything: a script is
    # stopped at its first write, so the request changed nothing and can be retried once there is
    # room. Inside a script that refusal arrives as a plain ResponseError, hence the text match.
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in str(exc):
        logger.warning("redis out of memory: %s", exc)
        return problem(
            507,
            "the session store (Redis) is out of memory; nothing was changed. Retry later, "
            "or delete sessions you no longer need",
            UnavailableError.headers,
        )
    return await _unexpected(request, exc)


async def _unexpected(_: Request, exc: Exception) -> ProblemResponse:
    logger.exception("unhandled error", exc_info=exc)
    return problem(500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # BusyLoadingError (Redis still loading its AOF) is a ConnectionError.
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_unavailable)
    app.add_exception_handler(redis.exceptions.ClusterDownError, _redis_unavailable)  # slots not served
    app.add_exception_handler(redis.exceptions.ResponseError, _redis_error)
    app.add_exception_handler(Exception, _unexpected)
