"""The client's retry policy: what is retried, how long it waits, and local input checks."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.client import CMANPClient, RetryPolicy, _context_call, _create_call, _events_call

POLICY = RetryPolicy(retries=3, backoff=0.1, max_backoff=2.0)
CONTEXT = _context_call("s", [0.0], [1.0], idempotency_key=None)
CREATE = _create_call(model=None, time_scale=None)


def answer(status: int, retry_after: str | None = None) -> httpx.Response:
    return httpx.Response(status, headers={"Retry-After": retry_after} if retry_after else {})


def test_transient_errors_are_retried_with_backoff() -> None:
    assert POLICY.delay(0, CONTEXT, answer(503)) == 0.1
    assert POLICY.delay(2, CONTEXT, answer(502)) == 0.4
    assert POLICY.delay(1, CONTEXT, httpx.ReadError("reset")) == 0.2
    assert POLICY.delay(0, CONTEXT, answer(503, retry_after="1")) == 1.0  # Retry-After wins when longer
    assert POLICY.delay(0, CONTEXT, answer(503, retry_after="60")) == 2.0  # capped
    assert POLICY.delay(3, CONTEXT, answer(503)) is None  # out of retries


def test_client_errors_are_not_retried() -> None:
    for status in (400, 401, 404, 409, 413, 422, 500):
        assert POLICY.delay(0, CONTEXT, answer(status)) is None


def test_session_creation_is_only_retried_when_it_cannot_have_happened() -> None:
    assert POLICY.delay(0, CREATE, httpx.ConnectError("refused")) == 0.1
    assert POLICY.delay(0, CREATE, answer(503)) == 0.1
    assert POLICY.delay(0, CREATE, httpx.ReadError("reset")) is None
    assert POLICY.delay(0, CREATE, answer(504)) is None


def test_one_idempotency_key_per_call() -> None:
    for call in (lambda key: _context_call("s", [0.0], [1.0], key), lambda key: _events_call("s", [0.0], [1], key)):
        first, second = call(None), call(None)
        assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
        assert call("mine").headers["Idempotency-Key"] == "mine"
        assert POLICY.delay(0, first, httpx.ReadError("reset")) == 0.1  # the key makes a resend safe


def test_points_are_checked_before_sending() -> None:
    with CMANPClient("http://127.0.0.1:9") as client:  # nothing listens: it must fail before sending
        with pytest.raises(ValueError, match="NaN or Inf"):
            client.add_context("s", [np.nan], [1.0])
        with pytest.raises(ValueError, match="1-D or 2-D"):
            client.predict("s", np.zeros((2, 2, 2)))
        with pytest.raises(ValueError, match="times contains NaN or Inf"):
            client.add_events("s", [1.0, np.inf], [0, 1])
