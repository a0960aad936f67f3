"""Helpers for the service tests: checkpoints, settings, live servers, sample data, and independent
expectations.

Expected numbers are always computed independently, by calling the model directly on all the
points (``expected_prediction``, ``assert_same_state``), never taken from the service. Raw
session keys are read straight from Redis (``raw_session``, ``stored_state``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
import uvicorn
from fastapi import FastAPI

from model import CMANP, CMHP, CMANPANDConfig, CMANPConfig, CMANPState, CMHPConfig, CMHPState, save_checkpoint
from model.checkpoint import build_model
from service.app import create_app
from service.settings import Settings
from service.store import KEY_PREFIX, fold_lease_key

REPO = Path(__file__).resolve().parents[2]
TINY = CMANPConfig(n_blocks=2, n_latents=16, d_model=32, ff_width=64, embed_depth=2)
TINY_AND = CMANPANDConfig(**TINY.to_dict(), block_size=8, cov_features=4, cov_layers=1)  # a joint head, b_Q = 8
PIXELS = CMANPConfig(**{**TINY.to_dict(), "dim_x": 2, "x_range": (-1.0, 1.0)})  # an untrained digit model
# With a spectrum (model.event_spectrum), as the shipped event model may have: its sums are state too.
_EVENT_SIZES = {"num_marks": 3, "d_model": 32, "n_heads": 4, "n_blocks": 2, "n_latents": 8, "ff_width": 64}
TINY_EVENTS = CMHPConfig(**_EVENT_SIZES, components=4, spectrum_bands=2, spectrum_per_band=4)
API_KEYS = {"alice": "alice-key", "bob": "bob-key"}
AUTH = {"Authorization": f"Bearer {API_KEYS['alice']}"}  # the request headers of tenant alice
TINY_CARD = {"rbf_ll": 1.25, "matern_ll": 0.5}
BODY_LIMIT = 64 * 1024  # comfortably above 1000 points of JSON
# `pytestmark = BOTH_BACKENDS`: the module's tests run on one redis-server and on a Redis Cluster.
BOTH_BACKENDS = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)


def build_checkpoint(
    directory: Path, name: str, config: CMANPConfig | CMHPConfig, seed: int, card: dict | None = None
) -> Path:
    torch.manual_seed(seed)
    path = directory / f"{name}.safetensors"
    save_checkpoint(build_model(config).eval(), path)
    if card is not None:
        path.with_suffix(".json").write_text(json.dumps(card))
    return path


DEFAULT_FOLD_THRESHOLD: int = Settings.model_fields["fold_threshold_points"].default


def make_settings(redis_url: str, checkpoint_dir: Path, **overrides: object) -> Settings:
    options: dict[str, object] = {
        "redis_url": redis_url,
        "checkpoint_dir": checkpoint_dir,
        "default_model": "tiny",
        "api_keys": ",".join(f"{tenant}:{key}" for tenant, key in API_KEYS.items()),
        "torch_threads": 1,
        "inference_workers": 1,
        "log_level": "warning",
        "max_body_bytes": BODY_LIMIT,
    }
    return Settings(**{**options, **overrides})


@contextmanager
def live_server(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """Run the app (default: ``create_app(settings)``) with uvicorn in a thread, on a free port; yields its base URL.

    Pass ``app`` to reach its services once it runs (``app.state.services``)."""
    config = uvicorn.Config(app or create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sample_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy samples of a smooth function, x uniform in the model's range [-2, 2]; float32-exact values."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=(n, 1)).astype(np.float32)
    y = (np.sin(3 * x) + 0.1 * rng.standard_normal((n, 1))).astype(np.float32)
    return x.astype(np.float64), y.astype(np.float64)


def _batch(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a[None], dtype=torch.float32)


def expected_prediction(net: CMANP, x: np.ndarray, y: np.ndarray, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's own answer: batch-condition on all points at once (none: the prior), then predict."""
    with torch.no_grad():
        state = net.condition(_batch(x), _batch(y)) if len(x) else net.empty_state()
        mean, variance = net.predict(state, _batch(xq))
    return mean[0].double().numpy(), variance[0].double().numpy()


def session_keys_in_redis(client: redis.Redis, session_id: str) -> list[bytes]:
    """The session's keys in Redis; not its fold lease, which a fold in flight holds for a moment
    (coordination between server processes, not the session's data)."""
    lease = fold_lease_key(session_id).encode()
    return sorted(key for key in client.scan_iter(match=f"{KEY_PREFIX}:{{{session_id}}}:*") if key != lease)


