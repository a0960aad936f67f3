"""The session quota and the rate limit behave as documented.

(The 413 limits, CMANP_MAX_BODY_BYTES and CMANP_MAX_POINTS_PER_REQUEST, are in test_bad_input.py.)
Both limits live in Redis, so each test runs two API replicas on the same Redis and spreads its
requests over them. Each test has its own tenant, so that counts never mix between tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from service.client import CMANPClient, CMANPError, RetryPolicy
from service.embedded_redis import EmbeddedRedis
from service.quota import sessions_key
from service.store import KEY_PREFIX
from tests.service.helpers import live_server, make_settings, raw_session

QUOTA = 3
RATE = 0.5  # requests/s: one every 2 s, slow enough that no refill happens during a quick burst
BURST = 3


@contextmanager
def replicas(redis_server: EmbeddedRedis, checkpoint_dir: Path, tenant: str, **settings: object) -> Iterator[list]:
    """Two API replicas on one Redis, and a client for the tenant on each."""
    options = make_settings(redis_server.url, checkpoint_dir, api_keys=f"{tenant}:{tenant}-key", **settings)
    with ExitStack() as stack:
        urls = [stack.enter_context(live_server(options)) for _ in range(2)]
        headers = {"Authorization": f"Bearer {tenant}-key"}
        yield [stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=30)) for url in urls]


def live_sessions_of(redis_client, tenant: str) -> int:
    """Counted straight from the session keys in Redis, independently of the quota's own set."""
    owners = [redis_client.hget(key, "tenant") for key in redis_client.scan_iter(match=f"{KEY_PREFIX}:{{*}}:meta")]
    return owners.count(tenant.encode())


def assert_problem(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"], response.json()["detail"]


def test_session_quota_holds_across_replicas_and_frees_slots_on_delete(
    redis_server: EmbeddedRedis, checkpoint_dir: Path, redis_client
) -> None:
    with replicas(redis_server, checkpoint_dir, "quota-a", max_sessions_per_tenant=QUOTA) as clients:
        # Ten creates at once, spread over both replicas: exactly QUOTA succeed.
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda i: clients[i % 2].post("/v1/sessions", json={}), range(10)))
        created = [a.json()["session_id"] for a in answers if a.status_code == 201]
        refused = [a for a in answers if a.status_code != 201]
        assert len(created) == QUOTA and len(refused) == 10 - QUOTA
        for answer in refused:
            assert_problem(answer, 403, f"{QUOTA} live sessions, the limit (CMANP_MAX_SESSIONS_PER_TENANT)")
        assert live_sessions_of(redis_client, "quota-a") == QUOTA  # refused creates wrote nothing

        assert clients[0].delete(f"/v1/sessions/{created[0]}").status_code == 204
        assert clients[1].post("/v1/sessions", json={}).status_code == 201  # the deleted one's slot
        assert_problem(clients[0].post("/v1/sessions", json={}), 403, "CMANP_MAX_SESSIONS_PER_TENANT")
        assert live_sessions_of(redis_client, "quota-a") == QUOTA


def test_an_expired_session_frees_its_slot_but_a_refreshed_one_does_not(
    redis_server: EmbeddedRedis, checkpoint_dir: Path, redis_client
) -> None:
    with replicas(redis_server, checkpoint_dir, "quota-b", max_sessions_per_tenant=QUOTA) as clients:
        http = clients[0]
        for _ in range(QUOTA - 2):
            assert http.post("/v1/sessions", json={}).status_code == 201
        expiring = http.post("/v1/sessions", json={"ttl_seconds": 1}).json()["session_id"]
        refreshed = http.post("/v1/sessions", json={"ttl_seconds": 2}).json()["session_id"]
        assert_problem(http.post("/v1/sessions", json={}), 403, "CMANP_MAX_SESSIONS_PER_TENANT")

        time.sleep(1.2)  # 'expiring' expires; using 'refreshed' pushes its expiry to now + 2 s
        assert http.get(f"/v1/sessions/{refreshed}").status_code == 200
        time.sleep(1.0)  # 'refreshed' is past its first expiry, but alive
        assert http.get(f"/v1/sessions/{expiring}").status_code == 404
        assert http.post("/v1/sessions", json={}).status_code == 201  # took the expired session's slot
        assert_problem(http.post("/v1/sessions", json={}), 403, "CMANP_MAX_SESSIONS_PER_TENANT")
        assert http.get(f"/v1/sessions/{refreshed}").status_code == 200
        members = {m.decode() for m in redis_client.zrange(sessions_key("quota-b"), 0, -1)}
        assert refreshed in members and expiring not in members and len(members) == QUOTA


def test_rate_limit_is_shared_by_replicas_and_answers_429_with_retry_after(
    redis_server: EmbeddedRedis, checkpoint_dir: Path, redis_client
) -> None:
    limits = {"rate_limit_per_second": RATE, "rate_limit_burst": BURST}
    with replicas(redis_server, checkpoint_dir, "rate-a", **limits) as clients:
        start = time.monotonic()
        session_id = clients[0].post("/v1/sessions", json={}).json()["session_id"]  # 1 of the burst
        answers = [clients[i % 2].get("/v1/models") for i in range(2 * BURST)]
        elapsed = time.monotonic() - start
        assert elapsed < 1 / RATE, "too slow to test the burst: a refill happened"
        assert [a.status_code for a in answers] == [200] * (BURST - 1) + [429] * (BURST + 1)
        for answer in answers[BURST - 1 :]:
            assert_problem(answer, 429, f"rate limit of {RATE:g} requests/s (burst {BURST})")
            assert "CMANP_RATE_LIMIT_PER_SECOND" in answer.json()["detail"]
            # GCRA: the next request is allowed one interval after the burst began, i.e. within
            # [interval - elapsed, interval] from now, in whole seconds rounded up.
            retry_after = int(answer.headers["Retry-After"])
            assert math.ceil(1 / RATE - elapsed) <= retry_after <= math.ceil(1 / RATE)

        # A refused post changes nothing; health checks are not rate limited.
        before = raw_session(redis_client, session_id)
        refused = clients[1].post(f"/v1/sessions/{session_id}/context", json={"x": [[0.1]], "y": [[0.2]]})
        assert_problem(refused, 429, "retry in")
        assert raw_session(redis_client, session_id) == before
        assert clients[0].get("/healthz").status_code == 200

        time.sleep(int(refused.headers["Retry-After"]))
        assert clients[1].get("/v1/models").status_code == 200


def test_rate_limit_is_per_tenant_and_the_client_waits_out_429(
    redis_server: EmbeddedRedis, checkpoint_dir: Path
) -> None:
    keys = "rate-t0:rate-t0-key,rate-t1:rate-t1-key"
    options = make_settings(
        redis_server.url, checkpoint_dir, api_keys=keys, rate_limit_per_second=RATE, rate_limit_burst=BURST
    )
    with (
        live_server(options) as url,
        CMANPClient(url, "rate-t0-key", retry=RetryPolicy(retries=0)) as impatient,
        CMANPClient(url, "rate-t1-key", retry=RetryPolicy(retries=3, backoff=0.01)) as patient,
    ):
        for _ in range(BURST):
            impatient.models()
        with pytest.raises(CMANPError, match="429"):
            impatient.models()
        start = time.monotonic()
        for _ in range(BURST + 1):  # the other tenant has its own burst, then waits out one 429
            patient.models()
        assert time.monotonic() - start >= 1 / RATE - 0.5  # it did wait for Retry-After
