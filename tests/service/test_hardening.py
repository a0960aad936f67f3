"""Hardening: random session ids, constant-time key checks, no pickle, CORS off by default, request ids."""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service import dependencies
from tests.service.helpers import API_KEYS, REPO, live_server, make_settings

ALICE = {"Authorization": f"Bearer {API_KEYS['alice']}"}
ORIGIN = "https://app.example"


@contextmanager
def app_client(redis_server, checkpoint_dir: Path, **settings: object) -> Iterator[httpx.Client]:
    with (
        live_server(make_settings(redis_server.url, checkpoint_dir, **settings)) as url,
        httpx.Client(base_url=url) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def http(redis_server, checkpoint_dir: Path) -> Iterator[httpx.Client]:
    with app_client(redis_server, checkpoint_dir) as client:
        yield client


def test_session_ids_carry_at_least_128_random_bits(http: httpx.Client) -> None:
    ids = [http.post("/v1/sessions", json={}, headers=ALICE).json()["session_id"] for _ in range(64)]
    raw = [base64.urlsafe_b64decode(i + "=" * (-len(i) % 4)) for i in ids]
    assert len(set(ids)) == len(ids) and min(len(r) for r in raw) >= 16
    # Every one of the first 128 bits takes both values across 64 ids (a constant bit: odds 2^-63 each).
    bits = [int.from_bytes(r[:16], "big") for r in raw]
    always_one, always_zero = ~0, ~0
    for b in bits:
        always_one &= b
        always_zero &= ~b
    assert (always_one | always_zero) & ((1 << 128) - 1) == 0


def test_an_api_key_is_compared_with_every_stored_digest(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first tenant's key costs as many constant-time comparisons as an unknown key."""
    compared: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(dependencies.hmac, "compare_digest", counting)
    assert http.get("/v1/models", headers=ALICE).status_code == 200
    assert len(compared) == len(API_KEYS)
    compared.clear()
    assert http.get("/v1/models", headers={"Authorization": "Bearer unknown"}).status_code == 401
    assert len(compared) == len(API_KEYS)
    assert all(re.fullmatch("[0-9a-f]{64}", digest) for pair in compared for digest in pair)  # digests, never keys


def test_no_pickle_anywhere() -> None:
    """No module unpickles: no pickle imports, torch.load only with weights_only=True, np.load without pickles."""
    unsafe = re.compile(r"\bimport pickle\b|\bpickle\.|\bcloudpickle\b|\bdill\b|allow_pickle\s*=\s*True|\bjoblib\b")
    offenders = []
    folders = ("model", "service", "bench", "examples", "tests")
    sources = [p for folder in folders for p in (REPO / folder).rglob("*.py")]
    for path in sorted(set(sources) - {Path(__file__).resolve()}):
        text = path.read_text()
        loads = re.findall(r"torch\.load\([^)]*\)", text)
        if unsafe.search(text) or any("weights_only=True" not in call for call in loads):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_cors_is_off_by_default(http: httpx.Client) -> None:
    preflight = http.options("/v1/models", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"} | ALICE)
    plain = http.get("/v1/models", headers={"Origin": ORIGIN} | ALICE)
    assert preflight.status_code == 405 and plain.status_code == 200
    assert not any(h.lower().startswith("access-control-") for h in [*preflight.headers, *plain.headers])


def test_cors_allows_only_the_configured_origins(redis_server, checkpoint_dir: Path) -> None:
    with app_client(redis_server, checkpoint_dir, cors_allow_origins=ORIGIN) as client:
        request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = client.options("/v1/sessions", headers={"Origin": ORIGIN} | request)
        refused = client.options("/v1/sessions", headers={"Origin": "https://evil.example"} | request)
        plain = client.get("/v1/models", headers={"Origin": ORIGIN} | ALICE)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert plain.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in plain.headers["access-control-expose-headers"]


@pytest.mark.parametrize(
    ("given", "echoed"),
    [("abc-123.x:y_z", True), (None, False), ("has space", False), ("x" * 129, False), ("é".encode(), False)],
)
def test_request_ids_are_echoed_when_plain_tokens_and_generated_otherwise(
    http: httpx.Client, given: str | bytes | None, echoed: bool
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    answers = [http.get("/v1/sessions/missing", headers=ALICE | headers) for _ in range(2)]
    ids = [a.headers["X-Request-ID"] for a in answers]
    assert answers[0].status_code == 404  # error answers carry it too
    if echoed:
        assert ids == [given, given]
    else:
        assert ids[0] != ids[1] and all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
