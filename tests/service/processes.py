"""Real processes for the crash and scale-out tests: the API as ``python -m service`` (so it can be
``kill -9``-ed), and a local Redis Cluster of bundled redis-servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from service.embedded_redis import EmbeddedRedis, free_port, redis_cli_binary
from tests.service.helpers import REPO


def service_env(checkpoint_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of ``python -m service``: the test checkpoints, plus ``CMANP_<NAME>`` per setting.

    Without ``redis_url`` the service starts its bundled Redis in ``redis_data_dir``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMANP_")}
    options: dict[str, object] = {
        "checkpoint_dir": checkpoint_dir,
        "default_model": "tiny",
        "workers": 1,  # one process, so that kill() (SIGKILL) takes the whole API down
        "torch_threads": 1,
        "inference_workers": 1,
        "log_level": "warning",
    }
    return env | {f"CMANP_{name.upper()}": str(value) for name, value in (options | settings).items()}


class ApiProcess:
    """``python -m service`` on a fixed free port; ``start()`` waits until ``/readyz`` answers 200, ``stop()``.

    Restarting after ``kill()`` (SIGKILL, like a crash) reuses the port, so clients keep their URL.
    """

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = env | {"CMANP_PORT": str(self.port)}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=self.env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the service was not ready within {timeout} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30.0) -> int:
        """Graceful stop; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


class LocalRedisCluster:
    """A Redis Cluster of ``masters`` bundled redis-servers on 127.0.0.1, each with ``replicas``
    replicas, created with ``redis-cli --cluster create``; ``url`` is one node (the cluster client
    finds the others). ``start()``, then ``stop()``. ``node_timeout_ms`` is how long a node may
    be unreachable before the others count it failed (a failed master's replica then takes over).
    """

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000) -> None:
        node_options = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(node_timeout_ms),
        }
        self.replicas = replicas
        self.nodes = [
            EmbeddedRedis(data_dir / f"node-{i}", options=node_options) for i in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                str(redis_cli_binary()),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        # `create` returns once the slots are assigned; every node must also agree the cluster is
        # up, and every replica must have its master's data (else its first writes have no copy).
        for node in self.nodes:
            self._wait_ready(node, time.monotonic() + timeout)

    def rejoin(self, node: EmbeddedRedis, timeout: float = 30.0) -> None:
        """Restart a stopped or killed node (same port, data and nodes.conf) and wait until it serves
        again: a master that was failed over comes back as its successor's replica."""
        node.start()
        self._wait_ready(node, time.monotonic() + timeout)

    def _wait_ready(self, node: EmbeddedRedis, deadline: float) -> None:
        with redis.Redis(port=node.port) as client:
            while not self._node_ready(client):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node.port} did not see the cluster up in time")
                time.sleep(0.05)

    @staticmethod
    def _node_ready(client: redis.Redis) -> bool:
        if client.cluster("info")["cluster_state"] != "ok":
            return False
        replication = client.info("replication")
        return replication["role"] == "master" or replication.get("master_link_status") == "up"

    def serving(self, key: str) -> tuple[EmbeddedRedis, list[EmbeddedRedis]]:
        """The master that serves ``key``'s slot and its replicas, as some live node sees them now."""
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with redis.Redis(port=node.port) as client:
                slot = client.execute_command("CLUSTER KEYSLOT", key)
                for start, end, master, *replicas in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return by_port[master[1]], [by_port[replica[1]] for replica in replicas]
        raise LookupError(f"no live node knows who serves {key}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
