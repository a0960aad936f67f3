"""The service on a local 3-master Redis Cluster (``CMANP_REDIS_CLUSTER=true``).

The end-to-end, idempotency and bad-input modules run every test on the cluster too
(``BOTH_BACKENDS``). Here: a session's keys share one hash slot, so its Lua scripts (which touch
all of them atomically) are legal in a cluster, and sessions spread over the masters, so the
cluster runs are not secretly served by one node. And a master killed with SIGKILL: 503 with
Retry-After and a failing /readyz, then recovery by itself once it restarts from its AOF.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from service.client import CMANPClient, CMANPError, RetryPolicy
from service.store import KEY_PARTS, session_keys
from tests.service.helpers import (
    API_KEYS,
    DEFAULT_FOLD_THRESHOLD,
    live_server,
    make_settings,
    sample_points,
    session_keys_in_redis,
    wait_for_folds,
)
from tests.service.processes import LocalRedisCluster

ON_THE_CLUSTER = pytest.mark.parametrize("backend", ["cluster"], indirect=True)  # server/client on the cluster


def sessions_per_node(cluster: LocalRedisCluster, session_ids: list[str]) -> list[dict[str, int]]:
    """For each node: session id -> how many of its keys that node holds (scanned node by node)."""
    found = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            counts = {sid: len(session_keys_in_redis(client, sid)) for sid in session_ids}
        found.append({sid: n for sid, n in counts.items() if n})
    return found


@ON_THE_CLUSTER
def test_a_sessions_keys_share_one_slot(client: CMANPClient, redis_client, redis_cluster: LocalRedisCluster) -> None:
    session_id = client.create_session().session_id
    x, y = sample_points(DEFAULT_FOLD_THRESHOLD, seed=3)
    client.add_context(session_id, x, y)  # a fold, which writes the state
    wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)
    client.add_context(session_id, [0.1, 0.2], [0.3, 0.4], idempotency_key="k")  # the log and the ring too
    with redis.Redis(port=redis_cluster.nodes[0].port) as node:
        slots = {node.execute_command("CLUSTER KEYSLOT", key) for key in session_keys(session_id)}
    # Without the {session_id} hash tag the four keys would hash to different slots (and the
    # scripts would fail with CROSSSLOT): this would then see several slots.
    assert len(slots) == 1
    holders = [found for found in sessions_per_node(redis_cluster, [session_id]) if found]
    assert holders == [{session_id: len(KEY_PARTS)}]  # all its keys, on one node, and nowhere else


@ON_THE_CLUSTER
def test_sessions_spread_over_the_masters(client: CMANPClient, redis_cluster: LocalRedisCluster) -> None:
    session_ids = [client.create_session().session_id for _ in range(12)]
    for i, session_id in enumerate(session_ids):
        client.add_context(session_id, [0.1 * i], [0.5])
    per_node = sessions_per_node(redis_cluster, session_ids)
    # 12 random slots all on one of 3 masters has probability 3 / 3**12 (about 6e-6).
    assert sum(1 for found in per_node if found) >= 2, per_node
    assert sorted(sid for found in per_node for sid in found) == sorted(session_ids)
    assert [client.predict(sid, [0.0]).num_points for sid in session_ids] == [1] * 12


@pytest.mark.slow
def test_a_dead_master_gives_503_and_the_service_recovers(tmp_path: Path, checkpoint_dir: Path) -> None:
    cluster = LocalRedisCluster(tmp_path / "cluster")
    cluster.start()
    settings = make_settings(cluster.url, checkpoint_dir, redis_cluster=True, redis_timeout_seconds=2)
    try:
        with live_server(settings) as url, CMANPClient(url, API_KEYS["alice"], retry=RetryPolicy(retries=0)) as client:
            session_ids: list[str] = []
            while not sessions_per_node(cluster, session_ids)[1]:  # until one lives on the master to kill
                session_ids.append(client.create_session().session_id)
                client.add_context(session_ids[-1], [0.5], [0.5])
            victim = next(iter(sessions_per_node(cluster, session_ids)[1]))

            cluster.nodes[1].process.kill()
            cluster.nodes[1].process.wait()
            # /readyz pings every master: it fails at once, not only after the cluster notices.
            assert httpx.get(f"{url}/readyz").status_code == 503
            with pytest.raises(CMANPError) as err:
                client.add_context(victim, [0.1], [0.1])
            # A 500 here would mean a cluster error escaped the 503 mapping in service.problems.
            assert err.value.status == 503 and "Redis" in err.value.detail

            cluster.nodes[1].start()  # same port and data dir: its AOF and its nodes.conf
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the service did not recover"
                time.sleep(0.1)
            patient = RetryPolicy(retries=50, backoff=0.1, max_backoff=0.5)  # until the cluster state is ok again
            with CMANPClient(url, API_KEYS["alice"], retry=patient) as after:
                for session_id in session_ids:
                    assert after.add_context(session_id, [0.2], [0.2]).num_points == 2  # the refused post never applied
    finally:
        cluster.stop()
