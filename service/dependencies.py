"""What route handlers are given: the app's services, and the tenant of the caller.

Auth: when ``CMANP_API_KEYS`` is set, every ``/v1`` call needs ``Authorization: Bearer <key>``;
the key names the tenant. Sessions belong to their tenant, and the store answers another
tenant exactly as it answers for a missing session (404), so ids leak nothing. Without keys,
every caller is the anonymous tenant "".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import UnauthorizedError
from service.inference import Inference
from service.metrics import Metrics
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
    tenant = tenants.get(hashlib.sha256(credentials.credentials.encode()).hexdigest())
    if tenant is None:
        raise UnauthorizedError("unknown API key")
    return tenant


ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(authenticate)]
