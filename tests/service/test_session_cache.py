"""Context posts read a session's fixed metadata from a per-process cache; it must never answer
for a session that is gone or belongs to someone else."""

from __future__ import annotations

import gc

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from service.client import CMANPClient, CMANPError
from service.errors import NotFoundError
from service.kinds.regression import REGRESSION, RegressionParams
from service.store import Session, SessionStore, session_keys
from service.transforms import AffineMap
from tests.service.helpers import API_KEYS, session_keys_in_redis


def test_post_to_a_cached_session_that_vanished_is_404_and_writes_nothing(client: CMANPClient, redis_client) -> None:
    session = client.create_session()
    client.add_context(session.session_id, [0.1], [0.2])  # the post path has it cached now
    keys = session_keys_in_redis(redis_client, session.session_id)
    assert keys
    redis_client.delete(*keys)  # as expiry, or a delete through another API process, would
    with pytest.raises(CMANPError) as err:
        client.add_context(session.session_id, [0.3], [0.4])
    assert err.value.status == 404
    assert session_keys_in_redis(redis_client, session.session_id) == []


def test_another_tenant_cannot_post_to_a_cached_session(server: str, client: CMANPClient) -> None:
    session = client.create_session()
    client.add_context(session.session_id, [0.1], [0.2])
    r = httpx.post(
        f"{server}/v1/sessions/{session.session_id}/context",
        json={"x": [[0.5]], "y": [[0.5]]},
        headers={"Authorization": f"Bearer {API_KEYS['bob']}"},
    )
    assert r.status_code == 404
    assert client.get_session(session.session_id).num_points == 1


def test_the_cache_is_bounded_and_evicted_sessions_are_read_again(redis_server) -> None:
    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        store = SessionStore(redis, fold_threshold=8, max_points_per_request=4, idempotency_keys=2, cached_sessions=2)
        ids = [f"cache-test-{i}" for i in range(3)]
        for sid in ids:
            await store.create(Session(sid, "alice", "m", "f" * 32, "test", {}, 0.0, 60), b"state")
        assert list(store._fixed) == ids[1:]  # the oldest was evicted
        await redis.hset(session_keys(ids[0])[0], "num_points", "7")  # only a real read can see this
        assert (await store.fixed(ids[0], "alice")).num_points == 7
        assert list(store._fixed) == [ids[2], ids[0]]
        with pytest.raises(NotFoundError):
            await store.fixed(ids[2], "bob")
        await redis.delete(*(k for sid in ids for k in session_keys(sid)))
        await redis.aclose()

    anyio.run(run)


def test_cached_sessions_are_not_tracked_by_the_garbage_collector(redis_server) -> None:
    """Regression: the cache held Session objects, and 10,000 of them made every full collection
    under load walk 20,000 more objects (20-50 ms stalls of the worker)."""

    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        store = SessionStore(redis, fold_threshold=8, max_points_per_request=4, idempotency_keys=2, cached_sessions=8)
        x_map, y_map = AffineMap.from_lists([1.5, -2.0], [0.5, 3.0]), AffineMap.from_lists([4.0], [2.5])
        params = RegressionParams(x_map, y_map, y_auto=True, y_fixed=False).to_fields()
        created = Session("gc-test", "alice", "m", "f" * 32, REGRESSION.name, params, 1234.5, 60)
        await store.create(created, b"state")
        gc.collect()
        assert store._fixed and not any(gc.is_tracked(fields) for fields in store._fixed.values())
        cached = await store.fixed("gc-test", "alice")  # a hit: rebuilt from the tuple
        assert (cached.tenant, cached.model, cached.fingerprint) == ("alice", "m", "f" * 32)
        assert (cached.kind, cached.created_at, cached.ttl_seconds) == ("regression", 1234.5, 60)
        got_params = REGRESSION.params(cached)
        assert (got_params.dim_x, got_params.dim_y, got_params.y_provisional) == (2, 1, True)
        for got, want in ((got_params.x_transform, x_map), (got_params.y_transform, y_map)):
            assert got.shift.tolist() == want.shift.tolist() and got.scale.tolist() == want.scale.tolist()
        await redis.delete(*session_keys("gc-test"))
        await redis.aclose()

    anyio.run(run)
