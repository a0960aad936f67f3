"""What a new user meets first over HTTP (issue 21): flat point lists, a body sent without the JSON
header, a bad transform value, message grammar, and a prediction from a session with no points.

Refusals are checked from outside: one clear problem detail, and every Redis key of the session
byte-identical (DUMP) before and after. Accepted flat lists are read back from the raw Redis log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from model import CMANPConfig
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import (
    AUTH,
    TINY,
    TINY_CARD,
    build_checkpoint,
    live_server,
    logged_points,
    make_settings,
    raw_session,
    session_keys_in_redis,
)

PLANE = CMANPConfig(**{**TINY.to_dict(), "dim_x": 2})  # two input features, one output
PRIOR_WARNING = "no context yet: this is the model's prior"
# A count of one with a plural noun, or another count with a singular one.
BAD_GRAMMAR = re.compile(
    r"\b1 (points|features|dimensions|values|sessions|live sessions|query points|targets)\b"
    r"|\b(0|[2-9]|\d\d+) (point|feature|dimension|value|live session|query point|target)\b(?!s)"
)


@pytest.fixture(scope="module")
def plane_server(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose default model is 1-D ('tiny') and that also serves a model with dim_x = 2 ('plane')."""
    directory = tmp_path_factory.mktemp("plane-checkpoints")
    build_checkpoint(directory, "tiny", TINY, seed=0, card=TINY_CARD)
    build_checkpoint(directory, "plane", PLANE, seed=1)
    with live_server(make_settings(redis_server.url, directory)) as url:
        yield url


def new_session(server: str, **body: object) -> str:
    answer = httpx.post(f"{server}/v1/sessions", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


def post(server: str, path: str, **options: object) -> httpx.Response:
    return httpx.post(f"{server}{path}", headers=AUTH | options.pop("headers", {}), **options)


def problem_detail(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    detail = answer.json()["detail"]
    assert not BAD_GRAMMAR.search(detail), detail
    return detail


def all_session_keys(client: redis.Redis) -> list[bytes]:
    """Every key of the service, but fold leases (held for a moment by a fold in flight)."""
    return sorted(key for key in client.scan_iter(match="cmanp:*") if not key.endswith(b":fold_lease"))


# ---- item 2: flat lists -------------------------------------------------------------------------


def test_flat_lists_are_one_point_per_number_on_a_1d_model(plane_server: str, redis_client: redis.Redis) -> None:
    session_id = new_session(plane_server)
    answer = post(plane_server, f"/v1/sessions/{session_id}/context", json={"x": [1.5, 2.0], "y": [0.3, 0.4]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_points"] == 2
    x, y = logged_points(redis_client, session_id, 1, 1)
    np.testing.assert_array_equal(x, np.float32([[1.5], [2.0]]))
    np.testing.assert_array_equal(y, np.float32([[0.3], [0.4]]))

    flat = post(plane_server, f"/v1/sessions/{session_id}/predict", json={"x": [0.0, 0.5]})
    rows = post(plane_server, f"/v1/sessions/{session_id}/predict", json={"x": [[0.0], [0.5]]})
    assert flat.status_code == rows.status_code == 200, flat.text
    assert np.shape(flat.json()["mean"]) == (2, 1)
    assert flat.json()["mean"] == rows.json()["mean"] and flat.json()["variance"] == rows.json()["variance"]


def test_a_flat_y_is_fine_beside_2d_x_points(plane_server: str, redis_client: redis.Redis) -> None:
    session_id = new_session(plane_server, model="plane")
    body = {"x": [[0.1, 0.2], [0.3, 0.4]], "y": [0.5, 0.6]}
    assert post(plane_server, f"/v1/sessions/{session_id}/context", json=body).status_code == 200
    x, y = logged_points(redis_client, session_id, 2, 1)
    np.testing.assert_array_equal(x, np.float32(body["x"]))
    np.testing.assert_array_equal(y, np.float32([[0.5], [0.6]]))


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [("context", {"x": [0.1, 0.2], "y": [0.5, 0.6]}), ("predict", {"x": [0.1, 0.2]})],
)
def test_a_flat_x_on_a_2d_model_gets_one_clear_422(
    plane_server: str, redis_client: redis.Redis, endpoint: str, body: dict
) -> None:
    session_id = new_session(plane_server, model="plane")
    assert post(plane_server, f"/v1/sessions/{session_id}/context", json={"x": [[0.0, 0.0]], "y": [0.0]}).is_success
    before = raw_session(redis_client, session_id)
    detail = problem_detail(post(plane_server, f"/v1/sessions/{session_id}/{endpoint}", json=body), 422)
    assert detail == (
        "x is a flat list, which means one feature per point, but the session's model takes 2 features per "
        "point: send x as a list of points, [[x1, x2], ...]"
    )
    assert raw_session(redis_client, session_id) == before


def test_the_schema_documents_flat_lists(plane_server: str) -> None:
    schemas = httpx.get(f"{plane_server}/openapi.json").json()["components"]["schemas"]
    for model in ("Context", "Query"):
        x = schemas[model]["properties"]["x"]
        shapes = [branch["items"].get("type", "array") for branch in x["oneOf"]]
        assert sorted(shapes) == ["array", "number"], x
        assert "flat list" in x["description"]


def test_bad_items_in_a_flat_list_are_reported_once(plane_server: str, redis_client: redis.Redis) -> None:
    session_id = new_session(plane_server)
    before = raw_session(redis_client, session_id)
    answer = post(plane_server, f"/v1/sessions/{session_id}/context", json={"x": [1.5, "2"], "y": [0.3, 0.4]})
    assert problem_detail(answer, 422) == "body.x.1: Input should be a valid number"
    assert raw_session(redis_client, session_id) == before


# ---- item 3: a body without the JSON header ------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_names_the_header(
    plane_server: str, redis_client: redis.Redis, content_type: str | None
) -> None:
    session_id = new_session(plane_server)
    before = raw_session(redis_client, session_id)
    headers = {"Content-Type": content_type} if content_type else {}
    answer = post(
        plane_server, f"/v1/sessions/{session_id}/context", content=b'{"x": [[0.5]], "y": [[0.5]]}', headers=headers
    )
    assert answer.request.headers.get("content-type") == content_type
    detail = problem_detail(answer, 415)
    assert "must be JSON" in detail and "'Content-Type: application/json'" in detail, detail
    assert (repr(content_type) if content_type else "had none") in detail
    assert raw_session(redis_client, session_id) == before


def test_a_create_not_sent_as_json_creates_nothing(plane_server: str, redis_client: redis.Redis) -> None:
    before = all_session_keys(redis_client)
    answer = post(plane_server, "/v1/sessions", content=b'{"model": "tiny"}', headers={"Content-Type": "text/plain"})
    assert "'Content-Type: application/json'" in problem_detail(answer, 415)
    assert all_session_keys(redis_client) == before


# ---- item 4: one constraint, not one error per shape --------------------------------------------


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ({"y_transform": {"scale": 0}}, "body.y_transform.scale: Input should be greater than 0"),
        ({"y_transform": {"scale": [0.5, -1]}}, "body.y_transform.scale.1: Input should be greater than 0"),
        ({"x_transform": {"shift": "a"}}, "body.x_transform.shift: Input should be a valid number"),
        (
            {"x_transform": {"low": 0, "high": [1, 2], "scale": 2}},
            "body.x_transform.scale: Extra inputs are not permitted",
        ),
    ],
)
def test_a_bad_transform_value_reports_the_one_constraint_it_broke(
    plane_server: str, redis_client: redis.Redis, transform: dict, expected: str
) -> None:
    before = all_session_keys(redis_client)
    answer = httpx.post(f"{plane_server}/v1/sessions", json=transform, headers=AUTH)
    assert problem_detail(answer, 422) == expected
    assert all_session_keys(redis_client) == before


