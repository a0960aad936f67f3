"""A post that takes the log to the fold threshold starts the fold and answers without waiting for
it; that fold folds again while posts keep the log at the threshold.

Regression: the post that started a fold waited for it (snapshot, model update, commit), and on a
hot session those posts were the p99 (100-230 ms against 15-20 ms with folds out of the way).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from service.store import Fold, Session, SessionStore, Snapshot, session_keys
from service.transforms import AffineMap

THRESHOLD = 4
POINT = b"\0" * 8  # one (x, y) row of float32


def test_a_post_does_not_wait_for_the_fold_it_starts(redis_server) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_server.url)
        store = SessionStore(redis, fold_threshold=THRESHOLD, max_points_per_request=8, idempotency_keys=2)
        identity = AffineMap.identity(1)
        session = await store.create(Session("bg-fold", "t", "m", "f", identity, identity, 0.0, 60), b"state")
        meta_key = session_keys(session.session_id)[0]
        release, folded = asyncio.Event(), []

        async def compute(snapshot: Snapshot) -> Fold:
            folded.append(snapshot.log_points)
            await release.wait()  # the fold cannot end until the test says so
            return Fold(b"state", {})

        committed: list[Fold] = []
        appended = await asyncio.wait_for(store.append(session, POINT * 4, 4, None, compute, committed.append), 5)
        assert appended.num_points == 4  # answered while its fold is still running
        while not folded:
            await asyncio.sleep(0.01)
        assert folded == [4] and committed == []
        # Posts during the fold leave the log to it: they start no fold of their own.
        for _ in range(5):
            await asyncio.wait_for(store.append(session, POINT, 1, None, compute, committed.append), 5)
        assert folded == [4] and int(await redis.hget(meta_key, "log_points")) == 9
        release.set()
        await asyncio.wait_for(store.wait_for_folds(), 5)
        # The fold folded again, since its first commit left 5 points: at the threshold still.
        assert folded == [4, 5] and len(committed) == 2
        meta = await redis.hgetall(meta_key)
        assert (int(meta[b"log_points"]), int(meta[b"fold_epoch"]), int(meta[b"num_points"])) == (0, 2, 9)
        await redis.delete(*session_keys(session.session_id))
        await redis.aclose()

    asyncio.run(scenario())
