"""Real processes for the crash and scale-out tests: the settings of the API run as ``python -m
service`` (``tools.service_process.ServiceProcess``, so it can be ``kill -9``-ed), and a local
Redis Cluster of bundled redis-servers.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from service.embedded_redis import EmbeddedRedis, redis_cli_binary
from tests.service.helpers import API_KEYS
from tools.service_process import service_env as tools_service_env


def service_env(checkpoint_dir: Path, **settings: object) -> dict[str, str]:
    """``tools.service_process.service_env`` serving the test checkpoints (default model "tiny")."""
    return tools_service_env(checkpoint_dir, **({"default_model": "tiny"} | settings))


def with_api_keys(**settings: object) -> dict[str, object]:
    """The settings plus the API keys of ``helpers.API_KEYS`` (tenants alice and bob)."""
    return {"api_keys": ",".join(f"{tenant}:{key}" for tenant, key in API_KEYS.items())} | settings


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
