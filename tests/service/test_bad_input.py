"""Bad requests get a 4xx problem with a clear detail and leave the stored state byte-identical.

The session under attack has a folded state and a non-empty log; every one of its Redis keys is
compared (DUMP) before and after each request.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.client import CMANPClient
from tests.service.helpers import (
    API_KEYS,
    BODY_LIMIT,
    BOTH_BACKENDS,
    DEFAULT_FOLD_THRESHOLD,
    raw_session,
    sample_points,
    wait_for_folds,
)

pytestmark = BOTH_BACKENDS

ALICE = {"Authorization": f"Bearer {API_KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {API_KEYS['bob']}"}
JSON = {"Content-Type": "application/json"}
OK_POINT = {"x": [[0.5]], "y": [[0.5]]}

# (name, endpoint, body (dict as JSON, bytes as is), headers, expected status, words in the detail)
CASES = [
    ("nan", "context", b'{"x": [[NaN]], "y": [[0.5]]}', ALICE | JSON, 422, "finite number"),
    ("inf", "context", b'{"x": [[0.5]], "y": [[Infinity]]}', ALICE | JSON, 422, "finite number"),
    ("overflow", "context", b'{"x": [[1e400]], "y": [[0.5]]}', ALICE | JSON, 422, "finite number"),
    ("too-large-for-float32", "context", {"x": [[1e300]], "y": [[0.5]]}, ALICE, 422, "too large"),
    ("far-outside-the-model", "context", {"x": [[0.5]], "y": [[1.5e6]]}, ALICE, 422, "beyond ±1e+06"),
    ("far-outside-query", "predict", {"x": [[-4.98e22]]}, ALICE, 422, "beyond ±1e+06"),
    ("nan-query", "predict", b'{"x": [[NaN]]}', ALICE | JSON, 422, "finite number"),
    ("string-number", "context", {"x": [["0.5"]], "y": [[0.5]]}, ALICE, 422, "valid number"),
    ("wrong-x-dim", "context", {"x": [[0.5, 1.0]], "y": [[0.5]]}, ALICE, 422, "2 features per point"),
    ("wrong-y-dim", "context", {"x": [[0.5]], "y": [[0.5, 1.0]]}, ALICE, 422, "2 features per point"),
    ("wrong-query-dim", "predict", {"x": [[0.5, 1.0, 2.0]]}, ALICE, 422, "3 features per point"),
    ("ragged", "context", {"x": [[0.5], [0.5, 1.0]], "y": [[0.5], [0.5]]}, ALICE, 422, "ragged"),
    ("count-mismatch", "context", {"x": [[0.5], [0.6]], "y": [[0.5]]}, ALICE, 422, "2 points but y has 1"),
    ("empty", "context", {"x": [], "y": []}, ALICE, 422, "empty"),
    ("empty-rows", "context", {"x": [[]], "y": [[]]}, ALICE, 422, "no features"),
    ("empty-query", "predict", {"x": []}, ALICE, 422, "empty"),
    (
        "flat-then-nested",
        "context",
        {"x": [0.5, [0.5]], "y": [0.5, 0.5]},
        ALICE,
        422,
        "x.1: Input should be a valid number",
    ),
    (
        "nested-then-flat",
        "context",
        {"x": [[0.5], 0.5], "y": [0.5, 0.5]},
        ALICE,
        422,
        "x.1: Input should be a valid list",
    ),
    ("not-json", "context", b'{"x": [[0.5]], "y": [[0.5]]}', ALICE, 415, "Content-Type: application/json"),
    ("missing-field", "context", {"x": [[0.5]]}, ALICE, 422, "body.y"),
    ("unknown-field", "context", {**OK_POINT, "z": 1}, ALICE, 422, "extra inputs"),
    ("too-many-points", "context", {"x": [[0.0]] * 1001, "y": [[0.0]] * 1001}, ALICE, 413, "limit is 1000"),
    ("too-many-queries", "predict", {"x": [[0.0]] * 1001}, ALICE, 413, "limit is 1000"),
    (
        "oversized-body",
        "context",
        b'{"x": [[0.5]], "y": [[0.5]], "p": "' + b"a" * BODY_LIMIT + b'"}',
        ALICE | JSON,
        413,
        "larger than",
    ),
    ("malformed-json", "context", b'{"x": [[0.5]], "y": [[0.5]', ALICE | JSON, 400, "malformed JSON"),
    ("long-idempotency-key", "context", OK_POINT, ALICE | {"Idempotency-Key": "k" * 129}, 422, "at most 128"),
    ("unknown-session", "context-unknown", OK_POINT, ALICE, 404, "does not exist"),
    ("other-tenant-context", "context", OK_POINT, BOB, 404, "does not exist"),
    ("other-tenant-predict", "predict", {"x": [[0.5]]}, BOB, 404, "does not exist"),
    ("other-tenant-delete", "delete", None, BOB, 404, "does not exist"),
    ("missing-key", "context", OK_POINT, {}, 401, "Authorization"),
    ("wrong-key", "context", OK_POINT, {"Authorization": "Bearer nope"}, 401, "unknown API key"),
    ("wrong-scheme", "predict", {"x": [[0.5]]}, {"Authorization": f"Basic {API_KEYS['alice']}"}, 401, "Bearer"),
]


@pytest.fixture(scope="module")
def victim(server: str, redis_client) -> Iterator[str]:
    """A session with a folded state (300 points) and an unfolded log (10 more)."""
    with CMANPClient(server, API_KEYS["alice"]) as client:
        session_id = client.create_session().session_id
        x, y = sample_points(310, seed=8)
        client.add_context(session_id, x[:300], y[:300])
        wait_for_folds(redis_client, session_id, DEFAULT_FOLD_THRESHOLD)
        client.add_context(session_id, x[300:], y[300:])
        yield session_id


@pytest.mark.parametrize(
    ("endpoint", "body", "headers", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_and_changes_nothing(
    server: str, victim: str, redis_client, endpoint: str, body, headers: dict, status: int, words: str
) -> None:
    before = raw_session(redis_client, victim)
    assert {k.rsplit(b":", 1)[1] for k in before} >= {b"meta", b"state", b"log"}
    paths = {
        "context": f"/v1/sessions/{victim}/context",
        "predict": f"/v1/sessions/{victim}/predict",
        "delete": f"/v1/sessions/{victim}",
        "context-unknown": "/v1/sessions/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/context",
    }
    method = "DELETE" if endpoint == "delete" else "POST"
    content = body if isinstance(body, bytes) or body is None else None
    response = httpx.request(
        method, server + paths[endpoint], content=content, json=None if content else body, headers=headers
    )

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == {"type", "title", "detail", "status"} and problem["status"] == status
    assert words.lower() in problem["detail"].lower(), problem["detail"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert raw_session(redis_client, victim) == before


def test_another_tenants_session_is_indistinguishable_from_a_missing_one(server: str, victim: str) -> None:
    theirs = httpx.get(f"{server}/v1/sessions/{victim}", headers=BOB).json()
    missing = httpx.get(f"{server}/v1/sessions/{'B' * 32}", headers=BOB).json()
    assert theirs["status"] == missing["status"] == 404
    assert theirs["detail"].replace(victim, "ID") == missing["detail"].replace("B" * 32, "ID")


def test_streamed_body_over_the_limit_is_refused_and_changes_nothing(server: str, victim: str, redis_client) -> None:
    """Without a Content-Length (chunked upload), the limit is enforced while the body streams in."""
    before = raw_session(redis_client, victim)

    def chunks() -> Iterator[bytes]:
        yield b'{"x": [[0.5]], "y": [[0.5]], "p": "'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"a" * 1024
        yield b'"}'

    response = httpx.post(f"{server}/v1/sessions/{victim}/context", content=chunks(), headers=ALICE | JSON)
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    assert response.headers["content-type"] == "application/problem+json"
    assert raw_session(redis_client, victim) == before


def test_a_prediction_that_overflows_the_users_units_is_refused(server: str) -> None:
    """A variance is scale**2 times the model's: with scale 1e200 it is no float64, and JSON has no Inf."""
    with CMANPClient(server, API_KEYS["alice"]) as client:
        session_id = client.create_session(y_transform={"scale": 1e200}).session_id
    response = httpx.post(f"{server}/v1/sessions/{session_id}/predict", json={"x": [[0.5]]}, headers=ALICE)
    assert response.status_code == 422 and "not a finite number" in response.json()["detail"]
