"""A Redis past its maxmemory (noeviction) refuses writes: the API answers 507 with Retry-After,
changes nothing, and once there is room again a retry with the same Idempotency-Key is applied
exactly once. Reads keep working meanwhile."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import redis

from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import (
    AUTH,
    assert_same_state,
    expected_prediction,
    live_server,
    make_settings,
    sample_points,
    stored_state,
)

QUERIES = np.linspace(-2.0, 2.0, 5)[:, None]


def _post(url: str, session_id: str, x: np.ndarray, y: np.ndarray, key: str) -> httpx.Response:
    body = {"x": x.tolist(), "y": y.tolist()}
    return httpx.post(f"{url}/v1/sessions/{session_id}/context", json=body, headers=AUTH | {"Idempotency-Key": key})


def test_full_store_answers_507_and_changes_nothing(own_redis: EmbeddedRedis, checkpoint_dir: Path, tiny_net) -> None:
    x, y = sample_points(40, seed=21)
    raw = redis.Redis.from_url(own_redis.url)
    with live_server(make_settings(own_redis.url, checkpoint_dir)) as url:
        session_id = httpx.post(f"{url}/v1/sessions", json={}, headers=AUTH).json()["session_id"]
        assert _post(url, session_id, x[:30], y[:30], "first").status_code == 200
        before = {key: raw.dump(key) for key in raw.keys("*")}

        raw.config_set("maxmemory", 1)  # every write is now over the limit
        try:
            full = _post(url, session_id, x[30:], y[30:], "second")
            assert full.status_code == 507, full.text
            assert full.headers["Retry-After"] and "out of memory" in full.json()["detail"]
            assert httpx.post(f"{url}/v1/sessions", json={}, headers=AUTH).status_code == 507
            assert {key: raw.dump(key) for key in raw.keys("*")} == before  # nothing changed, nothing added
            predict = httpx.post(f"{url}/v1/sessions/{session_id}/predict", json={"x": QUERIES.tolist()}, headers=AUTH)
            assert predict.status_code == 200
            np.testing.assert_allclose(
                predict.json()["mean"], expected_prediction(tiny_net, x[:30], y[:30], QUERIES)[0], atol=1e-4
            )
        finally:
            raw.config_set("maxmemory", 0)

        assert _post(url, session_id, x[30:], y[30:], "second").status_code == 200
        assert _post(url, session_id, x[30:], y[30:], "second").status_code == 200  # a replay, not a second add
        assert_same_state(stored_state(raw, session_id, tiny_net), x, y, tiny_net)
