"""Settings come from CMANP_* environment variables; API_KEYS is 'tenant:key,...'."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMANP_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("CMANP_MAX_POINTS_PER_REQUEST", "77")
    monkeypatch.setenv("CMANP_API_KEYS", "alice:k1, bob:k2")
    monkeypatch.setenv("CMANP_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("CMANP_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("CMANP_RATE_LIMIT_PER_SECOND", "2.5")
    monkeypatch.setenv("CMANP_MAX_SESSIONS_PER_TENANT", "7")
    monkeypatch.setenv("CMANP_REDIS_CLUSTER", "true")
    settings = Settings()
    assert settings.cors_allow_origins == ["https://a.example", "https://b.example"]
    assert (settings.rate_limit_per_second, settings.max_sessions_per_tenant) == (2.5, 7)
    assert settings.redis_url == "redis://example:6379/1" and settings.redis_cluster
    assert settings.max_points_per_request == 77
    assert settings.log_level == "debug"
    assert settings.api_keys == {
        hashlib.sha256(b"k1").hexdigest(): "alice",
        hashlib.sha256(b"k2").hexdigest(): "bob",
    }


def test_defaults_use_the_embedded_redis_and_the_shipped_model(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("REDIS_URL", "REDIS_CLUSTER", "REDIS_APPENDFSYNC", "API_KEYS", "DEFAULT_MODEL", "CHECKPOINT_DIR", "PORT")
    for name in (*names, "CORS_ALLOW_ORIGINS", "RATE_LIMIT_PER_SECOND", "MAX_SESSIONS_PER_TENANT"):
        monkeypatch.delenv(f"CMANP_{name}", raising=False)
    settings = Settings()
    assert settings.redis_url is None and settings.redis_data_dir == Path("var/redis")
    assert settings.redis_appendfsync == "always" and not settings.redis_cluster
    assert (settings.default_model, settings.checkpoint_dir) == ("cmanp-gp-general", Path("checkpoints"))
    assert settings.api_keys == {} and settings.port == 8000
    assert settings.cors_allow_origins == []  # CORS off
    assert settings.rate_limit_per_second == 0 and settings.max_sessions_per_tenant == 1000


@pytest.mark.parametrize("spec", ["alice", "alice:", ":key", "alice:k,bob:k"])
def test_malformed_api_keys_are_refused(spec: str) -> None:
    with pytest.raises(ValidationError):
        Settings(api_keys=spec)


def test_a_cluster_needs_its_url() -> None:
    with pytest.raises(ValidationError, match="REDIS_URL"):
        Settings(redis_cluster=True)


def test_a_wait_for_replicas_must_end_before_the_socket_timeout() -> None:
    assert Settings(redis_wait_replicas=1, redis_wait_timeout_ms=500, redis_timeout_seconds=5).redis_wait_replicas == 1
    with pytest.raises(ValidationError, match="REDIS_WAIT_TIMEOUT_MS"):
        Settings(redis_wait_replicas=1, redis_wait_timeout_ms=5_000, redis_timeout_seconds=5)
