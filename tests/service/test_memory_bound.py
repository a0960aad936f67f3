"""Acceptance 4: a session's Redis memory (MEMORY USAGE over all its keys) does not grow with its points.

Uses the shipped architecture ('realistic'), whose state blob is what production stores. The log
and idempotency records are bounded by settings, not by the number of points; measuring after
10, 1,000 and 10,000 points (posted with an idempotency key each, as the client does) shows it.
"""

from __future__ import annotations

from service.client import CMANPClient
from tests.service.helpers import DEFAULT_FOLD_THRESHOLD, sample_points, session_keys_in_redis, wait_for_folds

BATCH = 500


def session_memory(redis_client, session_id: str) -> int:
    keys = session_keys_in_redis(redis_client, session_id)
    assert keys
    return sum(redis_client.memory_usage(key, samples=0) for key in keys)


def test_memory_is_constant_in_the_number_of_points(client: CMANPClient, redis_client) -> None:
    session_id = client.create_session(model="realistic").session_id
    x, y = sample_points(10_000, seed=7)
    usage = {}
    posted = 0
    for target in (10, 1_000, 10_000):
        while posted < target:
            step = min(BATCH, target - posted)
            client.add_context(session_id, x[posted : posted + step], y[posted : posted + step])
            posted += step
        wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)  # posts do not wait for their folds
        usage[target] = session_memory(redis_client, session_id)
    assert client.get_session(session_id).num_points == 10_000
    for n in (1_000, 10_000):
        assert abs(usage[n] - usage[10]) / usage[10] < 0.05, usage


def test_memory_is_constant_with_single_point_posts_and_keys(client: CMANPClient, redis_client) -> None:
    session_id = client.create_session(model="realistic").session_id
    x, y = sample_points(1_000, seed=7)
    usage = {}
    for i in range(1_000):
        client.add_context(session_id, x[i : i + 1], y[i : i + 1])  # the client sends a key per call
        if i + 1 in (10, 1_000):
            wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)
            usage[i + 1] = session_memory(redis_client, session_id)
    assert abs(usage[1_000] - usage[10]) / usage[10] < 0.05, usage