def raw_session(client: redis.Redis, session_id: str) -> dict[bytes, bytes]:
    """Every key of the session with its serialised value (DUMP); TTLs are not part of it."""
    return {key: client.dump(key) for key in session_keys_in_redis(client, session_id)}


def logged_points(client: redis.Redis, session_id: str, dim_x: int, dim_y: int) -> tuple[np.ndarray, np.ndarray]:
    """The points of the session's unfolded append log, read from the raw key (float32 rows [x | y], model units)."""
    return _log_rows(client.lrange(f"{KEY_PREFIX}:{{{session_id}}}:log", 0, -1), dim_x, dim_y)


def _log_rows(log: list[bytes], dim_x: int, dim_y: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.frombuffer(b"".join(log), dtype="<f4").reshape(-1, dim_x + dim_y)
    return rows[:, :dim_x], rows[:, dim_x:]


def wait_for_folds(client: redis.Redis, session_id: str, fold_threshold: int, timeout: float = 30.0) -> None:
    """Wait until the session's log is below the fold threshold and no fold holds its lease: a post
    that takes it there starts the fold in the background and answers without waiting for it."""
    key, deadline = f"{KEY_PREFIX}:{{{session_id}}}:meta", time.monotonic() + timeout
    while int(client.hget(key, "log_points")) >= fold_threshold or client.exists(fold_lease_key(session_id)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id}: the log stayed at the fold threshold for {timeout} s")
        time.sleep(0.005)


def _stored(client: redis.Redis, session_id: str) -> tuple[bytes | None, list[bytes]]:
    """The session's state blob and unfolded log, read in one transaction (a fold may commit at any time)."""
    prefix = f"{KEY_PREFIX}:{{{session_id}}}"
    with client.pipeline(transaction=True) as pipe:
        pipe.get(f"{prefix}:state").lrange(f"{prefix}:log", 0, -1).hget(f"{prefix}:meta", "fold_epoch")
        blob, log, folds = pipe.execute()
    assert blob is not None or int(folds) == 0, "the state blob is missing after a fold"
    return blob, log


def stored_state(client: redis.Redis, session_id: str, net: CMANP) -> CMANPState:
    """The session's exact state as Redis holds it: the state blob (the empty state where no fold has
    written one yet) with the unfolded log applied."""
    blob, log = _stored(client, session_id)
    state = net.state_from_bytes(blob) if blob is not None else net.empty_state()
    x, y = _log_rows(log, net.cfg.dim_x, net.cfg.dim_y)
    if len(x):
        with torch.no_grad():
            state = net.update(state, torch.from_numpy(x[None].copy()), torch.from_numpy(y[None].copy()))
    return state


def assert_same_state(got: CMANPState, x: np.ndarray, y: np.ndarray, net: CMANP) -> None:
    """Accumulators equal batch conditioning on (x, y): far more sensitive than predictions (one point shows)."""
    with torch.no_grad():
        want = net.condition(_batch(x), _batch(y))
    assert int(got.num_points[0]) == len(x)
    torch.testing.assert_close(got.log_norm, want.log_norm, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.value_sum, want.value_sum, rtol=0, atol=1e-5)


# ---- event sessions ----------------------------------------------------------------------------------
def stored_event_state(client: redis.Redis, session_id: str, net: CMHP) -> CMHPState:
    """An event session's exact state as Redis holds it: its blob with its unfolded log applied (the
    log's records read here, not by the service: float64 model time, int32 mark)."""
    blob, log = _stored(client, session_id)
    state = net.state_from_bytes(blob) if blob is not None else net.empty_state()
    records = np.frombuffer(b"".join(log), dtype=[("t", "<f8"), ("k", "<i4")])
    if len(records):
        with torch.no_grad():
            t = torch.from_numpy(records["t"].copy())[None]
            state = net.update(state, t, torch.from_numpy(records["k"].astype(np.int64))[None])
    return state


def assert_same_event_state(got: CMHPState, t: np.ndarray, k: np.ndarray, net: CMHP) -> None:
    """Accumulators and last time equal batch conditioning on the events t, k (model units, sorted)."""
    with torch.no_grad():
        want = net.condition(torch.tensor(t, dtype=torch.float64)[None], torch.tensor(k, dtype=torch.int64)[None])
    assert int(got.num_events[0]) == len(t)
    assert got.last_time.item() == want.last_time.item()
    torch.testing.assert_close(got.acc.log_norm, want.acc.log_norm, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.acc.value_sum, want.acc.value_sum, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.spectrum, want.spectrum, rtol=1e-4, atol=1e-4)


def event_stream(n: int, seed: int, num_marks: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n events of a Poisson stream at rate 1 (sorted float64 times from 0) with uniform marks."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0, n)), rng.integers(0, num_marks, n)
