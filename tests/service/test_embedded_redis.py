"""`python -m service` without CMANP_REDIS_URL: it starts the bundled redis-server (appendonly, data in
CMANP_REDIS_DATA_DIR), becomes ready, stops Redis on shutdown, and finds its sessions again on restart.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.embedded_redis import MAX_CLUSTER_PORT, free_port
from tests.service.processes import service_env
from tools.service_process import ServiceProcess


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_bundled_redis_lifecycle(tmp_path: Path, checkpoint_dir: Path) -> None:
    data_dir = tmp_path / "var" / "redis"
    api = ServiceProcess(
        service_env(checkpoint_dir, redis_data_dir=data_dir, log_level="info"), tmp_path / "service.log"
    )
    session_id = None
    for _ in range(2):
        log_start = api.log.stat().st_size if api.log.exists() else 0
        try:
            api.start()
            if session_id is None:
                session_id = httpx.post(f"{api.url}/v1/sessions", json={}).json()["session_id"]
                body = {"x": [[0.1], [0.2]], "y": [[1.0], [2.0]]}
                assert httpx.post(f"{api.url}/v1/sessions/{session_id}/context", json=body).status_code == 200
            else:  # the second run found the session in the append-only file
                assert httpx.get(f"{api.url}/v1/sessions/{session_id}").json()["num_points"] == 2
        finally:
            assert api.stop(signal.SIGINT) == 0
        output = api.log.read_text()[log_start:]
        assert f"{api.url}/docs" in output
        redis_port = int(re.search(r"bundled redis-server at redis://127\.0\.0\.1:(\d+)", output).group(1))
        assert not port_is_open(redis_port), "redis-server was stopped with the service"
    assert (data_dir / "appendonly.aof").stat().st_size > 0


def test_free_port_stays_below_the_bound() -> None:
    """Regression: a cluster node on a port above 55535 cannot start (its bus port is port + 10000)."""
    assert all(free_port(below=MAX_CLUSTER_PORT + 1) <= MAX_CLUSTER_PORT for _ in range(200))


def test_redis_stops_when_its_owner_is_killed(tmp_path: Path) -> None:
    """kill -9 of the process that started the server runs none of its code; the server still stops
    (parent-death signal) instead of serving the data directory on as an orphan. Regression."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from service.embedded_redis import EmbeddedRedis;"
            f"r = EmbeddedRedis({str(tmp_path)!r}); r.start(); print(r.port, r.process.pid, flush=True);"
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port, server_pid = map(int, owner.stdout.readline().split())
        assert port_is_open(port)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 15
    while port_is_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not port_is_open(port), "redis-server outlived the process that started it"
    finally:
        if port_is_open(port):
            os.kill(server_pid, signal.SIGTERM)
