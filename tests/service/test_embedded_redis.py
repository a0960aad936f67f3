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

from service.embedded_redis import free_port
from tests.service.helpers import REPO


def start_service(port: int, data_dir: Path, checkpoint_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMANP_")}
    env |= {
        "CMANP_PORT": str(port),
        "CMANP_REDIS_DATA_DIR": str(data_dir),
        "CMANP_CHECKPOINT_DIR": str(checkpoint_dir),
        "CMANP_DEFAULT_MODEL": "tiny",
        "CMANP_TORCH_THREADS": "1",
        "CMANP_INFERENCE_WORKERS": "1",
    }
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out, stderr=out)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited"
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout} s")


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_bundled_redis_lifecycle(tmp_path: Path, checkpoint_dir: Path) -> None:
    port, data_dir = free_port(), tmp_path / "var" / "redis"
    url = f"http://127.0.0.1:{port}"
    session_id = None
    for run in range(2):
        log = tmp_path / f"service-{run}.log"
        process = start_service(port, data_dir, checkpoint_dir, log)
        try:
            wait_ready(url, process)
            if session_id is None:
                session_id = httpx.post(f"{url}/v1/sessions", json={}).json()["session_id"]
                body = {"x": [[0.1], [0.2]], "y": [[1.0], [2.0]]}
                assert httpx.post(f"{url}/v1/sessions/{session_id}/context", json=body).status_code == 200
            else:  # the second run found the session in the append-only file
                assert httpx.get(f"{url}/v1/sessions/{session_id}").json()["num_points"] == 2
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        output = log.read_text()
        assert f"http://127.0.0.1:{port}/docs" in output
        redis_port = int(re.search(r"bundled redis-server at redis://127\.0\.0\.1:(\d+)", output).group(1))
        assert not port_is_open(redis_port), "redis-server was stopped with the service"
    assert (data_dir / "appendonly.aof").stat().st_size > 0
