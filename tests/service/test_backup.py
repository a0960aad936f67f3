"""The backup and restore procedures of docs/OPERATIONS.md, run as written: BGREWRITEAOF and copy the
AOF; BGSAVE and copy dump.rdb; restore each into a fresh redis-server and serve it.

The restored session must hold exactly the points acknowledged before the backup (a folded state
and an unfolded log), not the post made after it; this fails if a step of the procedure does not
capture the data, e.g. an RDB restored while ``appendonly yes`` makes Redis ignore it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import redis

from service.client import CMANPClient
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import (
    API_KEYS,
    assert_same_state,
    expected_prediction,
    live_server,
    make_settings,
    sample_points,
    stored_state,
)

QUERIES = np.linspace(-2.0, 2.0, 9)[:, None]


def wait_for(raw: redis.Redis, field: str, timeout: float = 30.0) -> None:
    """Wait until INFO persistence shows ``field`` at 0 (a background rewrite or save has finished)."""
    deadline = time.monotonic() + timeout
    while raw.info("persistence")[field] != 0:
        assert time.monotonic() < deadline, f"{field} still running"
        time.sleep(0.05)


def check_restored(server: EmbeddedRedis, session_id: str, x: np.ndarray, y: np.ndarray, net, checkpoint_dir) -> None:
    with (
        live_server(make_settings(server.url, checkpoint_dir)) as url,
        CMANPClient(url, API_KEYS["alice"]) as client,
        redis.Redis.from_url(server.url) as raw,
    ):
        assert client.get_session(session_id).num_points == len(x)
        mean, _ = expected_prediction(net, x, y, QUERIES)
        np.testing.assert_allclose(client.predict(session_id, QUERIES).mean, mean, rtol=0, atol=1e-4)
        assert_same_state(stored_state(raw, session_id, net), x, y, net)


def test_aof_and_rdb_backups_restore_the_sessions(tmp_path: Path, checkpoint_dir: Path, tiny_net) -> None:
    x, y = sample_points(310, seed=31)
    live = EmbeddedRedis(tmp_path / "live", options={"appendfsync": "always"})
    live.start()
    try:
        with (
            live_server(make_settings(live.url, checkpoint_dir)) as url,
            CMANPClient(url, API_KEYS["alice"]) as client,
            redis.Redis.from_url(live.url) as raw,
        ):
            session_id = client.create_session().session_id
            client.add_context(session_id, x[:280], y[:280])  # folded into the state
            client.add_context(session_id, x[280:300], y[280:300])  # still in the log

            raw.bgrewriteaof()
            wait_for(raw, "aof_rewrite_in_progress")
            wait_for(raw, "aof_rewrite_scheduled")
            (tmp_path / "aof-backup").mkdir()
            shutil.copy(live.data_dir / "appendonly.aof", tmp_path / "aof-backup" / "appendonly.aof")

            raw.bgsave()
            wait_for(raw, "rdb_bgsave_in_progress")
            (tmp_path / "rdb-backup").mkdir()
            shutil.copy(live.data_dir / "dump.rdb", tmp_path / "rdb-backup" / "dump.rdb")

            client.add_context(session_id, x[300:], y[300:])  # after the backups: not in them
    finally:
        live.stop()

    from_aof = EmbeddedRedis(tmp_path / "aof-backup")
    from_aof.start()  # replays the copied AOF
    try:
        check_restored(from_aof, session_id, x[:300], y[:300], tiny_net, checkpoint_dir)
    finally:
        from_aof.stop()

    # From the RDB: load it with appendonly off, then switch the AOF on, which writes it from memory.
    from_rdb = EmbeddedRedis(tmp_path / "rdb-backup", options={"appendonly": "no"})
    from_rdb.start()
    with redis.Redis.from_url(from_rdb.url) as raw:
        raw.config_set("appendonly", "yes")
        wait_for(raw, "aof_rewrite_in_progress")
        wait_for(raw, "aof_rewrite_scheduled")
    from_rdb.stop()
    restarted = EmbeddedRedis(tmp_path / "rdb-backup")  # appendonly yes: loads the new AOF, not the RDB
    restarted.start()
    try:
        check_restored(restarted, session_id, x[:300], y[:300], tiny_net, checkpoint_dir)
    finally:
        restarted.stop()
