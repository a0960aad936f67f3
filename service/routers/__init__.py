"""One APIRouter per resource: health (and metrics), models, sessions.

The version prefix is part of each router's own prefix, so that a route's path (used as the
metrics label and in Location headers) is its full public path.
"""

API_PREFIX = "/v1"
