"""A post that takes the log to the fold threshold starts the fold and answers without waiting for
it; that fold folds again while posts keep the log at the threshold.

Regression: the post that started a fold waited for it (snapshot, model update, commit), and on a
hot session those posts were the p99 (100-230 ms against 15-20 ms with folds out of the way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from service.store import Fold, Session, SessionStore, Snapshot, session_keys

THRESHOLD, PER_REQUEST = 4, 8  # the log is full at 12 points
POINT = b"\0" * 8  # one (x, y) row of float32


class HeldFold:
    """A fold computation that records the log size it folds; each fold ends only once released."""

    def __init__(self) -> None:
        self.folded: list[int] = []
        self._releases = asyncio.Semaphore(0)

    def release(self, folds: int = 100) -> None:
        for _ in range(folds):
            self._releases.release()

    async def __call__(self, snapshot: Snapshot) -> Fold:
        self.folded.append(snapshot.log_points)
        await self._releases.acquire()
        return Fold(b"state", {})

    async def started(self, folds: int = 1) -> None:
        async def poll() -> None:
            while len(self.folded) < folds:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), 5)


@asynccontextmanager
async def one_session(redis_server, session_id: str) -> AsyncIterator[tuple[Redis, SessionStore, Session]]:
    redis = Redis.from_url(redis_server.url)
    store = SessionStore(redis, fold_threshold=THRESHOLD, max_points_per_request=PER_REQUEST, idempotency_keys=2)
    session = await store.create(Session(session_id, "t", "m", "f", "test", {}, 0.0, 60), b"state")
    try:
        yield redis, store, session
    finally:
        await redis.delete(*session_keys(session_id))
        await redis.aclose()


@asynccontextmanager
async def another_process(redis_server) -> AsyncIterator[SessionStore]:
    """A second store on the same Redis: what another server process would be."""
    store = SessionStore(
        Redis.from_url(redis_server.url),
        fold_threshold=THRESHOLD,
        max_points_per_request=PER_REQUEST,
        idempotency_keys=2,
    )
    try:
        yield store
    finally:
        await store.redis.aclose()


async def counters(redis: Redis, session: Session) -> tuple[int, int, int]:
    """log_points, fold_epoch and num_points of the session, as Redis holds them."""
    meta = await redis.hgetall(session_keys(session.session_id)[0])
    return int(meta[b"log_points"]), int(meta[b"fold_epoch"]), int(meta[b"num_points"])


def post(store: SessionStore, session: Session, points: int, compute: Callable[[Snapshot], Awaitable[Fold]]):  # noqa: ANN201
    return asyncio.wait_for(store.append(session, POINT * points, points, None, compute), 5)


def test_a_post_does_not_wait_for_the_fold_it_starts(redis_server) -> None:
    async def scenario() -> None:
        async with one_session(redis_server, "bg-fold") as (redis, store, session):
            fold, committed = HeldFold(), []
            appended = await asyncio.wait_for(store.append(session, POINT * 4, 4, None, fold, committed.append), 5)
            assert appended.num_points == 4  # answered while its fold is still running
            await fold.started()
            assert fold.folded == [4] and committed == []
            # Posts during the fold leave the log to it: they start no fold of their own.
            for _ in range(5):
                await asyncio.wait_for(store.append(session, POINT, 1, None, fold, committed.append), 5)
            assert fold.folded == [4] and await counters(redis, session) == (9, 0, 9)
            fold.release()
            await asyncio.wait_for(store.wait_for_folds(), 5)
            # The fold folded again, since its first commit left 5 points: at the threshold still.
            assert fold.folded == [4, 5] and len(committed) == 2
            assert await counters(redis, session) == (0, 2, 9)

    asyncio.run(scenario())


def test_a_post_landing_just_after_the_folds_last_read_is_folded_too(redis_server) -> None:
    """The fold reads the log, finds it below the threshold; a post lands right after that read
    and its answer comes back first: it finds the fold in flight, so the fold must read again."""

    async def scenario() -> None:
        async with one_session(redis_server, "bg-race") as (redis, store, session):
            fold = HeldFold()
            fold.release()
            read = store.snapshot
            reads = 0

            async def snapshot_then_post(session_id: str, tenant: str) -> Snapshot:
                nonlocal reads
                reads += 1
                got = await read(session_id, tenant)
                if reads == 2:  # the read after the first commit: the log is empty here
                    assert got.log_points == 0
                    await post(store, session, THRESHOLD, fold)  # its fold is in flight: it starts none
                return got

            store.snapshot = snapshot_then_post  # type: ignore[method-assign]
            await post(store, session, THRESHOLD, fold)
            await asyncio.wait_for(store.wait_for_folds(), 5)
            assert fold.folded == [THRESHOLD, THRESHOLD]  # the fold read again and folded the late post
            assert await counters(redis, session) == (0, 2, 2 * THRESHOLD)

    asyncio.run(scenario())


def test_a_post_refused_by_a_full_log_goes_on_after_the_first_commit(redis_server) -> None:
    """It waits for room, not for the end of a fold that keeps going while others keep posting."""

    async def scenario() -> None:
        async with one_session(redis_server, "bg-full") as (redis, store, session):
            fold = HeldFold()
            await post(store, session, THRESHOLD, fold)
            await fold.started()
            await post(store, session, PER_REQUEST, fold)  # the log is full now (12 points)
            refused = asyncio.create_task(post(store, session, 1, fold))
            await asyncio.sleep(0.05)
            assert not refused.done()  # no room until the fold commits
            fold.release(1)
            await refused  # room after the first commit, while the fold goes on with the 8 points left
            await fold.started(2)
            assert fold.folded == [THRESHOLD, PER_REQUEST]
            fold.release()
            await asyncio.wait_for(store.wait_for_folds(), 5)
            log_points, folds, points = await counters(redis, session)
            assert points == THRESHOLD + PER_REQUEST + 1 == sum(fold.folded) + log_points
            assert folds == len(fold.folded) and log_points < THRESHOLD

    asyncio.run(scenario())


def test_shutdown_cancels_a_fold_that_does_not_end_and_the_points_stay(redis_server) -> None:
    async def scenario() -> None:
        async with one_session(redis_server, "bg-stuck") as (redis, store, session):
            fold = HeldFold()  # never released
            await post(store, session, THRESHOLD, fold)
            await fold.started()
            await asyncio.wait_for(store.wait_for_folds(timeout=0.1), 5)
            assert not store._background and not store._folding  # cancelled, and its claim released
            assert await counters(redis, session) == (THRESHOLD, 0, THRESHOLD)  # the log still holds them

    asyncio.run(scenario())


def test_a_fold_of_a_session_deleted_meanwhile_ends_quietly(redis_server, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with one_session(redis_server, "bg-deleted") as (redis, store, session):
            fold = HeldFold()
            await post(store, session, THRESHOLD, fold)
            await fold.started()
            await store.delete(session.session_id, "t")
            fold.release()
            await asyncio.wait_for(store.wait_for_folds(), 5)
            assert not store._folding and await redis.exists(*session_keys(session.session_id)) == 0

    with caplog.at_level(logging.WARNING, logger="service.store"):
        asyncio.run(scenario())
    assert caplog.records == []


def test_processes_do_not_fold_the_same_log_at_once_and_none_is_left_behind(redis_server) -> None:
    """Two stores on one session stand for two server processes. While one folds, the other's post
    past the threshold computes no fold of its own (the lease); the holder reads the log again after
    its commit and folds that post's points; a post of the other store that finds the log full goes
    on after that commit, without waiting for the lease to expire.

    Regression: both processes folded a hot session's log at once and one commit was dropped (163
    folds computed, 86 committed, in bench.service_load's hot scenarios)."""

    async def scenario() -> None:
        async with one_session(redis_server, "two-procs") as (redis, first, session):
            async with another_process(redis_server) as second:
                fold = HeldFold()
                await post(first, session, THRESHOLD, fold)
                await fold.started()  # the first store folds 4 points, held
                await post(second, session, THRESHOLD, fold)  # past the threshold again: no second fold
                await asyncio.sleep(0.05)
                assert fold.folded == [THRESHOLD] and not second._background  # the lease: no second fold
                await post(second, session, PER_REQUEST - THRESHOLD, fold)  # the log is full now (12 points)
                refused = asyncio.create_task(post(second, session, 1, fold))
                await asyncio.sleep(0.05)
                assert not refused.done()
                fold.release()
                await refused  # after the first store's commit, well before the lease could expire
                await asyncio.wait_for(first.wait_for_folds(), 5)
                await asyncio.wait_for(second.wait_for_folds(), 5)
                log_points, folds, points = await counters(redis, session)
                assert points == THRESHOLD + PER_REQUEST + 1 == sum(fold.folded) + log_points
                assert folds == len(fold.folded) and log_points < THRESHOLD  # every fold computed was committed
                assert fold.folded[1] >= THRESHOLD  # the holder's second read found the other store's posts

    asyncio.run(scenario())


