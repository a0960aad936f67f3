"""The FastAPI app: ``create_app(settings)`` wires Redis, the models, the routers and the error handlers.

The live demo page is served at ``/demo`` (``service.routers.demo``), the API docs at ``/docs``
from files the app serves itself (``service.routers.docs``; no ReDoc).

Startup (lifespan): use ``CMANP_REDIS_URL`` (a Redis Cluster with ``CMANP_REDIS_CLUSTER=true``),
or start the bundled redis-server on ``CMANP_REDIS_DATA_DIR``; load every checkpoint in
``CMANP_CHECKPOINT_DIR``. Shutdown closes the Redis client and stops the bundled server. With
several worker processes the parent starts the bundled server once and hands each worker its URL
as ``CMANP_REDIS_URL`` (``service.workers``). Model
calls run in worker threads (see ``service.inference``; thread counts are explained in
``service.settings``).

Graceful shutdown: on SIGTERM uvicorn stops accepting connections and lets the requests in
flight finish (up to ``CMANP_SHUTDOWN_GRACE_SECONDS``) before the lifespan's shutdown closes
Redis. Nothing can be left half-written even if a request is cut off: each write to a session
is one Lua script or one MULTI/EXEC transaction (``service.store``), applied whole or not at all.

Middleware, outermost first: request id and access log (``service.logs``), CORS (only when
``CMANP_CORS_ALLOW_ORIGINS`` is set: browsers get no access by default), metrics, body limit.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.body_limit import BodySizeLimit
from service.bundled_redis import start_bundled_redis
from service.dependencies import Services
from service.inference import Inference
from service.logs import REQUEST_ID_HEADER, RequestContext
from service.metrics import Metrics
from service.problems import install_error_handlers
from service.quota import SessionQuota
from service.rate_limit import RateLimiter
from service.registry import ModelRegistry
from service.routers import demo, docs, health, kinds, models, sessions
from service.schemas import OrjsonResponse
from service.settings import Settings
from service.store import SessionStore

logger = logging.getLogger(__name__)


def connect_redis(url: str, timeout: float, cluster: bool = False) -> Redis | RedisCluster:
    """A client for one Redis, or for the Redis Cluster that ``url`` is a node of (it finds the others)."""
    # No command retries inside the client: see service.store for why retries belong to the caller.
    # The cluster client still follows MOVED/ASK redirections, which never re-run a command.
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    return RedisCluster.from_url(url, **options) if cluster else Redis.from_url(url, **options)


FOLD_DRAIN_SECONDS = 10.0


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(metrics.close)
            url = settings.redis_url
            if url is None:
                url = stack.enter_context(start_bundled_redis(settings)).url
            redis = connect_redis(url, settings.redis_timeout_seconds, settings.redis_cluster)
            stack.push_async_callback(redis.aclose)
            registry = ModelRegistry.load(settings.checkpoint_dir, settings.default_model)
            inference = Inference(
                settings.inference_workers,
                settings.torch_threads,
                settings.predict_batch_max,
                settings.calibration,
                settings.predict_cache_sessions,
                settings.fold_nice,
                registry.models.values(),
            )
            inference.start_folds()
            store = SessionStore(
                redis,
                fold_threshold=settings.fold_threshold_points,
                max_points_per_request=settings.max_points_per_request,
                idempotency_keys=settings.idempotency_keys_per_session,
                cached_sessions=settings.cached_sessions,
                wait_replicas=settings.redis_wait_replicas,
                wait_timeout_ms=settings.redis_wait_timeout_ms,
            )
            # At shutdown, before Redis closes and the fold process stops: let folds that posts
            # started finish (their points are in the log either way; a fold cut short is only
            # redone by the next post).
            stack.callback(inference.close)
            stack.push_async_callback(store.wait_for_folds, FOLD_DRAIN_SECONDS)
            quota = SessionQuota(redis, settings.max_sessions_per_tenant)
            limiter = None
            if settings.rate_limit_per_second > 0:
                limiter = RateLimiter(redis, settings.rate_limit_per_second, settings.rate_limit_burst)
            app.state.services = Services(settings, store, registry, inference, metrics, quota, limiter)
            # Everything alive now (modules, models) lives as long as the app: out of the collector's
            # sight, the full collections that come every few seconds under load take a few ms instead
            # of 100+ ms (measured), which stalled every request of the process (docs/OPERATIONS.md).
            await inference.folds_started()  # started above, beside the rest of the startup
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
            yield

    app = FastAPI(
        title="CMANP streaming inference",
        summary="Post context points as they arrive; query predictive distributions; constant memory per session.",
        version="1",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url=None,  # served by service.routers.docs, whose Swagger UI files need no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # Added first, so it sits inside the metrics middleware, which then counts its 413s too.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.middleware)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed", REQUEST_ID_HEADER],
        )
    app.add_middleware(RequestContext)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(sessions.router)
    for kind in kinds.SERVED.values():
        app.include_router(kind.router)
    app.include_router(demo.router)
    app.include_router(docs.router)
    return app
