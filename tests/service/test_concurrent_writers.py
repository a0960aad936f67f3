"""8 concurrent clients each post 100 single-point contexts to one session; nothing is lost. Event
sessions likewise, where posts race in time: every acknowledged event is kept, every refused one is not.

Run against the default settings, and against a server that folds every 8 points and takes at
most 4 points per request, so that folds race each other and the appends (commit conflicts, and
appends refused while the log is full) all the time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model import load_checkpoint
from service.client import CMANPClient, CMANPError, RetryPolicy
from service.store import KEY_PREFIX
from tests.service.helpers import (
    API_KEYS,
    DEFAULT_FOLD_THRESHOLD,
    assert_same_event_state,
    assert_same_state,
    expected_prediction,
    live_server,
    make_settings,
    sample_points,
    stored_event_state,
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


# ---- event sessions: posts must not go back in time ------------------------------------------------
EVENT_WRITERS, EVENT_POSTS = 6, 40


def event_writers(url: str, session_id: str, post: Callable[[CMANPClient, int, int], None]) -> None:
    """EVENT_WRITERS threads, each calling ``post(client, writer, i)`` EVENT_POSTS times, without retries."""

    def run(writer: int) -> None:
        with CMANPClient(url, API_KEYS["alice"], retry=RetryPolicy(retries=0)) as client:
            for i in range(EVENT_POSTS):
                post(client, writer, i)

    with ThreadPoolExecutor(EVENT_WRITERS) as pool:
        list(pool.map(run, range(EVENT_WRITERS)))


def test_concurrent_event_writers_at_one_time_lose_nothing(
    writer_server: tuple[str, int], redis_client, checkpoint_dir
) -> None:
    url, fold_threshold = writer_server
    net = load_checkpoint(checkpoint_dir / "tiny-events.safetensors")
    with CMANPClient(url, API_KEYS["alice"]) as setup:
        session_id = setup.create_session("tiny-events").session_id
    versions: list[int] = []

    def post(client: CMANPClient, writer: int, i: int) -> None:  # every event at t = 7: none is ever out of order
        versions.append(client.add_events(session_id, [7.0], [(writer + i) % 3]).version)

    event_writers(url, session_id, post)
    total = EVENT_WRITERS * EVENT_POSTS
    assert sorted(versions) == list(range(1, total + 1))
    wait_for_folds(redis_client, session_id, fold_threshold)
    marks = [(w + i) % 3 for w in range(EVENT_WRITERS) for i in range(EVENT_POSTS)]
    assert_same_event_state(stored_event_state(redis_client, session_id, net), np.full(total, 7.0), np.sort(marks), net)
    with CMANPClient(url, API_KEYS["alice"]) as client:
        info = client.get_session(session_id)
    assert (info.num_events, info.version, info.calibration["scored_events"]) == (total, total, total - 1)


def test_concurrent_event_writers_keep_exactly_the_events_acknowledged(
    writer_server: tuple[str, int], redis_client, checkpoint_dir, figures
) -> None:
    """Writers take times from one clock and race to post them: a post overtaken by a later time gets
    409 and must leave no trace; every acknowledged one must be in the state."""
    url, fold_threshold = writer_server
    net = load_checkpoint(checkpoint_dir / "tiny-events.safetensors")
    with CMANPClient(url, API_KEYS["alice"]) as setup:
        session_id = setup.create_session("tiny-events").session_id
    clock, lock = itertools.count(), threading.Lock()
    acked: list[tuple[float, int]] = []
    refused: list[str] = []

    def post(client: CMANPClient, writer: int, i: int) -> None:
        with lock:
            t = 0.25 * next(clock)
        try:
            client.add_events(session_id, [t], [writer % 3])
            acked.append((t, writer % 3))
        except CMANPError as e:
            assert e.status == 409 and "before the session's last posted time" in e.detail, e
            refused.append(e.detail)

    event_writers(url, session_id, post)
    assert len(acked) + len(refused) == EVENT_WRITERS * EVENT_POSTS
    figures(f"event writers racing in time (fold every {fold_threshold}): {len(acked)} acked, {len(refused)} got 409")
    wait_for_folds(redis_client, session_id, fold_threshold)
    t, k = np.array(sorted(acked)).T
    assert_same_event_state(stored_event_state(redis_client, session_id, net), t, k.astype(int), net)
    with CMANPClient(url, API_KEYS["alice"]) as client:
        info = client.get_session(session_id)
    assert (info.num_events, info.version, info.last_time) == (len(acked), len(acked), t.max())