# ---- item 5: singular and plural ----------------------------------------------------------------


def test_messages_count_in_the_right_number(plane_server: str, redis_client: redis.Redis) -> None:
    session_id = new_session(plane_server)
    plane_id = new_session(plane_server, model="plane")
    cases = [
        (f"/v1/sessions/{session_id}/context", {"x": [[0.5], [0.5, 1.0]], "y": [[0.5], [0.5]]}, 422,
         "row 0 has 1 feature, row 1 has 2"),
        (f"/v1/sessions/{session_id}/context", {"x": [[0.5]], "y": [[0.5], [0.6]]}, 422, "x has 1 point but y has 2"),
        (f"/v1/sessions/{plane_id}/context", {"x": [[0.5]], "y": [[0.5]]}, 422,
         "x has 1 feature per point, the session's model expects 2"),
        (f"/v1/sessions/{session_id}/predict", {"x": [[0.5, 1.0]]}, 422, "x has 2 features per point"),
        ("/v1/sessions", {"x_transform": {"shift": [0.0, 1.0]}}, 422, "has 2 values, the model has 1 dimension"),
        ("/v1/sessions", {"model": "plane", "y_transform": {"scale": [1.0, 2.0, 3.0]}}, 422,
         "has 3 values, the model has 1 dimension"),
    ]  # fmt: skip
    before = raw_session(redis_client, session_id), raw_session(redis_client, plane_id)
    for path, body, status, words in cases:
        detail = problem_detail(post(plane_server, path, json=body), status)
        assert words in detail, detail
    assert (raw_session(redis_client, session_id), raw_session(redis_client, plane_id)) == before

    one_outside = post(plane_server, f"/v1/sessions/{session_id}/predict", json={"x": [[3.0]]}).json()["warnings"]
    assert any(w.startswith("1 of 1 query point lies outside") for w in one_outside), one_outside
    some_outside = post(plane_server, f"/v1/sessions/{session_id}/predict", json={"x": [3.0, 0.0, 4.0]})
    assert any(w.startswith("2 of 3 query points lie outside") for w in some_outside.json()["warnings"])


def test_the_quota_message_counts_one_session(own_redis: EmbeddedRedis, checkpoint_dir: Path) -> None:
    with live_server(make_settings(own_redis.url, checkpoint_dir, max_sessions_per_tenant=1)) as server:
        new_session(server)
        detail = problem_detail(httpx.post(f"{server}/v1/sessions", json={}, headers=AUTH), 403)
        assert "this tenant already has 1 live session, the limit" in detail


# ---- item 6: the prior says so --------------------------------------------------------------------


def test_a_prediction_with_no_context_says_it_is_the_prior(plane_server: str, redis_client: redis.Redis) -> None:
    session_id = new_session(plane_server)
    keys = session_keys_in_redis(redis_client, session_id)
    prior = post(plane_server, f"/v1/sessions/{session_id}/predict", json={"x": [[0.0], [3.0]]})
    assert prior.status_code == 200
    warnings = prior.json()["warnings"]
    assert warnings[0] == PRIOR_WARNING and len(warnings) == 2 and "outside" in warnings[1], warnings
    assert session_keys_in_redis(redis_client, session_id) == keys  # predicting wrote nothing

    assert post(plane_server, f"/v1/sessions/{session_id}/context", json={"x": [0.5], "y": [0.1]}).is_success
    posterior = post(plane_server, f"/v1/sessions/{session_id}/predict", json={"x": [[0.0]]})
    assert posterior.json()["warnings"] == []
