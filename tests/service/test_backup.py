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

import httpx
import numpy as np
import redis

from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import DEFAULT_FOLD_THRESHOLD, live_server, make_settings, sample_points, wait_for_folds
from tests.service.history import History, check_session, write

POINTS = 300  # a fold at 256, and 44 points still in the log


def wait_for(raw: redis.Redis, field: str, timeout: float = 30.0) -> None:
    """Wait until INFO persistence shows ``field`` at 0 (a background rewrite or save has finished)."""
    deadline = time.monotonic() + timeout
    while raw.info("persistence")[field] != 0:
        assert time.monotonic() < deadline, f"{field} still running"
        time.sleep(0.05)


def check_restored(
    server: EmbeddedRedis, session_id: str, x: np.ndarray, y: np.ndarray, checkpoint_dir: Path, net
) -> None:
    """The restored session holds exactly points 0..POINTS-1 (not the one posted after the backups)."""
    settings = make_settings(server.url, checkpoint_dir, api_keys="")
    with live_server(settings) as url, redis.Redis.from_url(server.url) as raw:
        check_session(url, session_id, list(range(POINTS)), x, y, net, raw)


def test_aof_and_rdb_backups_restore_the_sessions(tmp_path: Path, checkpoint_dir: Path, tiny_net) -> None:
    x, y = sample_points(POINTS + 1, seed=31)
    live = EmbeddedRedis(tmp_path / "live", options={"appendfsync": "always"})
    live.start()
    try:
        with (
            live_server(make_settings(live.url, checkpoint_dir, api_keys="")) as url,
            redis.Redis.from_url(live.url) as raw,
        ):
            session_id = httpx.post(f"{url}/v1/sessions", json={}).json()["session_id"]
            history = History()
            for thread in write([url], session_id, x[:POINTS], y[:POINTS], 4, history):
                thread.join(timeout=60)
            assert len(history.acked) == POINTS
            # The fold at 256 runs in the background (at a lower CPU priority than requests): the
            # backup is meant to hold its state blob and the 44 points after it, so let it commit.
            wait_for_folds(raw, session_id, DEFAULT_FOLD_THRESHOLD)
            raw.bgrewriteaof()
            wait_for(raw, "aof_rewrite_in_progress")
            wait_for(raw, "aof_rewrite_scheduled")
            (tmp_path / "aof-backup").mkdir()
            shutil.copy(live.data_dir / "appendonly.aof", tmp_path / "aof-backup" / "appendonly.aof")

            raw.bgsave()
            wait_for(raw, "rdb_bgsave_in_progress")
            (tmp_path / "rdb-backup").mkdir()
            shutil.copy(live.data_dir / "dump.rdb", tmp_path / "rdb-backup" / "dump.rdb")

            after = {"x": [[float(x[POINTS, 0])]], "y": [[float(y[POINTS, 0])]]}  # after the backups: not in them
            assert httpx.post(f"{url}/v1/sessions/{session_id}/context", json=after).status_code == 200
    finally:
        live.stop()

    from_aof = EmbeddedRedis(tmp_path / "aof-backup")
    from_aof.start()  # replays the copied AOF
    try:
        check_restored(from_aof, session_id, x, y, checkpoint_dir, tiny_net)
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
        check_restored(restarted, session_id, x, y, checkpoint_dir, tiny_net)
    finally:
        restarted.stop()
