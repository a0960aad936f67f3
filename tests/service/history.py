"""Histories of writes for the crash and replica tests, in the style of Jepsen: clients post points
with unique ids, record what was acknowledged, and the final session is checked against that record.

Point ``i`` is ``(x[i], y[i])``, posted alone with the Idempotency-Key ``point-i``. A post whose
reply never came (the API died, or answered 503 because Redis died) is *in doubt*: it may or may
not have been applied. ``resolve`` re-posts every id with its own key once the system is back: an
acknowledged id must come back as a replay (else it was lost), and an in-doubt id is applied if it
was not, exactly once. The session must then hold exactly the ids posted, which ``check_session``
compares with batch conditioning computed independently by the model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import redis

from model import CMANP
from service.store import session_keys
from tests.service.helpers import DEFAULT_FOLD_THRESHOLD, assert_same_state, expected_prediction, stored_state

QUERIES = np.linspace(-2.0, 2.0, 25)[:, None]
MEAN_TOLERANCE = 1e-4  # |mean - batch mean|
VARIANCE_TOLERANCE = 1e-3  # |variance - batch variance| / batch variance


@dataclass
class History:
    acked: dict[int, float] = field(default_factory=dict)  # id -> time.monotonic() of its acknowledgment
    failed: dict[int, str] = field(default_factory=dict)  # id -> what happened instead (in doubt)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def posted(self) -> list[int]:
        return sorted(self.acked.keys() | self.failed.keys())

    def acked_since(self, moment: float) -> int:
        return sum(1 for at in self.acked.values() if at >= moment)


def post_point(http: httpx.Client, url: str, session_id: str, i: int, x: np.ndarray, y: np.ndarray) -> httpx.Response:
    body = {"x": [[float(x[i, 0])]], "y": [[float(y[i, 0])]]}
    return http.post(f"{url}/v1/sessions/{session_id}/context", json=body, headers={"Idempotency-Key": f"point-{i}"})


def write(
    urls: list[str], session_id: str, x: np.ndarray, y: np.ndarray, writers: int, history: History
) -> list[threading.Thread]:
    """Start ``writers`` threads posting ids ``w, w + writers, ...`` to ``urls[i % len(urls)]``, without retries.

    A thread stops at its first failed post (recorded in ``history.failed``) or when it runs out of ids.
    """

    def run(writer: int) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(writer, len(x), writers):
                try:
                    response = post_point(http, urls[i % len(urls)], session_id, i, x, y)
                except httpx.TransportError as e:
                    outcome = type(e).__name__
                else:
                    if response.status_code == 200:
                        with history.lock:
                            history.acked[i] = time.monotonic()
                        continue
                    outcome = str(response.status_code)
                with history.lock:
                    history.failed[i] = outcome
                return

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(writers)]
    for thread in threads:
        thread.start()
    return threads


def wait_for_acks(history: History, count: int, threads: list[threading.Thread], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(history.acked) < count:
        assert any(t.is_alive() for t in threads), f"writers stopped early: {history.failed}"
        assert time.monotonic() < deadline, f"only {len(history.acked)} acks in {timeout} s"
        time.sleep(0.01)


def resolve(
    url: str, session_id: str, x: np.ndarray, y: np.ndarray, history: History, timeout: float = 60.0
) -> list[int]:
    """Re-post every posted id with its key; the acknowledged ids that were applied again (= had been lost)."""
    lost = []
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as http:
        for i in history.posted:
            while True:  # Redis may still be loading its append-only file: 503, retry
                try:
                    response = post_point(http, url, session_id, i, x, y)
                    if response.status_code != 503:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the service did not come back"
                time.sleep(0.05)
            assert response.status_code == 200, response.text
            if i in history.acked and response.headers.get("Idempotent-Replayed") != "true":
                lost.append(i)
    return lost


def check_session(
    url: str, session_id: str, ids: list[int], x: np.ndarray, y: np.ndarray, net: CMANP, raw: redis.Redis
) -> None:
    """The session holds exactly the points ``ids``, each once: counters, predictions, stored state."""
    with httpx.Client(base_url=url, timeout=30) as http:
        info = http.get(f"/v1/sessions/{session_id}").json()
        prediction = http.post(f"/v1/sessions/{session_id}/predict", json={"x": QUERIES.tolist()}).json()
    # One point per post: a point applied twice or missing shows in both counters.
    assert (info["num_points"], info["version"]) == (len(ids), len(ids))
    mean, variance = expected_prediction(net, x[ids], y[ids], QUERIES)
    assert np.abs(np.asarray(prediction["mean"]) - mean).max() <= MEAN_TOLERANCE
    assert (np.abs(np.asarray(prediction["variance"]) - variance) / variance).max() <= VARIANCE_TOLERANCE
    # No torn blob: the stored state parses and its crc32 holds (state_from_bytes checks it), and
    # its accumulators equal batch conditioning on exactly these points.
    blob = raw.get(session_keys(session_id)[1])
    assert blob is not None or len(ids) < DEFAULT_FOLD_THRESHOLD, "no state blob after the first fold"
    if blob is not None:
        net.state_from_bytes(blob)
    assert_same_state(stored_state(raw, session_id, net), x[ids], y[ids], net)
