"""Schemathesis fuzzes the OpenAPI schema, in process over ASGI.

Every operation gets schema-valid (positive) and schema-breaking (negative) requests, with a
valid, a wrong or no API key, on random session ids or on a live session that has points. As
random point arrays almost never fit a session (right width, equal counts), a share of the
context and predict bodies on the live session are replaced by well-formed random points, so
that the model paths are fuzzed too. The app runs with its real lifespan against the test
redis-server and the tiny model. Each answer must not be a server error, and must match the
schema: a declared status code, content type, headers and body; a request the schema forbids
must not succeed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import shutdown_lifespans

from service.app import create_app
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import make_settings

MAX_CASES = 400
MIN_CASES = 330
FUZZ_KEY = "fuzz-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
AUTH = {"valid": {"Authorization": f"Bearer {FUZZ_KEY}"}, "wrong": {"Authorization": "Bearer nope"}, "none": {}}
# Feature values in one feature (the tiny model's dim_x = dim_y = 1): either all moderate, or any
# finite float32 (then mostly huge: those requests are refused by the range check).
MODERATE = st.floats(-1e3, 1e3, width=32)
ANY = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _points(n: int, value: st.SearchStrategy[float]) -> st.SearchStrategy[list[list[float]]]:
    return st.lists(st.lists(value, min_size=1, max_size=1), min_size=n, max_size=n)


def _bodies(fields: tuple[str, ...]) -> st.SearchStrategy[dict]:
    def of(n: int, value: st.SearchStrategy[float]) -> st.SearchStrategy[dict]:
        return st.fixed_dictionaries({field: _points(n, value) for field in fields})

    return st.tuples(st.integers(1, 20), st.sampled_from([MODERATE, ANY])).flatmap(lambda args: of(*args))


WELL_FORMED = {"context": _bodies(("x", "y")), "predict": _bodies(("x",))}


@pytest.fixture(scope="module")
def schema(redis_server: EmbeddedRedis, checkpoint_dir: Path) -> Iterator[schemathesis.schemas.BaseSchema]:
    # Its own tenant, so that the sessions of other tests do not count against its quota.
    settings_ = make_settings(
        redis_server.url, checkpoint_dir, api_keys=f"fuzz:{FUZZ_KEY}", rate_limit_per_second=1000, rate_limit_burst=1000
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(settings_))
    shutdown_lifespans()


def _live_session(schema: schemathesis.schemas.BaseSchema) -> str:
    """A session of the fuzz tenant holding a few points."""
    create = schema["/v1/sessions"]["POST"].Case(body={}, headers=AUTH["valid"]).call()
    assert create.status_code == 201, create.text
    session_id = create.json()["session_id"]
    context = schema["/v1/sessions/{session_id}/context"]["POST"].Case(
        path_parameters={"session_id": session_id}, body={"x": [[0.1], [0.7]], "y": [[0.2], [-0.3]]}
    )
    assert context.call(headers=AUTH["valid"]).status_code == 200
    return session_id


def test_fuzzed_requests_get_no_server_error_and_match_the_schema(schema) -> None:
    live = [_live_session(schema)]
    statuses: dict[str, Counter[int]] = {}
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))

    @settings(
        max_examples=MAX_CASES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, auth=st.sampled_from(["valid"] * 4 + ["wrong", "none"]), on_live=st.booleans(), data=st.data())
    def fuzz(case, auth: str, on_live: bool, data: st.DataObject) -> None:
        if on_live and "session_id" in (case.path_parameters or {}):
            case.path_parameters["session_id"] = live[0]
            action = case.path.rsplit("/", 1)[-1]
            if action in WELL_FORMED and data.draw(st.booleans(), label="well-formed body"):
                case.body = data.draw(WELL_FORMED[action], label="body")
        # The key chosen here replaces any Authorization header schemathesis generated.
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = headers | AUTH[auth]
        response = case.call()
        statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if case.method == "DELETE" and response.status_code == 204 and case.path_parameters["session_id"] == live[0]:
            live[0] = _live_session(schema)

    fuzz()
    total = sum(sum(counts.values()) for counts in statuses.values())
    print(f"\nschemathesis: {total} cases, 0 server errors, every answer conforms to the schema")
    for label, counts in sorted(statuses.items()):
        print(f"  {sum(counts.values()):4d}  {label:36s} status: {dict(sorted(counts.items()))}")
    assert total >= MIN_CASES
    assert len(statuses) == len(list(schema.get_all_operations()))  # every operation was fuzzed
