"""8 concurrent clients each post 100 single-point contexts to one session; nothing is lost.

Run against the default settings, and against a server that folds every 8 points and takes at
most 4 points per request, so that folds race each other and the appends (commit conflicts, and
appends refused while the log is full) all the time.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.client import CMANPClient, RetryPolicy
from service.store import KEY_PREFIX
from tests.service.helpers import (
    API_KEYS,
    DEFAULT_FOLD_THRESHOLD,
    assert_same_state,
    expected_prediction,
    live_server,
    make_settings,
    sample_points,
    stored_state,
    wait_for_folds,
)

WRITERS, POSTS = 8, 100
QUERIES = np.linspace(-2.0, 2.0, 25)[:, None]


@pytest.fixture(params=["default", "tiny-log"])
def writer_server(
    request: pytest.FixtureRequest, server: str, redis_server, checkpoint_dir
) -> Iterator[tuple[str, int]]:
    """A server's URL and its fold threshold."""
    if request.param == "default":
        yield server, DEFAULT_FOLD_THRESHOLD
        return
    settings = make_settings(redis_server.url, checkpoint_dir, fold_threshold_points=8, max_points_per_request=4)
    with live_server(settings) as url:
        yield url, settings.fold_threshold_points


def test_concurrent_writers_lose_nothing(writer_server: tuple[str, int], server: str, redis_client, tiny_net) -> None:
    url, fold_threshold = writer_server
    x, y = sample_points(WRITERS * POSTS, seed=4)
    with CMANPClient(url, API_KEYS["alice"]) as setup:
        session_id = setup.create_session().session_id

    def write(writer: int) -> list[int]:
        retry = RetryPolicy(retries=0)  # any failure must show up, not be papered over
        with CMANPClient(url, API_KEYS["alice"], retry=retry) as client:
            rows = range(writer, WRITERS * POSTS, WRITERS)
            return [client.add_context(session_id, x[i : i + 1], y[i : i + 1]).version for i in rows]

    with ThreadPoolExecutor(WRITERS) as pool:
        versions = [v for vs in pool.map(write, range(WRITERS)) for v in vs]
    assert sorted(versions) == list(range(1, WRITERS * POSTS + 1))  # every post got its own version
    wait_for_folds(redis_client, session_id, fold_threshold)  # posts do not wait for the folds they start

    with CMANPClient(server, API_KEYS["alice"]) as client:  # same Redis; its limits allow 25 queries
        info = client.get_session(session_id)
        prediction = client.predict(session_id, QUERIES)
    assert (info.num_points, info.version) == (800, 800)
    assert (prediction.num_points, prediction.version) == (800, 800)

    mean, variance = expected_prediction(tiny_net, x, y, QUERIES)
    assert np.abs(prediction.mean - mean).max() <= 1e-4
    assert (np.abs(prediction.variance - variance) / variance).max() <= 1e-3
    # The stored state itself (blob + unfolded log) holds every point exactly once.
    assert_same_state(stored_state(redis_client, session_id, tiny_net), x, y, tiny_net)
    meta = redis_client.hgetall(f"{KEY_PREFIX}:{{{session_id}}}:meta")
    assert int(meta[b"fold_epoch"]) >= 2  # folds did happen
    # Calibration: every point scored exactly once, though folds raced and some were dropped; the
    # sums in Redis cover exactly the folded points (the stored blob's count).
    assert info.calibration["scored_points"] == 800
    folded = tiny_net.state_from_bytes(redis_client.get(f"{KEY_PREFIX}:{{{session_id}}}:state")).num_points
    assert float(meta[b"sum:points"]) == int(folded[0])
