"""``CMANP_REDIS_WAIT_REPLICAS``: an acknowledged write is on that many replicas; one they do not
confirm in time answers 503 with Retry-After, and its retry with the same Idempotency-Key is
applied once (issue 22). One redis-server and its replica, both real; the cluster and a failover
are in test_failover.py.

This fails if a write were acknowledged before the replica had it, if a replay answered 200
while the replica still lacked the original post, if a create that could not be confirmed left
its session (or its quota slot) behind, or if the pipelined script (EVALSHA) did not survive a
script cache flush. That the WAIT shares the write's connection under concurrency is what
test_failover.py shows (0 acknowledged points lost with four concurrent writers).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from service.embedded_redis import EmbeddedRedis
from service.store import session_keys
from tests.service.helpers import AUTH, live_server, make_settings

WAIT_TIMEOUT_MS = 150
PAUSE_MS = 1_000


def replica_of(master: EmbeddedRedis, data_dir: Path) -> EmbeddedRedis:
    """A started replica of ``master`` with its data in sync."""
    replica = EmbeddedRedis(data_dir)
    replica.start()
    with redis.Redis(port=replica.port) as client:
        client.replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 20
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.02)
    return replica


def post(http: httpx.Client, session_id: str, key: str, x: float) -> httpx.Response:
    body = {"x": [[x]], "y": [[0.5]]}
    return http.post(f"/v1/sessions/{session_id}/context", json=body, headers={"Idempotency-Key": key})


def test_writes_wait_for_the_replica_and_a_retry_applies_once(
    own_redis: EmbeddedRedis, checkpoint_dir: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        own_redis.url, checkpoint_dir, redis_wait_replicas=1, redis_wait_timeout_ms=WAIT_TIMEOUT_MS
    )
    master = redis.Redis.from_url(own_redis.url)
    with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        # No replica: nothing can be confirmed, and a create leaves nothing behind.
        refused = http.post("/v1/sessions", json={})
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "replicas did not confirm" in refused.json()["detail"]
        assert list(master.scan_iter(match="cmanp:{*")) == []
        assert master.zcard("cmanp:tenant:alice:sessions") == 0  # its quota slot was given back

        replica = replica_of(own_redis, tmp_path / "replica")
        try:
            copy = redis.Redis(port=replica.port)
            session_id = http.post("/v1/sessions", json={}).json()["session_id"]
            meta = session_keys(session_id)[0]
            assert copy.exists(meta)  # acknowledged: on the replica already, no waiting here
            assert post(http, session_id, "k0", 0.1).status_code == 200
            assert copy.hget(meta, "num_points") == b"1"

            # The replica falls behind: the master applies the post, but it is not confirmed.
            copy.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
            paused = time.monotonic()
            unconfirmed = post(http, session_id, "k1", 0.2)
            assert unconfirmed.status_code == 503 and unconfirmed.headers["Retry-After"]
            assert master.hget(meta, "num_points") == b"2"  # in doubt: applied on the master
            # Its replay is not confirmed either while the replica still lags (the original is not on it).
            assert post(http, session_id, "k1", 0.2).status_code == 503
            time.sleep(max(0.0, PAUSE_MS / 1000 - (time.monotonic() - paused)) + 0.1)
            retried = post(http, session_id, "k1", 0.2)
            assert retried.status_code == 200 and retried.headers.get("Idempotent-Replayed") == "true"
            assert retried.json()["num_points"] == 2  # applied once
            assert copy.hget(meta, "num_points") == b"2"

            master.script_flush()  # as after a Redis restart: the write loads its script and goes on
            assert post(http, session_id, "k2", 0.3).json()["num_points"] == 3
            assert http.delete(f"/v1/sessions/{session_id}").status_code == 204
            assert not copy.exists(meta)
            copy.close()
        finally:
            replica.stop()
