"""One APIRouter per resource: health (and metrics), models, sessions, and the demo page.

The version prefix is part of each router's own prefix, so that a route's path (used as the
metrics label and in Location headers) is its full public path.
"""

from service.schemas import Problem

API_PREFIX = "/v1"
# The error answers every /v1 route may give, for the OpenAPI docs (see service.errors).
PROBLEM_RESPONSES: dict[int | str, dict] = {code: {"model": Problem} for code in (400, 401, 404, 409, 413, 422, 503)}