@pytest.mark.xfail(
    strict=True,
    reason="known gap: a post that reaches the threshold in one process while another holds the lease for "
    "its last read leaves the log at the threshold until the next post. Both fixes tried (the refused "
    "claim marks the lease so the holder reads again; the refused fold waits for the lease) made hot "
    "sessions' posts wait 250-900 ms at p99 in bench.service_load (docs/SERVICE.md, 'The session store')",
)
def test_a_post_whose_fold_another_process_holds_is_folded_by_the_holder(redis_server) -> None:
    """The holder's last read of the log (lease held) finds it below the threshold; a post of
    another store then takes the log to the threshold and finds the lease taken, and leaves the
    fold to the holder, which does not read again (found by review)."""

    async def scenario() -> None:
        async with one_session(redis_server, "lease-mark") as (redis, first, session):
            async with another_process(redis_server) as second:
                fold, reads, in_read, gate = HeldFold(), [], asyncio.Event(), asyncio.Event()
                fold.release()
                original = first.snapshot

                async def slow_snapshot(session_id: str, tenant: str) -> Snapshot:
                    got = await original(session_id, tenant)
                    reads.append(got.log_points)
                    if len(reads) == 2:  # the read after the first commit, with the lease held
                        in_read.set()
                        await gate.wait()
                    return got

                first.snapshot = slow_snapshot  # type: ignore[method-assign]
                await post(first, session, THRESHOLD, fold)
                await asyncio.wait_for(in_read.wait(), 5)
                await post(second, session, THRESHOLD, fold)  # at the threshold; the lease is the first's
                await asyncio.sleep(0.05)
                assert fold.folded == [THRESHOLD]  # it computed nothing: the lease was the first store's
                gate.set()
                await asyncio.wait_for(first.wait_for_folds(), 5)
                await asyncio.wait_for(second.wait_for_folds(), 5)
                assert reads[1] == 0  # the holder's second read came before the other store's post
                log_points, folds, points = await counters(redis, session)
                assert log_points < THRESHOLD and folds == 2 and points == 2 * THRESHOLD

    asyncio.run(scenario())
