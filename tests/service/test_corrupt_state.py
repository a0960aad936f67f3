"""A session whose stored state blob is damaged (a flipped byte: bit rot, a bad restore, a manual edit):
predicts answer a clear 500 that names the session and what to do, and change nothing; a post that
Redis has durably appended is still acknowledged when its fold cannot read the state (a retry would
apply it twice); once the log is full, posts fail with the same 500 and append nothing. Regression:
all of these were a bare "internal error", and an appended post was answered 500."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import redis

from service.embedded_redis import EmbeddedRedis
from service.store import KEY_PREFIX
from tests.service.helpers import AUTH, live_server, logged_points, make_settings, raw_session, sample_points

FOLD_AT = 4  # fold threshold, in points
PER_REQUEST = 4  # the log then holds at most FOLD_AT + PER_REQUEST points


def _post(url: str, session_id: str, x: np.ndarray, y: np.ndarray) -> httpx.Response:
    return httpx.post(f"{url}/v1/sessions/{session_id}/context", json={"x": x.tolist(), "y": y.tolist()}, headers=AUTH)


def test_a_damaged_state_gives_a_clear_500_and_loses_nothing(own_redis: EmbeddedRedis, checkpoint_dir: Path) -> None:
    x, y = sample_points(12, seed=5)
    raw = redis.Redis.from_url(own_redis.url)
    settings = make_settings(
        own_redis.url, checkpoint_dir, fold_threshold_points=FOLD_AT, max_points_per_request=PER_REQUEST
    )
    with live_server(settings) as url:
        session_id = httpx.post(f"{url}/v1/sessions", json={}, headers=AUTH).json()["session_id"]
        assert _post(url, session_id, x[:2], y[:2]).status_code == 200
        state_key = f"{KEY_PREFIX}:{{{session_id}}}:state"
        blob = bytearray(raw.get(state_key))
        blob[len(blob) // 2] ^= 0x01  # one bit of the float32 payload
        raw.set(state_key, bytes(blob), keepttl=True)

        before = raw_session(raw, session_id)
        answer = httpx.post(f"{url}/v1/sessions/{session_id}/predict", json={"x": [[0.0]]}, headers=AUTH)
        assert answer.status_code == 500
        detail = answer.json()["detail"]
        assert session_id in detail and "unreadable" in detail and "delete the session" in detail
        assert raw_session(raw, session_id) == before

        # The log reaches the fold threshold: the append is durable, its fold cannot run.
        assert _post(url, session_id, x[2:5], y[2:5]).status_code == 200
        logged_x, _ = logged_points(raw, session_id, dim_x=1, dim_y=1)
        np.testing.assert_array_equal(logged_x[:, 0], x[:5, 0].astype(np.float32))
        assert raw.get(state_key) == bytes(blob), "the damaged blob is left for an operator to look at"

        # No room in the log: the writer must fold first, which fails, so nothing is appended.
        before = raw_session(raw, session_id)
        refused = _post(url, session_id, x[5:9], y[5:9])
        assert refused.status_code == 500 and session_id in refused.json()["detail"]
        assert raw_session(raw, session_id) == before
