"""The regression session kind: parameters, posts as log entries, folds, calibration sums, answers;
and, through a live service, its routes refusing sessions of another kind and serving old sessions."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from service.client import CMANPClient
from service.errors import UnprocessableError
from service.folded_states import FoldedStates
from service.kinds.regression import REGRESSION, Points, Predict, Predicted, RegressionParams, log_entry
from service.kinds.regression_calibration import FULL_SCORING_POINTS, Aggregates, Scores
from service.registry import ModelRegistry, ServedModel
from service.store import Session, Snapshot, session_keys
from service.transforms import AffineMap
from tests.service.helpers import AUTH, REPO, expected_prediction, sample_points

IDENTITY = RegressionParams(AffineMap.identity(1), AffineMap.identity(1))
QUERIES = np.linspace(-2.0, 2.0, 7, dtype=np.float32)[:, None]


@pytest.fixture(scope="module")
def models(checkpoint_dir) -> ModelRegistry:
    return ModelRegistry.load(checkpoint_dir, default="tiny")


def session_of(model: ServedModel, params: RegressionParams, session_id: str = "s", **counters: int) -> Session:
    return Session(
        session_id, "t", model.name, model.fingerprint, "regression", params.to_fields(), 0.0, 60, **counters
    )


def snapshot_of(model: ServedModel, x: np.ndarray, y: np.ndarray, params: RegressionParams = IDENTITY) -> Snapshot:
    """A session whose every point is still in its log, one post per point."""
    log = [log_entry(x[i : i + 1], y[i : i + 1]) for i in range(len(x))]
    session = session_of(model, params, num_points=len(x), version=len(x))
    return Snapshot(session, None, log, log_points=len(x), fold_epoch=0)


# ---- parameters and posts -------------------------------------------------------------------------
def test_parameters_are_stored_under_the_field_names_sessions_always_had() -> None:
    params = RegressionParams(
        AffineMap.from_lists([1.0, 2.0], [3.0, 4.0]), AffineMap.from_lists([5.0], [6.0]), True, False
    )
    fields = params.to_fields()
    assert fields == {
        "x_transform": '{"shift":[1.0,2.0],"scale":[3.0,4.0]}',
        "y_transform": '{"shift":[5.0],"scale":[6.0]}',
        "y_auto": "1",
        "y_fixed": "0",
    }
    back = RegressionParams.from_fields(fields)
    assert (back.dim_x, back.dim_y, back.y_provisional) == (2, 1, True)
    assert back.x_transform.scale.tolist() == [3.0, 4.0] and back.y_transform.shift.tolist() == [5.0]


def test_a_session_from_before_auto_scaling_has_given_maps() -> None:
    params = RegressionParams.from_fields(
        {"x_transform": '{"shift":[0],"scale":[2]}', "y_transform": IDENTITY.to_fields()["y_transform"]}
    )
    assert (params.y_auto, params.y_fixed, params.y_provisional) == (False, True, False)


def test_a_post_becomes_float32_rows_of_x_then_y_in_model_units() -> None:
    params = RegressionParams(AffineMap.from_lists([10.0], [2.0]), AffineMap.from_lists([1.0], [0.5]))
    entry = REGRESSION.encode(params, Points([[12.0], [14.0]], [[2.0], [0.0]]))
    assert entry.points == 2 and entry.order is None
    assert np.frombuffer(entry.data, "<f4").reshape(2, 2).tolist() == [[1.0, 2.0], [2.0, -2.0]]


def test_an_auto_scaled_session_logs_y_in_user_units_and_checks_it_once_its_map_is_fixed() -> None:
    provisional = RegressionParams(AffineMap.identity(1), AffineMap.identity(1), y_auto=True, y_fixed=False)
    entry = REGRESSION.encode(provisional, Points([[0.5]], [[5000.0]]))
    assert np.frombuffer(entry.data, "<f4").tolist() == [0.5, 5000.0]
    fixed = RegressionParams(AffineMap.identity(1), AffineMap.from_lists([0.0], [1e-3]), y_auto=True, y_fixed=True)
    with pytest.raises(UnprocessableError, match="y has values too large"):
        REGRESSION.encode(fixed, Points([[0.5]], [[5000.0]]))


def test_a_flat_list_is_one_feature_per_point_so_it_needs_a_one_feature_model() -> None:
    params = RegressionParams(AffineMap.identity(2), AffineMap.identity(1))
    with pytest.raises(UnprocessableError, match=r"x is a flat list.*\[\[x1, x2\], \.\.\.\]"):
        REGRESSION.encode(params, Points([[1.0], [2.0]], [[1.0], [2.0]], flat=frozenset({"x", "y"})))
    assert REGRESSION.encode(params, Points([[1.0, 2.0]], [[1.0]], flat=frozenset({"y"}))).points == 1


# ---- folds and calibration ------------------------------------------------------------------------
def test_a_fold_without_scoring_is_the_model_s_own_update(models: ModelRegistry) -> None:
    model = models.get("tiny")
    x, y = sample_points(20, seed=3)
    fold = REGRESSION.fold(model, snapshot_of(model, x, y), scoring=False)
    with torch.inference_mode():
        expected = model.net.update(model.net.empty_state(), torch.from_numpy(x[None]), torch.from_numpy(y[None]))
    assert fold.state == expected.to_bytes()
    assert fold.sums == {} and fold.fields == {}  # every point in range: no out-of-range count


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize(("before", "batch"), [(0, 40), (300, 256), (256, 3), (0, 1)])
def test_a_scoring_fold_commits_the_state_of_every_point_whatever_path_built_it(
    models: ModelRegistry, before: int, batch: int, tiled: bool
) -> None:
    # A scoring fold's last state is merged from the interpolation shares' states, not updated
    # again: it must predict as conditioning on all points at once does (batches crossing a power
    # of two are forecast in several blocks; a batch of one point has one share). Tiled: the
    # shipped default model, whose state is a pyramid of tiles.
    model = ServedModel.load(REPO / "checkpoints" / "cmanp-gp-general.safetensors") if tiled else models.get("tiny")
    x, y = sample_points(before + batch, seed=5)
    with torch.inference_mode():
        snapshot = snapshot_of(model, x[before:], y[before:])
        if before:  # else no blob yet: the session's first fold
            stored = model.net.condition(torch.from_numpy(x[None, :before]), torch.from_numpy(y[None, :before]))
            snapshot = Snapshot(snapshot.session, stored.to_bytes(), snapshot.log, batch, 0)
        folded = model.net.state_from_bytes(REGRESSION.fold(model, snapshot, scoring=True).state)
        expected = model.net.condition(torch.from_numpy(x[None]), torch.from_numpy(y[None]))
        xq = torch.from_numpy(QUERIES[None])
        for got, want in zip(model.net.predict(folded, xq), model.net.predict(expected, xq), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert int(folded.num_points[0]) == before + batch


@pytest.mark.parametrize(
    ("scored_before", "fold_epoch", "scored"),
    [(0, 7, True), (FULL_SCORING_POINTS - 1, 5, True), (FULL_SCORING_POINTS, 5, False), (FULL_SCORING_POINTS, 8, True)],
)
def test_past_the_full_scoring_points_one_fold_batch_in_four_is_scored(
    models: ModelRegistry, scored_before: int, fold_epoch: int, scored: bool
) -> None:
    model = models.get("tiny")
    x, y = sample_points(40, seed=6)
    snapshot = snapshot_of(model, x, y)
    session = session_of(model, IDENTITY, num_points=40, version=40)
    session.sums.update(Scores(Aggregates(points=scored_before, values=scored_before)).to_sums())
    empty = model.net.empty_state().to_bytes()  # a folded session's blob (its points do not matter here)
    snapshot = Snapshot(session, empty, snapshot.log, 40, fold_epoch)
    fold = REGRESSION.fold(model, snapshot, scoring=True)
    scores = Scores.from_sums(fold.sums)
    assert (scores.interpolation.points, scores.forecast.points) == ((40, 40) if scored else (0, 0))
    assert REGRESSION.score_log(model, snapshot, scoring=True).to_sums() == fold.sums  # GET reports what folds commit
    with torch.inference_mode():  # scored or not, the state is every point's
        expected = model.net.condition(torch.from_numpy(x[None]), torch.from_numpy(y[None]))
        got = model.net.state_from_bytes(fold.state)
        torch.testing.assert_close(
            model.net.predict(got, torch.from_numpy(QUERIES[None]))[0],
            model.net.predict(expected, torch.from_numpy(QUERIES[None]))[0],
            rtol=1e-4,
            atol=1e-5,
        )


def test_a_fold_scores_each_point_twice_and_reading_the_log_scores_it_the_same(models: ModelRegistry) -> None:
    model = models.get("tiny")
    x, y = sample_points(40, seed=4)
    snapshot = snapshot_of(model, x, y)
    fold = REGRESSION.fold(model, snapshot, scoring=True)
    scores = REGRESSION.calibration(fold.sums)
    assert isinstance(scores, Scores)
    assert scores.forecast.points == scores.interpolation.points == 40
    assert REGRESSION.score_log(model, snapshot, scoring=True).to_sums() == fold.sums
    report = scores.report(enabled=True)
    assert report["status"] == "insufficient_data" and report["forecast"]["scored_points"] == 40


def test_the_first_fold_of_an_auto_scaled_session_fixes_its_map(models: ModelRegistry) -> None:
    model = models.get("tiny")
    x, y = sample_points(10, seed=5)
    y = 100.0 + 20.0 * y
    provisional = RegressionParams(AffineMap.identity(1), AffineMap.identity(1), y_auto=True, y_fixed=False)
    fold = REGRESSION.fold(model, snapshot_of(model, x, y, provisional), scoring=False)
    fixed = RegressionParams.from_fields(IDENTITY.to_fields() | fold.fields)
    np.testing.assert_allclose(fixed.y_transform.shift, [y.astype(np.float64).mean()], rtol=1e-6)
    np.testing.assert_allclose(fixed.y_transform.scale, [y.astype(np.float64).std()], rtol=1e-6)
    assert fold.fields["y_fixed"] == "1"


# ---- answers --------------------------------------------------------------------------------------
def test_marginal_queries_on_several_sessions_are_answered_in_one_call_each_as_alone(models: ModelRegistry) -> None:
    model = models.get("tiny")
    data = [sample_points(n, seed=n) for n in (3, 9)]
    queries = [Predict(snapshot_of(model, x, y), QUERIES) for x, y in data]
    queries = [
        Predict(Snapshot(session_of(model, IDENTITY, f"s{i}"), None, q.snapshot.log, 0, 0), q.x)
        for i, q in enumerate(queries)
    ]
    answers = REGRESSION.answer(model, FoldedStates(4), queries)
    for (x, y), answer in zip(data, answers, strict=True):
        assert isinstance(answer, Predicted)
        mean, variance = expected_prediction(model.net, x, y, QUERIES)
        np.testing.assert_allclose(answer.mean, mean, atol=1e-5)
        np.testing.assert_allclose(answer.variance, variance, atol=1e-5)


def test_a_joint_query_gets_a_covariance_and_seeded_samples(models: ModelRegistry) -> None:
    model = models.get("tiny-and")
    x, y = sample_points(6, seed=6)
    query = Predict(snapshot_of(model, x, y), QUERIES[:4], joint=True, num_samples=3, seed=7)
    (first,) = REGRESSION.answer(model, FoldedStates(4), [query])
    (again,) = REGRESSION.answer(model, FoldedStates(4), [query])
    assert isinstance(first, Predicted) and isinstance(again, Predicted)
    assert first.covariance.shape == (1, 4, 4) and first.samples.shape == (3, 4, 1)
    np.testing.assert_allclose(first.variance[:, 0], np.diagonal(first.covariance[0]))
    np.testing.assert_array_equal(first.samples, again.samples)


def test_a_broken_state_is_the_answer_of_its_own_query_only(models: ModelRegistry) -> None:
    model = models.get("tiny")
    x, y = sample_points(4, seed=8)
    good = snapshot_of(model, x, y)
    bad = Snapshot(session_of(model, IDENTITY, "bad", num_points=4), b"not a state", good.log, 4, 1)
    answers = REGRESSION.answer(model, FoldedStates(4), [Predict(bad, QUERIES), Predict(good, QUERIES)])
    assert "unreadable" in str(answers[0]) and isinstance(answers[1], Predicted)


# ---- routes, through a live service ---------------------------------------------------------------
def test_a_session_of_another_kind_gets_409_from_the_regression_routes_and_nothing_changes(
    server: str, client: CMANPClient, redis_client
) -> None:
    # A session of a kind this server does not serve (say, one of a newer server sharing the Redis):
    # a regression session's record under a new id, with another kind recorded. (Event sessions,
    # which it does serve, are refused the same way: tests/service/test_kinds_events.py.)
    template = client.create_session().session_id
    client.add_context(template, [0.1, 0.2], [1.0, 2.0])
    session_id = "a-rankings-session"
    meta_key, _, log_key, _ = session_keys(session_id)
    redis_client.hset(meta_key, mapping=redis_client.hgetall(session_keys(template)[0]) | {b"kind": b"rankings"})
    redis_client.rpush(log_key, *redis_client.lrange(session_keys(template)[2], 0, -1))
    before = (redis_client.hgetall(meta_key), redis_client.lrange(log_key, 0, -1))
    for route, body in (("context", {"x": [0.3], "y": [3.0]}), ("predict", {"x": [0.0]})):
        r = httpx.post(f"{server}/v1/sessions/{session_id}/{route}", json=body, headers=AUTH)
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        assert f"is a rankings session; POST {route} is a route of regression sessions" in r.json()["detail"]
    r = httpx.get(f"{server}/v1/sessions/{session_id}", headers=AUTH)
    assert (
        r.status_code == 409
        and "kind 'rankings' are not served here (served: events, regression)" in r.json()["detail"]
    )
    after = (redis_client.hgetall(meta_key), redis_client.lrange(log_key, 0, -1))
    assert after == before
    assert httpx.delete(f"{server}/v1/sessions/{session_id}", headers=AUTH).status_code == 204
    assert not redis_client.exists(meta_key, log_key)


def test_a_session_stored_before_kinds_were_recorded_is_served_as_regression(
    client: CMANPClient, redis_client, tiny_net
) -> None:
    session_id = client.create_session().session_id
    redis_client.hdel(session_keys(session_id)[0], "kind")  # its meta hash as the service wrote it before kinds
    x, y = sample_points(12, seed=9)
    client.add_context(session_id, x[:5], y[:5])
    client.add_context(session_id, x[5:], y[5:])
    got = client.predict(session_id, QUERIES)
    mean, variance = expected_prediction(tiny_net, x, y, QUERIES)
    np.testing.assert_allclose(got.mean, mean, atol=1e-4)
    np.testing.assert_allclose(got.variance, variance, atol=1e-4)
    info = client.get_session(session_id)
    assert (info.num_points, info.version, info.y_scaling) == (12, 2, "given")
    assert not redis_client.hexists(session_keys(session_id)[0], "kind")  # nothing rewrote its record
