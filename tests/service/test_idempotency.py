"""One Idempotency-Key posted 5 times, 3 of them concurrently, is applied exactly once (context points,
and events, whose retry after a later post is a replay, not a post going back in time).

Also: reusing a key with a different body is refused, and the remembered keys per session are bounded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from model import load_checkpoint
from service.client import CMANPClient, CMANPError, ContextResult, EventsResult
from service.store import KEY_PREFIX, RECORD_BYTES
from tests.service.helpers import (
    AUTH,
    BOTH_BACKENDS,
    assert_same_event_state,
    assert_same_state,
    raw_session,
    sample_points,
    stored_event_state,
    stored_state,
)

pytestmark = BOTH_BACKENDS


def test_repeated_key_is_applied_once(client: CMANPClient, redis_client, tiny_net) -> None:
    session_id = client.create_session().session_id
    x0, y0 = sample_points(20, seed=5)
    client.add_context(session_id, x0, y0)  # some context first, so a double count would show
    x, y = sample_points(7, seed=6)

    def post(_: int) -> ContextResult:
        return client.add_context(session_id, x, y, idempotency_key="retry-me")

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(post, range(3)))
    results += [post(3), post(4)]

    assert {(r.num_points, r.version) for r in results} == {(27, 2)}  # all five got the original answer
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]
    info = client.get_session(session_id)
    assert (info.num_points, info.version) == (27, 2)
    assert_same_state(
        stored_state(redis_client, session_id, tiny_net), np.vstack([x0, x]), np.vstack([y0, y]), tiny_net
    )


def test_key_reused_with_another_body_is_refused(server: str, client: CMANPClient, redis_client) -> None:
    session_id = client.create_session().session_id
    client.add_context(session_id, [0.1], [0.2], idempotency_key="k")
    before = raw_session(redis_client, session_id)
    response = httpx.post(
        f"{server}/v1/sessions/{session_id}/context",
        json={"x": [[0.1]], "y": [[0.3]]},
        headers={**AUTH, "Idempotency-Key": "k"},
    )
    assert response.status_code == 422 and "different request body" in response.json()["detail"]
    assert raw_session(redis_client, session_id) == before


def test_remembered_keys_are_bounded(server: str, client: CMANPClient, redis_client) -> None:
    session_id = client.create_session().session_id
    ring = f"{KEY_PREFIX}:{{{session_id}}}:idem"
    assert not redis_client.exists(ring)  # nothing remembered, nothing stored
    with httpx.Client(base_url=server, headers=AUTH) as http:
        for i in range(140):  # the default bound is 128 keys per session
            body = {"x": [[0.01 * i]], "y": [[0.0]]}
            assert http.post(f"/v1/sessions/{session_id}/context", json=body, headers={"Idempotency-Key": f"k{i}"})
            if i + 1 in (1, 10, 128):  # the ring grows by one record per key remembered ...
                assert redis_client.strlen(ring) == (i + 1) * RECORD_BYTES
    # ... up to the bound: 140 keys later it has not grown since the 128th, and it was then copied
    # into an exactly sized string (SETRANGE had grown it greedily, to 12 KB for these 8 KB).
    assert redis_client.strlen(ring) == 128 * RECORD_BYTES
    assert redis_client.memory_usage(ring, samples=0) < 128 * RECORD_BYTES * 1.05
    # The newest keys are still remembered; the oldest were forgotten, so a repeat of one applies again.
    assert client.add_context(session_id, [0.01 * 139], [0.0], idempotency_key="k139").replayed
    assert not client.add_context(session_id, [0.0], [0.0], idempotency_key="k0").replayed


def test_key_longer_than_128_characters_is_refused(client: CMANPClient) -> None:
    session_id = client.create_session().session_id
    with pytest.raises(CMANPError) as err:
        client.add_context(session_id, [0.0], [0.0], idempotency_key="k" * 129)
    assert err.value.status == 422 and "idempotency-key" in err.value.detail.lower()


def test_a_repeated_event_post_is_applied_once_even_after_later_events(
    client: CMANPClient, redis_client, checkpoint_dir
) -> None:
    net = load_checkpoint(checkpoint_dir / "tiny-events.safetensors")
    session_id = client.create_session("tiny-events").session_id
    client.add_events(session_id, [1.0, 2.0], [0, 1])

    def post(_: int) -> EventsResult:
        return client.add_events(session_id, [3.0, 3.5], [2, 0], idempotency_key="retry-me")

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(post, range(3)))
    results.append(post(3))
    client.add_events(session_id, [9.0], [1])
    results.append(post(4))  # a retry that arrives after a later post: answered from its record, not 409
    assert {(r.num_events, r.version, r.last_time) for r in results} == {(4, 2, 3.5)}
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]
    t, k = np.array([1.0, 2.0, 3.0, 3.5, 9.0]), np.array([0, 1, 2, 0, 1])
    assert_same_event_state(stored_event_state(redis_client, session_id, net), t, k, net)
    with pytest.raises(CMANPError) as err:
        client.add_events(session_id, [3.0, 3.5], [2, 1], idempotency_key="retry-me")
    assert err.value.status == 422 and "different request body" in err.value.detail
