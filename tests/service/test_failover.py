"""A master failover keeps every acknowledged point with
``CMANP_REDIS_WAIT_REPLICAS=1``, and loses the unreplicated ones without it.

A local Redis Cluster of 3 masters with one replica each (bundled redis-servers, a 1 s
``cluster-node-timeout``). Four writers post single points with unique ids and keys to one
session (``tests.service.history``); its master's replica falls behind (``CLIENT PAUSE`` on the
replica: it stops applying the replication stream, as a slow or distant replica would), then the
master is killed with SIGKILL and the replica takes over; the old master rejoins as its replica.
Every id is then re-posted with its key: an acknowledged id that is not a replay was lost.

Without WAIT the master acknowledges posts its replica never applied, and the failover loses them
(the test requires some, or the scenario would prove nothing). With WAIT those posts answer 503
instead (in doubt: their retry applies them once), and no acknowledged point is lost. Either way
the session then equals batch conditioning on exactly the ids posted.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from service.store import session_keys
from tests.service.helpers import live_server, make_settings, sample_points
from tests.service.history import History, check_session, resolve, wait_for_acks, write
from tests.service.processes import LocalRedisCluster

# Writers stop at their first failed post, so unposted points cost nothing; there must be enough
# that none runs out before the master dies (a loaded 2-core host once posted all of 2,000 first).
WRITERS, POINTS = 4, 8_000
ACKS_BEFORE_THE_LAG = 40
LAG_SECONDS = 0.6  # posts while the replica applies nothing, before the master dies
PAUSE_MS = 3_000  # the replica's pause; it outlasts the master
NODE_TIMEOUT_MS = 1_000
WAIT_TIMEOUT_MS = 250


def wait_for_failover(cluster: LocalRedisCluster, replica_port: int, timeout: float = 30.0) -> None:
    """Until the replica is a master and the cluster is up again."""
    deadline = time.monotonic() + timeout
    with redis.Redis(port=replica_port) as replica:
        while replica.info("replication")["role"] != "master" or replica.cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "no failover"
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait", "no-wait"])
def test_a_failover_keeps_every_acknowledged_point_with_wait(
    tmp_path: Path, checkpoint_dir: Path, tiny_net, wait_replicas: int, figures
) -> None:
    cluster = LocalRedisCluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS)
    cluster.start()
    settings = make_settings(
        cluster.url,
        checkpoint_dir,
        redis_cluster=True,
        api_keys="",  # the history's writers send no Authorization header
        redis_timeout_seconds=2,
        redis_wait_replicas=wait_replicas,
        redis_wait_timeout_ms=WAIT_TIMEOUT_MS,
        fold_threshold_points=16,  # folds race the failover too
    )
    x, y = sample_points(POINTS, seed=22)
    try:
        with live_server(settings) as url:
            session_id = httpx.post(f"{url}/v1/sessions", json={}).json()["session_id"]
            master, (replica,) = cluster.serving(session_keys(session_id)[0])
            history = History()
            threads = write([url], session_id, x, y, WRITERS, history)
            wait_for_acks(history, ACKS_BEFORE_THE_LAG, threads)

            with redis.Redis(port=replica.port) as lagging:
                lagging.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
            lag_began = time.monotonic()
            time.sleep(LAG_SECONDS)
            master.process.kill()  # SIGKILL: what it had not sent to its replica is gone
            master.process.wait()
            for thread in threads:
                thread.join(timeout=60)
            assert len(history.posted) < POINTS, "the writers ran out of points before the failover"

            wait_for_failover(cluster, replica.port)
            # The dead master comes back as the new master's replica (as a restarted pod would):
            # until then a write on that shard has no replica to confirm it, and WAIT answers 503.
            cluster.rejoin(master)
            lost = resolve(url, session_id, x, y, history)
            with redis.RedisCluster(host="127.0.0.1", port=replica.port) as raw:
                check_session(url, session_id, history.posted, x, y, tiny_net, raw)
    finally:
        cluster.stop()

    acked, in_doubt = len(history.acked), len(history.failed)
    lagged = history.acked_since(lag_began)
    mode = f"WAIT {wait_replicas} replica ({WAIT_TIMEOUT_MS} ms)" if wait_replicas else "no WAIT"
    figures(
        f"master kill -9 and failover, {mode}: {acked} acknowledged ({lagged} while the replica lagged), "
        f"{in_doubt} in doubt, lost {len(lost)}"
    )
    if wait_replicas:
        assert lost == [], f"{len(lost)} acknowledged points lost despite WAIT"
        # Nothing was acknowledged while the replica lagged, but the posts in flight as it began.
        assert lagged <= WRITERS, lagged
    else:
        # The scenario must lose what the replica never got, or the 0 lost above would prove nothing.
        assert lost, f"nothing lost without WAIT ({lagged} acknowledged while the replica lagged)"
