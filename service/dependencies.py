"""What route handlers are given: the app's services, and the tenant of the caller.

Auth: when ``CMANP_API_KEYS`` is set, every ``/v1`` call needs ``Authorization: Bearer <key>``;
the key names the tenant. Sessions belong to their tenant, and the store answers another
tenant exactly as it answers for a missing session (404), so ids leak nothing. Without keys,
every caller is the anonymous tenant "". With ``CMANP_RATE_LIMIT_PER_SECOND`` set, each
tenant's ``/v1`` calls then pass its rate limit (``service.rate_limit``) before anything else.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import UnauthorizedError
from service.inference import Inference
from service.metrics import Metrics
from service.quota import SessionQuota
from service.rate_limit import RateLimiter
from service.registry import ModelRegistry
from service.settings import Settings
from service.store import SessionStore

ANONYMOUS = ""


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: SessionStore
    registry: ModelRegistry
    inference: Inference
    metrics: Metrics
    quota: SessionQuota
    rate_limiter: RateLimiter | None  # None: no rate limit


# Both dependencies are coroutines although they never await: FastAPI runs a plain ``def``
# dependency in the thread pool, and that thread hop cost more than the request's own work.
async def get_services(request: Request) -> Services:
    return request.app.state.services


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> str:
    tenants: dict[str, str] = request.app.state.settings.api_keys  # sha256(key) -> tenant
    if not tenants:
        return ANONYMOUS
    if credentials is None:
        raise UnauthorizedError("missing 'Authorization: Bearer <key>' header")
    # Only digests are stored, and the presented key's digest is compared with every one of them
    # by hmac.compare_digest, whose time depends on the lengths alone (all 64), never on where the
    # bytes differ; no loop exit either. So the time of an answer says nothing about any key.
    digest = hashlib.sha256(credentials.credentials.encode()).hexdigest()
    tenant = None
    for known, owner in tenants.items():
        if hmac.compare_digest(known, digest):
            tenant = owner
    if tenant is None:
        raise UnauthorizedError("unknown API key")
    return tenant


async def rate_limited_tenant(request: Request, tenant: Annotated[str, Depends(authenticate)]) -> str:
    limiter = request.app.state.services.rate_limiter
    if limiter is not None:
        await limiter.acquire(tenant)
    return tenant


ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(rate_limited_tenant)]
