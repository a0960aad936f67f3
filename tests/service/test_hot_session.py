"""One hot session: many concurrent writers and predicts on it.

Folds are single-flight per session and process: concurrent writers past the fold threshold
compute one fold, not one each (the regression: every writer folded, all but one commit lost).
Predicts fold only the log entries appended since the last predict (``FoldedStates``), and still
see every acknowledged point, exactly as a cold process does. Expected numbers come from the
model's own batch conditioning on exactly the posted points.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from service.app import create_app
from service.client import CMANPClient, CMANPError, RetryPolicy
from service.inference import Inference
from service.kinds.regression import REGRESSION, Predict
from service.store import KEY_PREFIX
from tests.service import helpers
from tests.service.helpers import API_KEYS, expected_prediction, sample_points
from tests.service.test_predict_batching import _snapshot, tiny_model

WRITERS, POSTS = 32, 12
THRESHOLD, PER_REQUEST = 16, 4  # folds every 16 points; the log is full at 20, so writers also hit "full"
QUERIES = np.linspace(-2.0, 2.0, 9)[:, None]


@pytest.fixture
def hot_server(redis_server, checkpoint_dir) -> Iterator[tuple[str, list[int]]]:
    """A server folding every THRESHOLD points; yields its URL and a list that gets the point count
    of every fold it computes (whether or not the fold then commits)."""
    settings = helpers.make_settings(
        redis_server.url, checkpoint_dir, fold_threshold_points=THRESHOLD, max_points_per_request=PER_REQUEST
    )
    app = create_app(settings)
    computed: list[int] = []
    with helpers.live_server(settings, app) as url:
        inference = app.state.services.inference
        fold = inference.fold

        async def counting_fold(kind, model, snapshot):  # noqa: ANN001, ANN202 - Inference.fold's signature
            computed.append(snapshot.log_points)
            return await fold(kind, model, snapshot)

        inference.fold = counting_fold
        yield url, computed


def test_concurrent_writers_fold_once_and_count_every_point_once(hot_server, server, redis_client, tiny_net) -> None:
    url, computed = hot_server
    x, y = sample_points(WRITERS * POSTS, seed=11)
    with CMANPClient(url, API_KEYS["alice"]) as setup:
        session_id = setup.create_session().session_id

    def write(writer: int) -> list[tuple[int, int]]:
        answers = []
        with CMANPClient(url, API_KEYS["alice"], retry=RetryPolicy(retries=0)) as client:
            for i in range(writer, WRITERS * POSTS, WRITERS):
                key = f"w{writer}-{i}"
                first = client.add_context(session_id, x[i : i + 1], y[i : i + 1], idempotency_key=key)
                again = client.add_context(session_id, x[i : i + 1], y[i : i + 1], idempotency_key=key)  # a retry
                assert again.replayed and (again.num_points, again.version) == (first.num_points, first.version)
                with pytest.raises(CMANPError) as refused:  # a bad request in the crowd changes nothing
                    client.add_context(session_id, x[i : i + 1], [[1.0, 2.0]])
                assert refused.value.status == 422
                answers.append((first.num_points, first.version))
        return answers

    with ThreadPoolExecutor(WRITERS) as pool:
        answers = [a for batch in pool.map(write, range(WRITERS)) for a in batch]
    total = WRITERS * POSTS
    assert sorted(v for _, v in answers) == list(range(1, total + 1))  # each post applied once, retries not
    assert sorted(n for n, _ in answers) == list(range(1, total + 1))

    helpers.wait_for_folds(redis_client, session_id, THRESHOLD)  # posts do not wait for the folds they start
    meta = redis_client.hgetall(f"{KEY_PREFIX}:{{{session_id}}}:meta")
    folds = int(meta[b"fold_epoch"])
    assert folds >= total // (THRESHOLD + PER_REQUEST)  # the log was folded again and again
    # One process: every fold computed is the only one in flight for the session, so it commits.
    # Without single flight, every writer past the threshold computed its own (hundreds here).
    assert len(computed) == folds
    assert all(THRESHOLD <= n <= THRESHOLD + PER_REQUEST for n in computed)

    helpers.assert_same_state(helpers.stored_state(redis_client, session_id, tiny_net), x, y, tiny_net)
    with CMANPClient(server, API_KEYS["alice"]) as client:  # same Redis; its limits allow 9 queries
        prediction = client.predict(session_id, QUERIES)
    assert (prediction.num_points, prediction.version) == (total, total)
    mean, variance = expected_prediction(tiny_net, x, y, QUERIES)
    np.testing.assert_allclose(prediction.mean, mean, atol=1e-4)
    np.testing.assert_allclose(prediction.variance, variance, rtol=1e-3)


def test_predicts_read_their_writes_and_match_a_cold_process(
    server, redis_server, redis_client, checkpoint_dir, tiny_net
) -> None:
    """Interleaved posts and predicts on one session, folding every 8 points: each predict (served
    from the cached state plus the new entries, or from scratch after a fold) matches the model on
    exactly the points posted before it, and a process without the cache gives the same answer."""
    x, y = sample_points(60, seed=12)
    settings = helpers.make_settings(
        redis_server.url, checkpoint_dir, fold_threshold_points=8, predict_cache_sessions=0
    )
    with (
        helpers.live_server(settings) as cold_url,
        CMANPClient(server, API_KEYS["alice"]) as warm,
        CMANPClient(cold_url, API_KEYS["alice"]) as cold,
    ):
        session_id = warm.create_session().session_id
        posted = 0
        for step, count in enumerate([1, 2, 1, 3, 1, 1, 4, 2, 1, 1, 3, 1] * 2):
            cold.add_context(session_id, x[posted : posted + count], y[posted : posted + count])
            posted += count
            got = warm.predict(session_id, QUERIES)
            assert got.num_points == posted
            mean, variance = expected_prediction(tiny_net, x[:posted], y[:posted], QUERIES)
            np.testing.assert_allclose(got.mean, mean, atol=1e-4, err_msg=f"step {step}")
            np.testing.assert_allclose(got.variance, variance, rtol=1e-3, err_msg=f"step {step}")
            if step % 5 == 0:
                # A fold landing between two predicts changes float rounding only: let it land first.
                helpers.wait_for_folds(redis_client, session_id, 8)
                got = warm.predict(session_id, QUERIES)
                again = warm.predict(session_id, QUERIES)  # nothing posted or folded in between: the same state
                np.testing.assert_array_equal(again.mean, got.mean)
                reference = cold.predict(session_id, QUERIES)
                np.testing.assert_allclose(got.mean, reference.mean, atol=1e-5)
                np.testing.assert_allclose(got.variance, reference.variance, rtol=1e-4)


def _updated_points(net, run) -> list[int]:  # noqa: ANN001
    """Run ``run()`` and return the number of points of every ``net.update`` call it made."""
    sizes: list[int] = []
    original = net.update

    def counting_update(state, x, y):  # noqa: ANN001, ANN202
        sizes.append(x.shape[1])
        return original(state, x, y)

    net.update = counting_update
    try:
        run()
    finally:
        del net.update
    return sizes


def test_a_predict_folds_only_the_entries_appended_since_the_last(tiny_net) -> None:
    model = tiny_model(tiny_net)
    x, y = sample_points(20, seed=13)
    inference = Inference(workers=1, torch_threads=1, folded_states=4)
    xq = QUERIES.astype(np.float32)

    def predict(snapshot) -> np.ndarray:  # noqa: ANN001
        return asyncio.run(inference.answer(REGRESSION, model, Predict(snapshot, xq))).mean

    base = _snapshot(model, x[:15], y[:15], logged=10)  # 5 points in the blob, 10 in the log
    assert _updated_points(tiny_net, lambda: predict(base)) == [10]
    grown = _snapshot(model, x[:18], y[:18], logged=13)  # the same blob, 3 more entries
    assert grown.state == base.state
    assert _updated_points(tiny_net, lambda: predict(grown)) == [3]
    assert _updated_points(tiny_net, lambda: predict(grown)) == []  # nothing new: the cached state
    got = predict(grown)
    np.testing.assert_allclose(got, expected_prediction(tiny_net, x[:18], y[:18], QUERIES)[0], atol=1e-5)

    # Same blob, but the log's head differs from what the cache folded (Redis lost writes, then
    # took others): the cache must not be used.
    rewritten = list(grown.log)
    rewritten[0] = grown.log[1]
    different = type(grown)(grown.session, grown.state, rewritten, grown.log_points, grown.fold_epoch)
    assert _updated_points(tiny_net, lambda: predict(different)) == [13]
    # A new blob (a fold committed): from scratch too.
    folded = _snapshot(model, x[:18], y[:18], logged=2)
    assert _updated_points(tiny_net, lambda: predict(folded)) == [2]
    np.testing.assert_allclose(predict(folded), got, atol=1e-5)


def test_the_cache_off_folds_from_scratch(tiny_net) -> None:
    model = tiny_model(tiny_net)
    x, y = sample_points(8, seed=14)
    inference = Inference(workers=1, torch_threads=1, folded_states=0)
    snapshot = _snapshot(model, x, y, logged=3)
    for _ in range(2):
        with torch.inference_mode():
            assert _updated_points(tiny_net, lambda: REGRESSION.folded_state(model, snapshot, inference.folded)) == [3]
