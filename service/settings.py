"""Service settings, read from the environment with the prefix ``CMANP_`` (e.g. ``CMANP_REDIS_URL``).

Processes and threads: ``WORKERS`` uvicorn worker processes (default: one per CPU) serve the
same app behind one port (``service.workers``), because one Python process spends most of a
small request in the interpreter (HTTP parsing, validation, JSON, Redis protocol) and so tops
out at about one core. In each process every model call runs in a thread, at most
``INFERENCE_WORKERS`` at a time, and torch uses ``TORCH_THREADS`` intra-op threads (default 1).
Requests carry a handful to a few thousand points, far too little work for intra-op parallelism
to pay off; running several single-threaded calls side by side uses the cores for throughput
instead, and bounds the CPU the service takes at ``WORKERS * INFERENCE_WORKERS * TORCH_THREADS``
cores. The defaults give one model call per CPU in all: with 2 workers on 2 cores, one thread
each, whose queue of predicts then runs as batches (measured against 2 threads each: 237 vs 204
predicts/s, p99 46 vs 88 ms; docs/OPERATIONS.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# prometheus-client's multiprocess directory (``service.metrics``), read when it is imported: the
# supervisor (``service.workers``) sets it for its worker processes.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def parse_origins(spec: str) -> list[str]:
    """``"https://a.example,https://b.example"`` -> a list; ``"*"`` allows any origin."""
    return [origin.strip() for origin in spec.split(",") if origin.strip()]


def parse_api_keys(spec: str) -> dict[str, str]:
    """``"tenant:key,tenant2:key2"`` -> {sha256(key) hex: tenant}. Only key digests are kept in memory."""
    tenants: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        tenant, sep, key = item.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError(f"API_KEYS entries must look like 'tenant:key', got {item.split(':')[0]!r}:...")
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        if digest in tenants:
            raise ValueError("API_KEYS has the same key twice")
        tenants[digest] = tenant.strip()
    return tenants


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CMANP_", frozen=True)

    redis_url: str | None = Field(None, description="Redis to use; unset = start the bundled redis-server")
    redis_cluster: bool = Field(False, description="REDIS_URL is a node of a Redis Cluster: use the cluster client")
    redis_data_dir: Path = Field(Path("var/redis"), description="data dir (AOF) of the bundled redis-server")
    redis_appendfsync: Literal["always", "everysec", "no"] = Field(
        "always", description="when the bundled redis-server fsyncs its append-only file (docs/OPERATIONS.md)"
    )
    checkpoint_dir: Path = Field(Path("checkpoints"), description="every *.safetensors here is served")
    default_model: str = Field("cmanp-gp-general", description="model of sessions created without one")
    session_ttl_seconds: int = Field(86_400, ge=1, description="idle time after which a session expires")
    max_session_ttl_seconds: int = Field(30 * 86_400, ge=1, description="largest ttl_seconds a client may ask for")
    max_points_per_request: int = Field(1_000, ge=1, description="context points or queries per request")
    max_joint_targets: int | None = Field(
        None, ge=1, description="most targets of a joint=true predict; unset (and never more than): the model's b_Q"
    )
    max_sample_values: int = Field(20_000, ge=1, description="most num_samples x targets of one predict")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body; more gets 413 before parsing")
    fold_threshold_points: int = Field(256, ge=1, description="fold the append log into the state at this size")
    idempotency_keys_per_session: int = Field(128, ge=1, description="most recent keys remembered per session")
    max_sessions_per_tenant: int = Field(1_000, ge=1, description="live sessions per tenant; one more gets 403")
    rate_limit_per_second: float = Field(0.0, ge=0, description="/v1 requests per second per tenant; 0 = no limit")
    rate_limit_burst: int = Field(20, ge=1, description="requests a tenant may send at once under the rate limit")
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="'tenant:key,...'; empty = no auth"
    )
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="'https://a.example,...' may call the API from a browser; empty = CORS off"
    )
    shutdown_grace_seconds: int = Field(30, ge=1, description="on SIGTERM, wait this long for requests in flight")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    workers: int = Field(
        default_factory=available_cpus, ge=1, description="uvicorn worker processes; default: one per CPU"
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per model call")
    inference_workers: int = Field(
        default_factory=lambda data: max(1, available_cpus() // (data.get("workers") or 1)),
        ge=1,
        description="model calls running at once per worker process; default: CPUs / WORKERS, at least 1",
    )
    fold_nice: int = Field(
        5, ge=0, le=19, description="CPU niceness of the fold process (Linux): background folds yield to queries"
    )
    predict_batch_max: int = Field(16, ge=1, description="most queued predicts run as one batched model call")
    cached_sessions: int = Field(
        10_000, ge=0, description="fixed metadata of this many recent sessions kept in process (saves a Redis call)"
    )
    predict_cache_sessions: int = Field(
        64, ge=0, description="folded states of this many recently predicted sessions kept in process (hot sessions)"
    )
    redis_timeout_seconds: float = Field(5.0, gt=0, description="socket timeout of Redis calls")
    redis_wait_replicas: int = Field(
        0, ge=0, description="replicas that must confirm each acknowledged write (Redis WAIT); 0 = do not wait"
    )
    redis_wait_timeout_ms: int = Field(
        1_000, ge=1, description="how long a write waits for REDIS_WAIT_REPLICAS; past it: 503 + Retry-After"
    )
    calibration: bool = Field(True, description="score each context point against the state before it")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return parse_origins(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> Settings:
        if self.redis_cluster and self.redis_url is None:
            raise ValueError("REDIS_CLUSTER needs REDIS_URL (a node of the cluster); the bundled Redis is no cluster")
        return self

    @model_validator(mode="after")
    def _wait_within_the_socket_timeout(self) -> Settings:
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.redis_timeout_seconds * 1000:
            raise ValueError(
                "REDIS_WAIT_TIMEOUT_MS must be shorter than REDIS_TIMEOUT_SECONDS, or the socket gives up first"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
