"""The FastAPI app: ``create_app(settings)`` wires Redis, the models, the routers and the error handlers.

Startup (lifespan): use ``CMANP_REDIS_URL``, or start the bundled redis-server on
``CMANP_REDIS_DATA_DIR``; load every checkpoint in ``CMANP_CHECKPOINT_DIR``. Shutdown closes the
Redis client and stops the bundled server. Model calls run in worker threads (see
``service.inference``; thread counts are explained in ``service.settings``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.body_limit import BodySizeLimit
from service.dependencies import Services
from service.embedded_redis import EmbeddedRedis
from service.errors import install_error_handlers
from service.inference import Inference
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.routers import health, models, sessions
from service.schemas import OrjsonResponse
from service.settings import Settings
from service.store import SessionStore

logger = logging.getLogger(__name__)


def connect_redis(url: str, timeout: float) -> Redis:
    # No command retries inside the client: see service.store for why retries belong to the caller.
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url = settings.redis_url
            if url is None:
                url = stack.enter_context(EmbeddedRedis(settings.redis_data_dir)).url
                logger.info("started the bundled redis-server at %s (data in %s)", url, settings.redis_data_dir)
            redis = connect_redis(url, settings.redis_timeout_seconds)
            stack.push_async_callback(redis.aclose)
            store = SessionStore(
                redis,
                fold_threshold=settings.fold_threshold_points,
                max_points_per_request=settings.max_points_per_request,
                idempotency_keys=settings.idempotency_keys_per_session,
                cached_sessions=settings.cached_sessions,
            )
            registry = ModelRegistry.load(settings.checkpoint_dir, settings.default_model)
            inference = Inference(settings.inference_workers, settings.torch_threads, settings.predict_batch_max)
            app.state.services = Services(settings, store, registry, inference, metrics)
            yield

    app = FastAPI(
        title="CMANP streaming inference",
        summary="Post context points as they arrive; query predictive distributions; constant memory per session.",
        version="1",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # Added first, so it sits inside the metrics middleware, which then counts its 413s too.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.middleware)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(sessions.router)
    return app
