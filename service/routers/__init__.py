"""One APIRouter per resource: health (and metrics), models, sessions, the demo page and the API docs.

The version prefix is part of each router's own prefix, so that a route's path (used as the
metrics label and in Location headers) is its full public path.
"""

from http import HTTPStatus

from service.schemas import Problem

API_PREFIX = "/v1"


def _header(description: str) -> dict:
    return {"description": description, "schema": {"type": "string"}}


def _problem(status: int, description: str | None = None, headers: dict | None = None) -> dict:
    # The schema inline under application/problem+json: FastAPI's "model" would file it under application/json.
    answer = {
        "description": description or HTTPStatus(status).phrase,
        "content": {"application/problem+json": {"schema": Problem.model_json_schema()}},
    }
    return answer | ({"headers": headers} if headers else {})


RETRY_AFTER = {"Retry-After": _header("whole seconds to wait before retrying")}
# The error answers every /v1 route may give, for the OpenAPI docs (see service.problems).
PROBLEM_RESPONSES: dict[int | str, dict] = {
    400: _problem(400, "malformed JSON"),
    401: _problem(401, "missing or unknown API key", {"WWW-Authenticate": _header("always 'Bearer'")}),
    403: _problem(403, "the tenant's session quota is full (CMANP_MAX_SESSIONS_PER_TENANT)"),
    404: _problem(404, "no such session (or another tenant's), or no such model"),
    409: _problem(409, "the session's model was replaced or is gone, or the session is of another kind"),
    413: _problem(413, "body over CMANP_MAX_BODY_BYTES, or points over CMANP_MAX_POINTS_PER_REQUEST"),
    415: _problem(415, "the body was not sent as JSON (header 'Content-Type: application/json')"),
    422: _problem(422, "the request does not fit the schema or the session"),
    429: _problem(429, "the tenant's rate limit is exceeded (CMANP_RATE_LIMIT_PER_SECOND)", RETRY_AFTER),
    503: _problem(503, "Redis is unavailable, or the default model is not loaded", RETRY_AFTER),
    507: _problem(507, "Redis is out of memory (maxmemory); nothing was changed", RETRY_AFTER),
}
