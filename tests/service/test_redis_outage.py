"""Redis dies mid-test (SIGKILL, like a crash). Requests get 503 + Retry-After and /readyz
fails; Redis restarts from its append-only file on the same port; the service, never restarted,
resumes, and no acknowledged point is lost. A client call made during the outage retries with
the same Idempotency-Key and is applied exactly once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from service.client import CMANPClient, ContextResult, RetryPolicy
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import (
    API_KEYS,
    AUTH,
    DEFAULT_FOLD_THRESHOLD,
    assert_same_state,
    expected_prediction,
    live_server,
    make_settings,
    sample_points,
    stored_state,
    wait_for_folds,
)

QUERIES = np.linspace(-2.0, 2.0, 9)[:, None]


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_service_survives_a_redis_crash(own_redis: EmbeddedRedis, checkpoint_dir: Path, tiny_net) -> None:
    x, y = sample_points(400, seed=9)
    with (
        live_server(make_settings(own_redis.url, checkpoint_dir)) as url,
        CMANPClient(url, API_KEYS["alice"]) as client,
    ):
        session_id = client.create_session().session_id
        # Acknowledged before the crash: a folded state (300 points) and an unfolded log (50 more).
        client.add_context(session_id, x[:300], y[:300])
        with redis.Redis.from_url(own_redis.url) as raw:
            wait_for_folds(raw, session_id, DEFAULT_FOLD_THRESHOLD)  # the post does not wait for its fold
        client.add_context(session_id, x[300:350], y[300:350])

        own_redis.process.kill()
        own_redis.process.wait()

        context = httpx.post(f"{url}/v1/sessions/{session_id}/context", json={"x": [[0.0]], "y": [[0.0]]}, headers=AUTH)
        predict = httpx.post(f"{url}/v1/sessions/{session_id}/predict", json={"x": [[0.0]]}, headers=AUTH)
        for response in (context, predict, httpx.get(f"{url}/v1/sessions/{session_id}", headers=AUTH)):
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            assert "Redis" in response.json()["detail"]
        assert httpx.get(f"{url}/readyz").status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200

        # A client call made during the outage keeps retrying until Redis is back.
        patient = RetryPolicy(retries=200, backoff=0.05, max_backoff=0.1)
        during: list[ContextResult] = []

        def post_during_outage() -> None:
            with CMANPClient(url, API_KEYS["alice"], retry=patient) as c:
                during.append(c.add_context(session_id, x[350:375], y[350:375]))

        writer = threading.Thread(target=post_during_outage)
        writer.start()
        time.sleep(0.5)
        assert not during  # still waiting: it cannot have succeeded without Redis

        own_redis.start()  # same port, same data dir: replays the append-only file
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200)
        writer.join(timeout=30)
        assert during and during[0].num_points == 375

        client.add_context(session_id, x[375:], y[375:])
        info = client.get_session(session_id)
        prediction = client.predict(session_id, QUERIES)

    assert (info.num_points, info.version) == (400, 4)
    mean, _ = expected_prediction(tiny_net, x, y, QUERIES)
    np.testing.assert_allclose(prediction.mean, mean, rtol=0, atol=1e-4)
    with redis.Redis.from_url(own_redis.url) as raw:
        assert_same_state(stored_state(raw, session_id, tiny_net), x, y, tiny_net)
