"""The served models and their model-card numbers."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import ServicesDep, TenantDep
from service.routers import API_PREFIX, PROBLEM_RESPONSES
from service.schemas import ModelInfo, ModelList

router = APIRouter(prefix=f"{API_PREFIX}/models", tags=["models"], responses=PROBLEM_RESPONSES)


@router.get("")
async def list_models(services: ServicesDep, _: TenantDep) -> ModelList:
    registry = services.registry
    models = [
        ModelInfo(
            name=m.name,
            fingerprint=m.fingerprint,
            dim_x=m.dim_x,
            dim_y=m.dim_y,
            x_range=m.training_range.x,
            y_range=m.training_range.y,
            config=m.net.cfg.to_dict(),
            metrics=m.metrics,
            default=m.name == registry.default,
            joint_block_size=m.joint_block_size,
            y_transform_default=m.y_transform_default,
        )
        for m in registry.models.values()
    ]
    return ModelList(default_model=registry.default, models=models)
