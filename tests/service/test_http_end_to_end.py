"""Over HTTP, predictions equal the model's own predictions on the same points (1e-4).

Every test runs on one redis-server and on a local 3-master Redis Cluster.

Also: transforms, the session lifecycle, the model list, metrics, health, and the async client.
"""

from __future__ import annotations

import time

import anyio
import httpx
import numpy as np
import pytest

from service.client import AsyncCMANPClient, CMANPClient, CMANPError
from service.store import KEY_PARTS
from tests.service.helpers import (
    API_KEYS,
    BOTH_BACKENDS,
    DEFAULT_FOLD_THRESHOLD,
    TINY_CARD,
    expected_prediction,
    sample_points,
    session_keys_in_redis,
    wait_for_folds,
)

pytestmark = BOTH_BACKENDS

QUERIES = np.linspace(-2.0, 2.0, 41)[:, None]


def test_predictions_equal_model_predict(client: CMANPClient, tiny_net) -> None:
    session = client.create_session()
    prior = client.predict(session.session_id, QUERIES)
    np.testing.assert_allclose(
        prior.mean, expected_prediction(tiny_net, np.empty((0, 1)), np.empty((0, 1)), QUERIES)[0], atol=1e-4
    )

    # 600 points in uneven posts: the log is folded into the state several times on the way.
    x, y = sample_points(600, seed=1)
    bounds = [0, 1, 8, 100, 350, 351, 600]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        result = client.add_context(session.session_id, x[lo:hi], y[lo:hi])
        assert (result.num_points, result.version, result.replayed) == (hi, i + 1, False)

    got = client.predict(session.session_id, QUERIES)
    mean, variance = expected_prediction(tiny_net, x, y, QUERIES)
    assert (got.num_points, got.version) == (600, 6)
    np.testing.assert_allclose(got.mean, mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.variance, variance, rtol=0, atol=1e-4)
    # The context moved the prediction by far more than the tolerance, so the comparison can fail.
    assert np.abs(got.mean - prior.mean).max() > 20 * 1e-4


def test_transforms_map_user_units(client: CMANPClient, tiny_net) -> None:
    # x in [0, 100] user units -> the model's [-2, 2]; y_model = (y - 10) / 3.
    session = client.create_session(x_transform={"low": 0.0, "high": 100.0}, y_transform={"shift": 10.0, "scale": 3.0})
    assert session.x_transform == {"shift": [50.0], "scale": [25.0]}
    x_model, y_model = sample_points(50, seed=2)
    x_user, y_user = x_model * 25.0 + 50.0, y_model * 3.0 + 10.0
    client.add_context(session.session_id, x_user, y_user)

    got = client.predict(session.session_id, QUERIES * 25.0 + 50.0)
    mean, variance = expected_prediction(tiny_net, x_model, y_model, QUERIES)
    np.testing.assert_allclose(got.mean, mean * 3.0 + 10.0, rtol=0, atol=3e-4)
    np.testing.assert_allclose(got.variance, variance * 9.0, rtol=1e-4, atol=1e-4)


def test_session_lifecycle(client: CMANPClient, tiny_net) -> None:
    created = client.create_session(ttl_seconds=600)
    assert len(created.session_id) >= 22  # >= 128 random bits, url-safe base64
    assert created.model == "tiny" and created.model_fingerprint == tiny_net.fingerprint
    assert created.state_bytes == len(tiny_net.empty_state().to_bytes())
    assert (created.num_points, created.version, created.ttl_seconds) == (0, 0, 600)

    client.add_context(created.session_id, [0.5, 1.0], [1.0, 2.0])
    info = client.get_session(created.session_id)
    assert (info.num_points, info.version, info.state_bytes) == (2, 1, created.state_bytes)

    client.delete_session(created.session_id)
    with pytest.raises(CMANPError) as err:
        client.get_session(created.session_id)
    assert err.value.status == 404


def test_models_are_listed_with_their_cards(client: CMANPClient, tiny_net) -> None:
    models = {m.name: m for m in client.models()}
    assert set(models) == {"tiny", "tiny-and", "realistic", "tiny-events"}
    assert models["tiny-and"].joint_block_size == 8 and models["tiny"].joint_block_size is None
    assert models["tiny"].metrics == TINY_CARD and models["tiny"].default
    assert models["tiny"].fingerprint == tiny_net.fingerprint
    assert models["realistic"].metrics is None and not models["realistic"].default
    assert tuple(models["tiny"].x_range) == (-2.0, 2.0)


def test_unknown_model_is_404(client: CMANPClient) -> None:
    with pytest.raises(CMANPError) as err:
        client.create_session(model="nope")
    assert err.value.status == 404 and "nope" in err.value.detail


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_count_updates_and_predicts(server: str, client: CMANPClient) -> None:
    before = httpx.get(f"{server}/metrics").text
    session = client.create_session()
    client.add_context(session.session_id, [0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    client.add_context(session.session_id, [0.5], [0.5])
    client.predict(session.session_id, [0.0, 0.1])
    after = httpx.get(f"{server}/metrics").text
    for name, delta in [
        ("cmanp_context_posts_total", 2),
        ("cmanp_context_points_total", 4),
        ("cmanp_predictions_total", 1),
        ("cmanp_predicted_points_total", 2),
        ("cmanp_sessions_created_total", 1),
    ]:
        assert _metric(after, name) - _metric(before, name) == delta, name
    assert 'route="/v1/sessions/{session_id}/context",status="200"' in after
    assert "cmanp_http_request_duration_seconds_bucket" in after


def test_health_and_readiness(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert httpx.get(f"{server}/docs").status_code == 200
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/v1/sessions", "/v1/sessions/{session_id}/context", "/v1/sessions/{session_id}/predict"} <= set(paths)


def test_async_client(server: str, tiny_net) -> None:
    x, y = sample_points(30, seed=3)

    async def run() -> tuple[np.ndarray, int]:
        async with AsyncCMANPClient(server, API_KEYS["alice"]) as client:
            session = await client.create_session()
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(client.add_context, session.session_id, x[i::3], y[i::3])
            prediction = await client.predict(session.session_id, QUERIES)
            return prediction.mean, prediction.num_points

    mean, num_points = anyio.run(run)
    assert num_points == 30
    np.testing.assert_allclose(mean, expected_prediction(tiny_net, x, y, QUERIES)[0], rtol=0, atol=1e-4)


def test_every_key_expires_and_use_refreshes_the_ttl(client: CMANPClient, redis_client) -> None:
    session_id = client.create_session(ttl_seconds=600).session_id
    x, y = sample_points(DEFAULT_FOLD_THRESHOLD, seed=4)
    client.add_context(session_id, x, y)  # a fold: it writes the state, which a new session lacks
    wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)
    client.add_context(session_id, [0.1, 0.2], [0.3, 0.4])  # the log and idempotency keys too
    keys = session_keys_in_redis(redis_client, session_id)
    assert len(keys) == len(KEY_PARTS)
    for key in keys:
        redis_client.pexpire(key, 30_000)
    client.get_session(session_id)  # a use
    assert all(590_000 < redis_client.pttl(key) <= 600_000 for key in keys)

    for key in keys:
        redis_client.pexpire(key, 1)
    time.sleep(0.05)
    with pytest.raises(CMANPError) as err:
        client.predict(session_id, [0.0])
    assert err.value.status == 404
    assert session_keys_in_redis(redis_client, session_id) == []
