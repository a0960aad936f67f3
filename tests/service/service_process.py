"""Run the service as a real process (``python -m service``, as in production), for tests that signal
it or read what it writes to stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.embedded_redis import free_port
from tests.service.helpers import API_KEYS, REPO

START_TIMEOUT = 90.0  # loading the models on a busy shared CPU


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    url: str
    stderr_path: Path

    def log_lines(self) -> list[str]:
        return [line for line in self.stderr_path.read_text().splitlines() if line.strip()]


def service_env(redis_url: str, checkpoint_dir: Path) -> dict[str, str]:
    """The settings of ``helpers.make_settings``, as ``service_process`` keyword arguments."""
    return {
        "redis_url": redis_url,
        "checkpoint_dir": str(checkpoint_dir),
        "default_model": "tiny",
        "api_keys": ",".join(f"{tenant}:{key}" for tenant, key in API_KEYS.items()),
        "workers": "1",
        "torch_threads": "1",
        "inference_workers": "1",
    }


@contextmanager
def service_process(tmp_path: Path, **env: str) -> Iterator[ServiceProcess]:
    """``python -m service`` on a free port with ``CMANP_<NAME>`` = value for each ``name=value``."""
    port = free_port()
    environment = os.environ | {"CMANP_HOST": "127.0.0.1", "CMANP_PORT": str(port)}
    environment |= {f"CMANP_{name.upper()}": value for name, value in env.items()}
    stderr_path = tmp_path / f"service-{port}.stderr"
    with open(tmp_path / f"service-{port}.stdout", "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=environment, stdout=out, stderr=err)
    served = ServiceProcess(process, f"http://127.0.0.1:{port}", stderr_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode}:\n{stderr_path.read_text()}")
            try:
                if httpx.get(served.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the service did not become ready")
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
