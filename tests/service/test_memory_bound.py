"""A session's Redis memory (MEMORY USAGE over all its keys): small while it holds little, and
constant in the number of points past its first fold.

Uses the shipped architecture ('realistic'), whose 104,512-byte state blob is what production
stores, against the bundled redis-server. A new session is its meta hash alone: the empty state
belongs to the model, and the idempotency ring grows with the keys it remembers. So a session
with 0 or 10 points fits in 12 KB (each cost ~113 KB when the empty blob and the whole ring were
written at creation). Past the first fold, the log and the ring are bounded by settings, not by
the number of points; once the ring is full a large session costs what it did before.
"""

from __future__ import annotations

import pytest

from service.client import CMANPClient
from service.store import KEY_PREFIX
from tests.service.helpers import DEFAULT_FOLD_THRESHOLD, sample_points, session_keys_in_redis, wait_for_folds

SMALL_SESSION_BYTES = 12 * 1024
# Before issue 22 (commit 0e1041c, the same bundled redis-server 6.2.14): a session of the shipped
# architecture with 10,000 points posted in 200 posts of 50 with a key each (so that its ring of
# 128 records is full), and with 1,000 points posted one per request with a key each.
BEFORE_10K_IN_POSTS_OF_50 = 116_427
BEFORE_1K_IN_POSTS_OF_1 = 116_676


def session_memory(redis_client, session_id: str) -> int:
    keys = session_keys_in_redis(redis_client, session_id)
    assert keys
    return sum(redis_client.memory_usage(key, samples=0) for key in keys)


def post(client: CMANPClient, session_id: str, points: int, per_post: int, seed: int = 7) -> None:
    x, y = sample_points(points, seed=seed)
    for start in range(0, points, per_post):
        client.add_context(session_id, x[start : start + per_post], y[start : start + per_post])  # a key each


@pytest.mark.parametrize(("points", "per_post"), [(0, 1), (10, 10), (10, 1)])
def test_a_small_session_costs_what_it_holds(client: CMANPClient, redis_client, points: int, per_post: int) -> None:
    session_id = client.create_session(model="realistic").session_id
    post(client, session_id, points, per_post)
    assert not redis_client.exists(f"{KEY_PREFIX}:{{{session_id}}}:state")  # no fold yet, no blob
    usage = session_memory(redis_client, session_id)
    assert usage <= SMALL_SESSION_BYTES, usage
    info = client.get_session(session_id)  # the state it reports is the model's, blob or not
    assert (info.num_points, info.state_bytes) == (points, 104_512)
    assert client.predict(session_id, [0.0]).num_points == points


def test_memory_is_constant_in_the_number_of_points(client: CMANPClient, redis_client) -> None:
    session_id = client.create_session(model="realistic").session_id
    x, y = sample_points(10_000, seed=7)
    usage = {}
    posted = 0
    for target in (1_000, 10_000):  # both past the first fold (256 points)
        while posted < target:
            client.add_context(session_id, x[posted : posted + 500], y[posted : posted + 500])
            posted += 500
        wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)  # posts do not wait for their folds
        usage[target] = session_memory(redis_client, session_id)
    assert client.get_session(session_id).num_points == 10_000
    assert abs(usage[10_000] - usage[1_000]) / usage[1_000] < 0.05, usage
    assert usage[10_000] <= BEFORE_10K_IN_POSTS_OF_50 * 1.05, usage  # 20 keys: a ring a sixth of the full one


def test_a_large_session_with_a_full_ring_costs_what_it_did(client: CMANPClient, redis_client) -> None:
    session_id = client.create_session(model="realistic").session_id
    post(client, session_id, 10_000, per_post=50)
    wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)
    usage = session_memory(redis_client, session_id)
    assert abs(usage - BEFORE_10K_IN_POSTS_OF_50) / BEFORE_10K_IN_POSTS_OF_50 < 0.05, usage


def test_memory_is_constant_with_single_point_posts_and_keys(client: CMANPClient, redis_client) -> None:
    session_id = client.create_session(model="realistic").session_id
    x, y = sample_points(1_000, seed=7)
    usage = {}
    for i in range(1_000):
        client.add_context(session_id, x[i : i + 1], y[i : i + 1])  # the client sends a key per call
        if i + 1 in (300, 1_000):  # past the first fold, and the ring (128 keys) is full
            wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)
            usage[i + 1] = session_memory(redis_client, session_id)
    assert abs(usage[1_000] - usage[300]) / usage[300] < 0.05, usage
    assert abs(usage[1_000] - BEFORE_1K_IN_POSTS_OF_1) / BEFORE_1K_IN_POSTS_OF_1 < 0.05, usage
