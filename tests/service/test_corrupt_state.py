"""A session whose stored state blob is damaged (a flipped byte: bit rot, a bad restore, a manual edit):
predicts answer a clear 500 that names the session and what to do, and change nothing; a post that
Redis has durably appended is still acknowledged when its fold cannot read the state (a retry would
apply it twice); once the log is full, posts fail with the same 500 and append nothing. Regression:
all of these were a bare "internal error", and an appended post was answered 500. A new session
has no blob (its state is the model's empty one) until its first fold writes one; a blob missing
after that is reported the same way, never taken for the empty state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import redis

from service.embedded_redis import EmbeddedRedis
from service.store import KEY_PREFIX
from tests.service.helpers import (
    AUTH,
    live_server,
    logged_points,
    make_settings,
    raw_session,
    sample_points,
    wait_for_folds,
)

FOLD_AT = 4  # fold threshold, in points
PER_REQUEST = 4  # the log then holds at most FOLD_AT + PER_REQUEST points


def _post(url: str, session_id: str, x: np.ndarray, y: np.ndarray) -> httpx.Response:
    return httpx.post(f"{url}/v1/sessions/{session_id}/context", json={"x": x.tolist(), "y": y.tolist()}, headers=AUTH)


@contextmanager
def _server(own_redis: EmbeddedRedis, checkpoint_dir: Path) -> Iterator[tuple[str, redis.Redis]]:
    """The service with a small fold threshold, and a raw client of its Redis."""
    raw = redis.Redis.from_url(own_redis.url)
    settings = make_settings(
        own_redis.url, checkpoint_dir, fold_threshold_points=FOLD_AT, max_points_per_request=PER_REQUEST
    )
    with live_server(settings) as url:
        yield url, raw


def _folded_session(url: str, raw: redis.Redis, x: np.ndarray, y: np.ndarray) -> str:
    """A session whose first fold has written its state blob (a new session has none)."""
    session_id = httpx.post(f"{url}/v1/sessions", json={}, headers=AUTH).json()["session_id"]
    assert _post(url, session_id, x[:FOLD_AT], y[:FOLD_AT]).status_code == 200
    wait_for_folds(raw, session_id, FOLD_AT)
    assert raw.exists(f"{KEY_PREFIX}:{{{session_id}}}:state")
    return session_id


def _predict_fails_and_changes_nothing(url: str, raw: redis.Redis, session_id: str, reason: str) -> None:
    """A predict answers 500, naming the session, the ``reason`` and the remedy, and writes nothing."""
    before = raw_session(raw, session_id)
    answer = httpx.post(f"{url}/v1/sessions/{session_id}/predict", json={"x": [[0.0]]}, headers=AUTH)
    assert answer.status_code == 500
    detail = answer.json()["detail"]
    assert session_id in detail and reason in detail and "delete the session" in detail
    assert raw_session(raw, session_id) == before


def test_a_damaged_state_gives_a_clear_500_and_loses_nothing(own_redis: EmbeddedRedis, checkpoint_dir: Path) -> None:
    x, y = sample_points(16, seed=5)
    with _server(own_redis, checkpoint_dir) as (url, raw):
        session_id = _folded_session(url, raw, x, y)
        assert _post(url, session_id, x[4:6], y[4:6]).status_code == 200
        state_key = f"{KEY_PREFIX}:{{{session_id}}}:state"
        blob = bytearray(raw.get(state_key))
        blob[len(blob) // 2] ^= 0x01  # one bit of the float32 payload
        raw.set(state_key, bytes(blob), keepttl=True)
        _predict_fails_and_changes_nothing(url, raw, session_id, "unreadable")

        # The log reaches the fold threshold: the append is durable, its fold cannot run.
        assert _post(url, session_id, x[6:9], y[6:9]).status_code == 200
        logged_x, _ = logged_points(raw, session_id, dim_x=1, dim_y=1)
        np.testing.assert_array_equal(logged_x[:, 0], x[4:9, 0].astype(np.float32))
        assert raw.get(state_key) == bytes(blob), "the damaged blob is left for an operator to look at"

        # No room in the log: the writer must fold first, which fails, so nothing is appended.
        before = raw_session(raw, session_id)
        refused = _post(url, session_id, x[9:13], y[9:13])
        assert refused.status_code == 500 and session_id in refused.json()["detail"]
        assert raw_session(raw, session_id) == before


def test_a_lost_state_blob_is_not_taken_for_the_empty_state(own_redis: EmbeddedRedis, checkpoint_dir: Path) -> None:
    """No blob means the model's empty state only before the first fold: after one, the blob's
    absence (a key deleted or evicted) would silently drop every folded point, so it is a clear 500."""
    x, y = sample_points(8, seed=6)
    with _server(own_redis, checkpoint_dir) as (url, raw):
        session_id = _folded_session(url, raw, x, y)
        raw.delete(f"{KEY_PREFIX}:{{{session_id}}}:state")
        _predict_fails_and_changes_nothing(url, raw, session_id, "missing")
