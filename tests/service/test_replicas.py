"""Two API processes share one Redis; clients alternate between them.

No update is lost: every post is acknowledged, and the session equals batch conditioning on all
the points, although both replicas fold the same session's log concurrently (every 16 points).
Idempotency holds across replicas: one key posted to both at the same moment is applied once,
and both get the same answer.

This fails if a replica keeps session state in its own memory (the other one would not see its
points), if the fold commit let one replica overwrite the other's fold (points lost or doubled),
or if idempotency records were per process (the key would be applied twice).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from service.embedded_redis import EmbeddedRedis
from service.store import session_keys
from tests.service.helpers import sample_points
from tests.service.history import History, check_session, post_point, write
from tests.service.processes import service_env
from tools.service_process import ServiceProcess

WRITERS, POINTS, SHARED_KEYS = 4, 400, 20


def post_to_both(urls: list[str], session_id: str, i: int, x: np.ndarray, y: np.ndarray) -> list[httpx.Response]:
    """Post point ``i`` with its key to every replica at the same moment."""
    barrier = threading.Barrier(len(urls))

    def post(url: str) -> httpx.Response:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            return post_point(http, url, session_id, i, x, y)

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(post, urls))


def test_two_replicas_lose_nothing_and_share_idempotency(
    tmp_path: Path, checkpoint_dir: Path, tiny_net, redis_server: EmbeddedRedis, redis_client, figures
) -> None:
    env = service_env(checkpoint_dir, redis_url=redis_server.url, fold_threshold_points=16)
    replicas = [ServiceProcess(env, tmp_path / f"replica-{i}.log") for i in range(2)]
    x, y = sample_points(POINTS + SHARED_KEYS, seed=21)
    try:
        for replica in replicas:
            replica.start()
        urls = [replica.url for replica in replicas]
        session_id = httpx.post(f"{urls[0]}/v1/sessions", json={}).json()["session_id"]

        history = History()
        for thread in write(urls, session_id, x[:POINTS], y[:POINTS], WRITERS, history):
            thread.join(timeout=120)
        assert history.failed == {} and sorted(history.acked) == list(range(POINTS))

        answers = [post_to_both(urls, session_id, i, x, y) for i in range(POINTS, POINTS + SHARED_KEYS)]
        for pair in answers:
            assert [r.status_code for r in pair] == [200, 200]
            assert sorted(r.headers.get("Idempotent-Replayed") == "true" for r in pair) == [False, True]
            assert pair[0].json() == pair[1].json()
        check_session(urls[1], session_id, list(range(POINTS + SHARED_KEYS)), x, y, tiny_net, redis_client)
        folds = int(redis_client.hget(session_keys(session_id)[0], "fold_epoch"))
        figures(
            f"two replicas, alternating: {POINTS} posts acknowledged, {folds} folds; {SHARED_KEYS} keys "
            f"posted to both at once, each applied once; lost 0"
        )
    finally:
        for replica in replicas:
            replica.stop()
