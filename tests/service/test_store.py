"""The session store on a real Redis: what it keeps of a session's kind, parameters, folds and order.

The store never interprets a session's state, log or parameters; these tests give it opaque ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from redis.asyncio import Redis

from service.errors import ConflictError
from service.store import Fold, Order, Session, SessionStore, Snapshot, session_keys

THRESHOLD = 4


def new_store(redis: Redis) -> SessionStore:
    return SessionStore(redis, fold_threshold=THRESHOLD, max_points_per_request=8, idempotency_keys=4)


@asynccontextmanager
async def store_on(redis_server) -> AsyncIterator[tuple[Redis, SessionStore]]:
    redis = Redis.from_url(redis_server.url)
    try:
        yield redis, new_store(redis)
    finally:
        await redis.aclose()


def run(redis_server, scenario: Callable[[Redis, SessionStore], Awaitable[None]], session_ids: list[str]) -> None:
    async def main() -> None:
        async with store_on(redis_server) as (redis, store):
            try:
                await scenario(redis, store)
            finally:
                await redis.delete(*(k for sid in session_ids for k in session_keys(sid)))

    anyio.run(main)


async def no_fold(snapshot: Snapshot) -> Fold:
    raise AssertionError("no fold expected")


def test_a_session_keeps_its_kind_and_parameters(redis_server) -> None:
    params = {"unit": "metres", "window": "[1, 2]"}
    created = Session("kept", "t", "m", "f", "events", params, 12.5, 60)

    async def scenario(redis: Redis, store: SessionStore) -> None:
        await store.create(created, b"empty")
        for read in (
            await store.get("kept", "t"),
            (await store.snapshot("kept", "t")).session,
            await store.fixed("kept", "t"),  # from the per-process cache
            await new_store(redis).fixed("kept", "t"),  # another process: read from Redis
        ):
            assert (read.kind, dict(read.params), read.created_at, read.ttl_seconds) == ("events", params, 12.5, 60)

    run(redis_server, scenario, ["kept"])


def test_a_session_stored_before_kinds_were_recorded_loads_as_a_regression_session(redis_server) -> None:
    """The meta hash exactly as the service wrote it before kinds (no 'kind' field)."""
    old_meta = {
        "tenant": "t",
        "model": "tiny",
        "fingerprint": "f" * 32,
        "x_transform": '{"shift":[50.0],"scale":[25.0]}',
        "y_transform": '{"shift":[0.0],"scale":[1.0]}',
        "created_at": "1700000000.25",
        "ttl_ms": "60000",
        "num_points": "3",
        "version": "2",
        "log_points": "3",
        "fold_epoch": "0",
        "idem_next": "0",
        "y_auto": "0",
        "y_fixed": "1",
        "state_bytes": "1234",
        "sum:points": "3.0",
    }

    async def scenario(redis: Redis, store: SessionStore) -> None:
        await redis.hset(session_keys("old")[0], mapping=old_meta)
        await redis.pexpire(session_keys("old")[0], 60_000)
        session = await store.get("old", "t")
        assert session.kind == "regression"
        assert dict(session.params) == {k: old_meta[k] for k in ("x_transform", "y_transform", "y_auto", "y_fixed")}
        assert (session.num_points, session.version, session.state_bytes, session.sums) == (3, 2, 1234, {"points": 3.0})

    run(redis_server, scenario, ["old"])


def test_parameters_may_not_take_the_names_of_the_store_s_own_fields() -> None:
    for name in ("num_points", "kind", "sum:anything"):
        with pytest.raises(ValueError, match="meta fields"):
            Session("s", "t", "m", "f", "regression", {name: "1"}, 0.0, 60)


def test_a_fold_sets_its_fields_and_adds_its_sums_exactly_once(redis_server) -> None:
    session = Session("folding", "t", "m", "f", "test", {"scale": "provisional"}, 0.0, 60)
    folds: list[Snapshot] = []

    async def compute(snapshot: Snapshot) -> Fold:
        folds.append(snapshot)
        return Fold(b"state", {"points": float(snapshot.log_points)}, {"scale": "fixed"})

    async def scenario(redis: Redis, store: SessionStore) -> None:
        await store.create(session, b"empty")
        await store.append(session, b"\0" * 8, 2, None, compute)
        await store.append(session, b"\1" * 8, 2, None, compute)  # the log reaches the threshold: a fold
        await store.wait_for_folds()
        got = await store.snapshot("folding", "t")
        assert len(folds) == 1 and folds[0].log == [b"\0" * 8, b"\1" * 8]
        assert (got.state, got.log, dict(got.session.params), got.session.sums) == (
            b"state",
            [],
            {"scale": "fixed"},
            {"points": 4.0},
        )

    run(redis_server, scenario, ["folding"])


def test_a_post_that_goes_back_is_refused_with_409_and_changes_nothing(redis_server) -> None:
    session = Session("ordered", "t", "m", "f", "events", {}, 0.0, 60)

    async def scenario(redis: Redis, store: SessionStore) -> None:
        await store.create(session, b"empty")
        await store.append(session, b"a", 1, None, no_fold, order=Order("last_time", 1.0, 2.5))
        await store.append(session, b"b", 1, None, no_fold, order=Order("last_time", 2.5, 3.0))  # ties are fine
        before = await store.snapshot("ordered", "t")
        with pytest.raises(ConflictError, match=r"last_time=2\.0, before the session's last posted last_time=3\.0"):
            await store.append(session, b"c", 1, "key", no_fold, order=Order("last_time", 2.0, 4.0))
        after = await store.snapshot("ordered", "t")
        assert after == before
        assert after.session.params == {"last_time": "3.0"} and after.log == [b"a", b"b"]
        assert await redis.get(session_keys("ordered")[3]) is None  # its idempotency key was not recorded either

    run(redis_server, scenario, ["ordered"])


def test_a_replayed_post_answers_as_before_although_the_order_has_moved_on(redis_server) -> None:
    session = Session("replayed", "t", "m", "f", "events", {}, 0.0, 60)

    async def scenario(redis: Redis, store: SessionStore) -> None:
        await store.create(session, b"empty")
        first = await store.append(session, b"a", 1, "k1", no_fold, order=Order("last_time", 1.0, 1.0))
        await store.append(session, b"b", 1, "k2", no_fold, order=Order("last_time", 5.0, 5.0))
        again = await store.append(session, b"a", 1, "k1", no_fold, order=Order("last_time", 1.0, 1.0))
        assert again.replayed and (again.num_points, again.version) == (first.num_points, first.version)
        assert (await store.snapshot("replayed", "t")).log == [b"a", b"b"]

    run(redis_server, scenario, ["replayed"])
