"""Liveness, readiness and Prometheus metrics (unversioned, no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.dependencies import ServicesDep
from service.errors import UnavailableError
from service.routers import PROBLEM_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: PROBLEM_RESPONSES[503]})
async def readyz(services: ServicesDep) -> dict[str, object]:
    """Redis answers and the default model is loaded; 503 otherwise."""
    await services.store.ping()  # a Redis outage becomes 503 + Retry-After in service.problems
    if not services.registry.ready:
        raise UnavailableError(f"default model {services.registry.default!r} is not loaded")
    return {"status": "ready", "models": sorted(services.registry.models)}


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return services.metrics.render()
