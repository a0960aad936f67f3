"""The event session kind: parameters, posts as log entries, folds and their scores, forecasts; and,
through a live service, its routes (events in order or 409, bad input refused with nothing changed,
forecasts equal to the model's own on the same events, other kinds' routes refused)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from model import CMHP
from service.client import CMANPClient, CMANPError, EventSessionInfo
from service.errors import UnprocessableError
from service.folded_states import FoldedStates
from service.kinds.events import EVENTS, EventParams, EventPost, Forecast, Forecasted
from service.kinds.events_calibration import EventScores
from service.registry import ModelRegistry, ServedModel
from service.store import Session, Snapshot, session_keys
from tests.service.helpers import (
    API_KEYS,
    AUTH,
    DEFAULT_FOLD_THRESHOLD,
    assert_same_event_state,
    event_stream,
    raw_session,
    stored_event_state,
    wait_for_folds,
)

MODEL = "tiny-events"
PARAMS = EventParams(time_origin=1000.0, time_scale=2.0, num_marks=3)


@pytest.fixture(scope="module")
def model(checkpoint_dir) -> ServedModel:
    return ModelRegistry.load(checkpoint_dir, default="tiny").get(MODEL)


@pytest.fixture(scope="module")
def net(model: ServedModel) -> CMHP:
    return model.net


def snapshot_of(model: ServedModel, t: np.ndarray, k: np.ndarray, posts: int = 1) -> Snapshot:
    """A session (clock PARAMS) whose events t, k (user units) are all still in its log, in ``posts`` posts."""
    chunks = zip(np.array_split(t, posts), np.array_split(k, posts), strict=True)
    log = [EVENTS.encode(PARAMS, EventPost(list(tp), list(kp))).data for tp, kp in chunks]
    session = Session("s", "t", model.name, model.fingerprint, "events", PARAMS.to_fields(), 0.0, 60, len(t), posts)
    return Snapshot(session, None, log, log_points=len(t), fold_epoch=0)


def user_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    t, k = event_stream(n, seed)
    return PARAMS.time_origin + PARAMS.time_scale * t, k


def model_times(t: np.ndarray) -> np.ndarray:
    return (t - PARAMS.time_origin) / PARAMS.time_scale


# ---- parameters and posts -------------------------------------------------------------------------
def test_parameters_round_trip_and_the_last_time_is_the_store_s_field() -> None:
    fields = PARAMS.to_fields()
    assert fields == {"time_origin": "1000.0", "time_scale": "2.0", "num_marks": "3"}
    assert EventParams.from_fields(fields) == PARAMS
    assert EventParams.from_fields(fields | {"time": "1234.5"}).last_time == 1234.5


def test_a_post_becomes_model_time_records_ordered_after_the_session_s_last_event() -> None:
    entry = EVENTS.encode(PARAMS, EventPost([1002.0, 1002.0, 1007.0], [2, 0, 1]))
    records = np.frombuffer(entry.data, dtype=[("t", "<f8"), ("k", "<i4")])
    assert records["t"].tolist() == [1.0, 1.0, 3.5] and records["k"].tolist() == [2, 0, 1]
    assert entry.points == 3
    assert (entry.order.field, entry.order.first, entry.order.last) == ("time", 1002.0, 1007.0)


@pytest.mark.parametrize(
    ("times", "marks", "match"),
    [
        ([1.0, 3.0, 2.0], [0, 0, 0], r"non-decreasing within a post: times\[2\] = 2.0 comes after 3.0"),
        ([1.0, 2.0], [0, 3], r"marks\[1\] = 3 is not a mark of the session's model, whose marks are 0..2"),
        ([1.0], [-1], r"marks\[0\] = -1"),
        ([1e300], [0], "too far from the session's time_origin"),
    ],
)
def test_posts_that_do_not_fit_the_session_are_refused(times, marks, match) -> None:
    with pytest.raises(UnprocessableError, match=match):
        EVENTS.encode(PARAMS, EventPost(times, marks))


# ---- folds and calibration ------------------------------------------------------------------------
def test_a_fold_without_scoring_is_the_model_s_own_conditioning(model: ServedModel, net: CMHP) -> None:
    t, k = user_stream(40, seed=1)
    fold = EVENTS.fold(model, snapshot_of(model, t, k, posts=5), scoring=False)
    assert fold.sums == {} and fold.fields == {}
    assert_same_event_state(net.state_from_bytes(fold.state), model_times(t), k, net)


def test_each_event_but_the_first_is_scored_by_the_state_of_the_events_before_it(model: ServedModel, net: CMHP) -> None:
    t, k = user_stream(30, seed=2)
    snapshot = snapshot_of(model, t, k, posts=4)
    fold = EVENTS.fold(model, snapshot, scoring=True)
    scores = EVENTS.calibration(fold.sums)
    assert isinstance(scores, EventScores) and scores.events == 29
    assert EVENTS.score_log(model, snapshot, scoring=True).to_sums() == fold.sums
    # Independently: each prefix batch-conditioned from scratch, read at its last event.
    tm, pits, lls, probs = torch.tensor(model_times(t))[None], [], [], []
    with torch.no_grad():
        for i in range(1, len(t)):
            before = net.condition(tm[:, :i], torch.tensor(k[:i])[None])
            t_next, k_next = tm[:, i], torch.tensor(k[i : i + 1])
            lls.append(net.log_prob_next(before, t_next, k_next).item())
            pits.append(net.waiting_time_cdf(before, t_next).item())
            probs.append(net.next_event(before).mark_probs[0].double())
    want = EventScores.of_scores(torch.tensor(pits), torch.tensor(lls), torch.stack(probs), torch.tensor(k[1:]))
    for name in ("log_likelihood", "mark_log_likelihood", "compensator", "pit_sum", "pit_dispersion"):
        assert getattr(scores, name) == pytest.approx(getattr(want, name), abs=1e-4), name
    assert scores.pit == want.pit and scores.observed == want.observed
    np.testing.assert_allclose(scores.expected, want.expected, atol=1e-4)
    np.testing.assert_allclose(scores.covariance, want.covariance, atol=1e-4)
    # A second fold scores its first event by the state of the first fold: nothing is skipped.
    first = Snapshot(snapshot.session, None, snapshot.log[:2], 0, 0)
    rest = Snapshot(snapshot.session, EVENTS.fold(model, first, False).state, snapshot.log[2:], 0, 1)
    split = EVENTS.score_log(model, first, True) + EVENTS.score_log(model, rest, True)
    assert split.events == 29 and split.compensator == pytest.approx(scores.compensator, abs=1e-6)


# ---- forecasts ------------------------------------------------------------------------------------
def test_a_forecast_is_the_model_s_next_event_and_seeded_samples_repeat(model: ServedModel, net: CMHP) -> None:
    t, k = user_stream(25, seed=3)
    snapshot = snapshot_of(model, t, k, posts=3)
    now = float(model_times(t)[-1]) + 0.5
    query = Forecast(snapshot, now, (0.1, 0.5, 0.9), horizon=4.0, samples=100, max_events=50, seed=7)
    (first,) = EVENTS.answer(model, FoldedStates(4), [query])
    (again,) = EVENTS.answer(model, FoldedStates(4), [query])
    assert isinstance(first, Forecasted) and isinstance(again, Forecasted)
    with torch.no_grad():
        state = net.condition(torch.tensor(model_times(t))[None], torch.tensor(k)[None])
        want = net.next_event(state, now, (0.1, 0.5, 0.9))
    np.testing.assert_allclose(first.wait_quantiles, want.quantiles[0].numpy(), rtol=1e-4)
    np.testing.assert_allclose(first.mark_probs, want.mark_probs[0].numpy(), atol=1e-5)
    assert first.mean_wait == pytest.approx(want.mean.item(), rel=1e-4)
    np.testing.assert_array_equal(first.counts, again.counts)
    np.testing.assert_array_equal(np.nan_to_num(first.times, nan=-1), np.nan_to_num(again.times, nan=-1))
    assert first.counts.shape == (100,) and first.seed == 7
    assert ((first.times > now) & (first.times <= now + 4.0)).sum() == first.counts.sum()
    mean, error = first.expected_events()
    assert mean == first.counts.mean() and 0 < error < mean


def test_forecasts_batched_across_sessions_are_each_session_s_own(model: ServedModel, net: CMHP) -> None:
    """Queries that share quantiles run as one model call: each answer is its session's alone, and a
    query that cannot be answered (now before its last event) fails alone."""
    streams = [user_stream(n, seed) for n, seed in ((5, 11), (30, 12), (12, 13))]
    queries = [
        Forecast(snapshot_of(model, t, k), float(model_times(t)[-1]) + 0.3 * (i + 1), (0.2, 0.8))
        for i, (t, k) in enumerate(streams)
    ]
    late = streams[1]
    queries.append(Forecast(snapshot_of(model, *late), float(model_times(late[0])[-1]) - 1.0, (0.2, 0.8)))
    answers = EVENTS.answer(model, FoldedStates(8), queries)
    for (t, k), query, answer in zip(streams, queries, answers, strict=False):
        with torch.no_grad():
            alone = net.next_event(
                net.condition(torch.tensor(model_times(t))[None], torch.tensor(k)[None]), query.now, (0.2, 0.8)
            )
        assert isinstance(answer, Forecasted)
        np.testing.assert_allclose(answer.wait_quantiles, alone.quantiles[0].numpy(), rtol=1e-4)
        np.testing.assert_allclose(answer.mark_probs, alone.mark_probs[0].numpy(), atol=1e-5)
        assert answer.mean_wait == pytest.approx(alone.mean.item(), rel=1e-4)
    assert isinstance(answers[-1], ValueError)


# ---- routes, through a live service ---------------------------------------------------------------
@pytest.fixture
def session(client: CMANPClient) -> EventSessionInfo:
    info = client.create_session(MODEL, time_origin=PARAMS.time_origin, time_scale=PARAMS.time_scale)
    assert isinstance(info, EventSessionInfo)
    return info


def test_a_session_of_an_event_model_is_an_event_session(session: EventSessionInfo) -> None:
    assert (session.kind, session.num_events, session.version, session.last_time) == ("events", 0, 0, None)
    assert (session.time_origin, session.time_scale, session.num_marks) == (1000.0, 2.0, 3)
    assert session.calibration["status"] == "insufficient_data" and session.calibration["scored_events"] == 0


def test_streamed_events_give_the_model_s_state_and_forecasts(
    client: CMANPClient, session: EventSessionInfo, redis_client, net: CMHP
) -> None:
    t, k = user_stream(60, seed=4)
    answers = [client.add_events(session.session_id, t[i : i + 7], k[i : i + 7]) for i in range(0, 60, 7)]
    assert [(a.num_events, a.version) for a in answers][-1] == (60, 9) and answers[-1].last_time == t[-1]
    assert_same_event_state(stored_event_state(redis_client, session.session_id, net), model_times(t), k, net)
    now = float(t[-1]) + 3.0
    got = client.forecast(session.session_id, now=now, quantiles=[0.2, 0.5, 0.8])
    with torch.no_grad():
        state = net.condition(torch.tensor(model_times(t))[None], torch.tensor(k)[None])
        want = net.next_event(state, float(model_times(np.array(now))), (0.2, 0.5, 0.8))
    np.testing.assert_allclose(got.wait_quantiles, PARAMS.time_scale * want.quantiles[0].numpy(), rtol=1e-4)
    np.testing.assert_allclose(got.mark_probabilities, want.mark_probs[0].numpy(), atol=1e-5)
    assert got.mean_wait == pytest.approx(PARAMS.time_scale * want.mean.item(), rel=1e-4)
    assert (got.now, got.last_time, got.num_events, got.warnings) == (now, t[-1], 60, [])
    info = client.get_session(session.session_id)
    assert (info.num_events, info.version, info.last_time) == (60, 9, t[-1])
    assert info.calibration["scored_events"] == 59  # the unfolded log, scored on read


def test_an_event_before_the_last_one_gets_409_and_changes_nothing(
    server: str, client: CMANPClient, session: EventSessionInfo, redis_client
) -> None:
    client.add_events(session.session_id, [1005.0, 1010.0], [0, 1])
    before = raw_session(redis_client, session.session_id)
    with pytest.raises(CMANPError) as err:
        client.add_events(session.session_id, [1009.5, 1020.0], [0, 0])
    assert err.value.status == 409
    assert "starts at time=1009.5, before the session's last posted time=1010.0" in err.value.detail
    assert raw_session(redis_client, session.session_id) == before
    # An event at the last time is in order (times are non-decreasing).
    assert client.add_events(session.session_id, [1010.0], [2]).num_events == 3


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"times": [NaN], "marks": [0]}', 422, "body.times.0: Input should be a finite number"),
        (b'{"times": [1e999], "marks": [0]}', 422, "body.times.0: Input should be a finite number"),
        (b'{"times": ["1"], "marks": [0]}', 422, "body.times.0: Input should be a valid number"),
        (b'{"times": [1200.0], "marks": [3]}', 422, "marks[0] = 3 is not a mark of the session's model"),
        (b'{"times": [1200.0], "marks": [-1]}', 422, "marks[0] = -1"),
        (b'{"times": [1200.0], "marks": [1.5]}', 422, "body.marks.0: Input should be a valid integer"),
        (b'{"times": [1200.0], "marks": [true]}', 422, "body.marks.0: Input should be a valid integer"),
        (b'{"times": [1200.0, 1201.0], "marks": [0]}', 422, "times has 2 events but marks has 1"),
        (b'{"times": [], "marks": []}', 422, "body.times: List should have at least 1 item"),
        (b'{"times": [1202.0, 1201.0], "marks": [0, 0]}', 422, "times must be non-decreasing within a post"),
        (b'{"times": [1200.0], "marks": [0], "x": [1]}', 422, "body.x: Extra inputs are not permitted"),
    ],
)
def test_bad_events_are_refused_with_a_problem_and_change_nothing(
    server: str, client: CMANPClient, session: EventSessionInfo, redis_client, body: bytes, status: int, detail: str
) -> None:
    client.add_events(session.session_id, [1100.0], [1])
    before = raw_session(redis_client, session.session_id)
    r = httpx.post(
        f"{server}/v1/sessions/{session.session_id}/events",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == status and r.headers["content-type"] == "application/problem+json", r.text
    assert detail in r.json()["detail"]
    assert raw_session(redis_client, session.session_id) == before


def test_more_events_than_a_request_may_carry_get_413(server: str, session: EventSessionInfo, redis_client) -> None:
    before = raw_session(redis_client, session.session_id)
    body = {"times": [1100.0] * 1001, "marks": [0] * 1001}
    r = httpx.post(f"{server}/v1/sessions/{session.session_id}/events", json=body, headers=AUTH)
    assert r.status_code == 413 and "1001 events in one request; the limit is 1000" in r.json()["detail"]
    assert raw_session(redis_client, session.session_id) == before


def test_forecast_options_are_checked(client: CMANPClient, session: EventSessionInfo) -> None:
    client.add_events(session.session_id, [1004.0], [0])
    cases = [
        ({"now": 1003.0}, "now=1003.0 is before the session's last event at 1004.0"),
        ({"num_samples": 3}, "num_samples is only used with horizon"),
        ({"horizon": 1.0, "num_samples": 2001}, "ask for at most 2000 samples"),
        ({"quantiles": [0.5, 1.0]}, "body.quantiles.1: Input should be less than 1"),
        ({"horizon": -1.0}, "body.horizon: Input should be greater than 0"),
    ]
    for options, detail in cases:
        with pytest.raises(CMANPError) as err:
            client.forecast(session.session_id, **options)
        assert err.value.status == 422 and detail in err.value.detail, err.value.detail


def test_a_horizon_gives_expected_events_and_seeded_samples_in_user_units(
    client: CMANPClient, session: EventSessionInfo
) -> None:
    t, k = user_stream(20, seed=5)
    client.add_events(session.session_id, t, k)
    first = client.forecast(session.session_id, horizon=10.0, num_samples=5, seed=3)
    again = client.forecast(session.session_id, horizon=10.0, num_samples=5, seed=3)
    assert first.count_samples == 100 and first.seed == 3 and first.horizon == 10.0
    assert first.expected_events == again.expected_events and first.expected_events_std_error > 0
    assert len(first.samples) == 5
    for (times, marks), (times2, marks2) in zip(first.samples, again.samples, strict=True):
        np.testing.assert_array_equal(times, times2)
        np.testing.assert_array_equal(marks, marks2)
        assert ((times > t[-1]) & (times <= t[-1] + 10.0)).all() and (np.diff(times) >= 0).all()
        assert ((marks >= 0) & (marks < 3)).all() and len(marks) == len(times)
    unseeded = client.forecast(session.session_id, horizon=10.0)
    assert unseeded.samples is None and unseeded.seed is not None


def test_an_empty_session_forecasts_the_prior(client: CMANPClient, session: EventSessionInfo) -> None:
    got = client.forecast(session.session_id)
    assert got.now == PARAMS.time_origin and got.last_time is None and got.num_events == 0
    assert got.warnings == ["no events yet: this is the model's prior"]
    assert (np.diff(got.wait_quantiles) > 0).all() and got.mark_probabilities.sum() == pytest.approx(1.0)


def test_each_kind_s_routes_refuse_the_other_kind_s_sessions(
    server: str, client: CMANPClient, session: EventSessionInfo, redis_client
) -> None:
    regression = client.create_session().session_id
    for session_id, route, body, owner in (
        (session.session_id, "context", {"x": [0.3], "y": [3.0]}, "regression"),
        (session.session_id, "predict", {"x": [0.0]}, "regression"),
        (regression, "events", {"times": [1.0], "marks": [0]}, "events"),
        (regression, "forecast", {}, "events"),
    ):
        before = raw_session(redis_client, session_id)
        r = httpx.post(f"{server}/v1/sessions/{session_id}/{route}", json=body, headers=AUTH)
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        assert f"POST {route} is a route of {owner} sessions: nothing was changed" in r.json()["detail"]
        assert raw_session(redis_client, session_id) == before


def test_a_session_takes_only_the_parameters_of_its_kind(client: CMANPClient) -> None:
    with pytest.raises(CMANPError) as err:
        client.create_session(MODEL, x_transform={"low": 0, "high": 1})
    assert err.value.status == 422
    assert "x_transform: not a parameter of events sessions, which model 'tiny-events' serves" in err.value.detail
    with pytest.raises(CMANPError) as err:
        client.create_session("tiny", time_scale=60.0)
    assert err.value.status == 422 and "time_scale: not a parameter of regression sessions" in err.value.detail


def test_event_models_are_listed_beside_the_regression_models(client: CMANPClient, net: CMHP) -> None:
    models = {m.name: m for m in client.models()}
    events = models[MODEL]
    assert (events.session_kind, events.num_marks, events.fingerprint) == ("events", 3, net.fingerprint)
    assert (events.dim_x, events.x_range, events.joint_block_size) == (None, None, None)
    assert models["tiny"].session_kind == "regression" and models["tiny"].num_marks is None


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_count_event_posts_and_forecasts(server: str, client: CMANPClient, session: EventSessionInfo) -> None:
    names = ("cmanp_event_posts_total", "cmanp_events_total", "cmanp_forecasts_total")
    before = httpx.get(f"{server}/metrics").text
    client.add_events(session.session_id, [1001.0, 1002.0, 1003.0], [0, 1, 2])
    client.add_events(session.session_id, [1004.0], [0])
    client.forecast(session.session_id)
    after = httpx.get(f"{server}/metrics").text
    assert [_metric(after, n) - _metric(before, n) for n in names] == [2, 4, 1]


def test_the_state_stays_the_same_size_and_other_tenants_see_no_session(
    server: str, client: CMANPClient, session: EventSessionInfo, redis_client, model: ServedModel
) -> None:
    t, k = user_stream(600, seed=6)
    for i in range(0, 600, 200):
        client.add_events(session.session_id, t[i : i + 200], k[i : i + 200])
    wait_for_folds(redis_client, session.session_id, DEFAULT_FOLD_THRESHOLD)
    blob = redis_client.get(session_keys(session.session_id)[1])
    assert blob is not None and len(blob) == len(model.empty_state) == session.state_bytes  # folded, same size
    assert client.get_session(session.session_id).state_bytes == len(blob)
    bob = {"Authorization": f"Bearer {API_KEYS['bob']}"}
    for method, route, body in (
        ("GET", "", None),
        ("POST", "/events", {"times": [1e4], "marks": [0]}),
        ("POST", "/forecast", {}),
    ):
        r = httpx.request(method, f"{server}/v1/sessions/{session.session_id}{route}", json=body, headers=bob)
        assert r.status_code == 404
