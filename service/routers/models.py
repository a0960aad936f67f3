"""The served models and their model-card numbers."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import ServicesDep, TenantDep
from service.routers import API_PREFIX, PROBLEM_RESPONSES
from service.routers.kinds import routes_of
from service.schemas import ModelInfo, ModelList

router = APIRouter(prefix=f"{API_PREFIX}/models", tags=["models"], responses=PROBLEM_RESPONSES)


@router.get("")
async def list_models(services: ServicesDep, _: TenantDep) -> ModelList:
    registry = services.registry
    models = [
        ModelInfo(
            name=m.name,
            fingerprint=m.fingerprint,
            session_kind=m.session_kind,
            config=m.net.cfg.to_dict(),
            metrics=m.metrics,
            default=m.name == registry.default,
            **routes_of(m.session_kind).describe(m),
        )
        for m in registry.models.values()
    ]
    return ModelList(default_model=registry.default, models=models)
