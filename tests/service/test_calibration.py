"""Prequential calibration, the range guard and the verdict, against a real Redis and the shipped model.

The acceptance tests stream GP draws into the SHIPPED checkpoint (a random model is not
calibrated). Expected numbers come from independent computations: a fresh state conditioned in
process on the points before each scored point, scored with the standard library's normal
distribution, never from the service's own code.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import redis
import torch

from model import CMANP, load_checkpoint
from model.data.gp import GPSampler
from service.client import CMANPClient
from service.store import KEY_PREFIX
from tests.service.helpers import API_KEYS, REPO, live_server, make_settings, wait_for_folds

SHIPPED = "cmanp-gp-rbf"
NORMAL = NormalDist()
LEVELS = (0.5, 0.9, 0.95)


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shipped")
    for suffix in (".safetensors", ".json"):
        shutil.copy(REPO / "checkpoints" / f"{SHIPPED}{suffix}", directory)
    return directory


@pytest.fixture(scope="module")
def shipped_net(shipped_dir: Path) -> CMANP:
    return load_checkpoint(shipped_dir / f"{SHIPPED}.safetensors")


@pytest.fixture(scope="module")
def shipped_server(redis_server, shipped_dir: Path) -> Iterator[str]:
    with live_server(make_settings(redis_server.url, shipped_dir, default_model=SHIPPED)) as url:
        yield url


def gp_stream(seed: int, n: int = 1000) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One function from the training distribution (RBF, length U[0.1,0.6), scale U[0.1,1), noise 0.02,
    x ~ U[-2,2]) observed at n points: x, y [n, 1], lengthscale, scale."""
    batch = GPSampler("rbf").sample(1, n, 0, torch.Generator().manual_seed(seed))
    return batch.xc[0].double().numpy(), batch.yc[0].double().numpy(), float(batch.length), float(batch.scale)


def stream(client: CMANPClient, session_id: str, x: np.ndarray, y: np.ndarray, per_post: int) -> Iterator[dict]:
    """Post the points per_post at a time; yield the session's calibration report after each post."""
    for start in range(0, len(x), per_post):
        client.add_context(session_id, x[start : start + per_post], y[start : start + per_post])
        yield client.get_session(session_id)


# ---- calibrated data --------------------------------------------------------------------------------

# Stated bounds. 95% coverage: the issue's [0.92, 0.98]. PIT: "roughly flat" = every one of the 10
# bins holds 3%-17% of the points (10% each when flat). The 1000 PITs of one function are not
# independent for an imperfect model, so a chi-square test would not have its nominal level.
COVERAGE_95 = (0.92, 0.98)
PIT_BIN_SHARE = (0.03, 0.17)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])  # two functions of 1,000 points, ~12 s each through the service
def test_calibrated_gp_data_is_ok(shipped_server: str, seed: int) -> None:
    x, y, length, scale = gp_stream(seed)
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        session_id = client.create_session().session_id
        reports = [info.calibration for info in stream(client, session_id, x, y, per_post=10)]
    final = reports[-1]
    print(f"kernel length={length:.3f} scale={scale:.3f}: {final}")
    assert final["scored_points"] == 1000
    assert COVERAGE_95[0] <= final["coverage"]["0.95"] <= COVERAGE_95[1]
    shares = np.array(final["pit_histogram"]) / 1000
    assert shares.min() >= PIT_BIN_SHARE[0] and shares.max() <= PIT_BIN_SHARE[1], shares
    assert final["status"] == "ok"
    # No false alarm on the way either: insufficient_data below 50 scored points, ok from there on.
    assert {r["status"] for r in reports if r["scored_points"] < 50} == {"insufficient_data"}
    # Along the way: the model itself is over-confident on some in-prior functions at some sizes (the
    # monitor then rightly says so; bench/calibration_monitor.py measures how often), so allow one
    # alarm in the ~95 checks of a stream, and none from 500 points on.
    alarms = [(r["scored_points"], r["reasons"]) for r in reports if r["scored_points"] >= 50 and r["status"] != "ok"]
    assert len(alarms) <= 1 and all(points < 500 for points, _ in alarms), alarms


# ---- miscalibrated data -----------------------------------------------------------------------------


def test_scaled_values_flip_to_miscalibrated_within_100_points(shipped_server: str) -> None:
    x, y, _, _ = gp_stream(seed=3, n=100)
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        session_id = client.create_session().session_id  # no y_transform: values x20 stay x20
        infos = list(stream(client, session_id, x, 20 * y, per_post=10))
    assert infos[0].calibration["status"] == "insufficient_data"  # 10 points
    flipped = [info for info in infos if info.calibration["status"] == "miscalibrated"]
    assert flipped and flipped[0].num_points <= 100
    assert flipped[0].out_of_range_fraction > 0
    assert "95% intervals covered" in " ".join(flipped[0].calibration["reasons"])
    assert infos[-1].calibration["status"] == "miscalibrated"


def test_a_time_ordered_noisy_stream_is_flagged_though_each_point_arrives_at_the_edge(shipped_server: str) -> None:
    """A new user's case: y = sin(x/5) + noise of sd 0.3, 200 readings posted one at a time in time
    order (every 3 units of x), with the README's transforms. The shipped model expects noise 0.02;
    judged one step ahead only, each point lies just past the data, where intervals are widest.
    (At a spacing of 1 the same stream is milder, interpolation 95% coverage 0.87, and 200 points
    are not enough to flag it: see docs/SERVICE.md, "Calibration".)"""
    rng = np.random.default_rng(11)
    x = 3.0 * np.arange(200.0)[:, None]
    y = np.sin(x / 5) + 0.3 * rng.standard_normal(x.shape)
    transforms = {"x_transform": {"low": 0.0, "high": 597.0}, "y_transform": {"shift": y.mean(), "scale": y.std()}}
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        session_id = client.create_session(**transforms).session_id
        for i in range(len(x)):
            client.add_context(session_id, x[i : i + 1], y[i : i + 1])
        report = client.get_session(session_id).calibration
        # The premise, checked independently: fresh readings at fresh inputs fall outside the final
        # 95% intervals far more often than 5% of the time.
        fresh_x = rng.uniform(0, 597, size=(400, 1))
        fresh_y = np.sin(fresh_x / 5) + 0.3 * rng.standard_normal(fresh_x.shape)
        p = client.predict(session_id, fresh_x)
    covered = np.mean(np.abs(fresh_y - p.mean) <= 1.96 * np.sqrt(p.variance))
    assert covered < 0.9, covered
    assert report["status"] == "miscalibrated", str(report)
    assert any(r.startswith("interpolation:") for r in report["reasons"])


def test_residuals_with_variance_near_2_6_over_100_points_are_flagged(shipped_server: str) -> None:
    """A smooth in-prior function observed with noise of sd 0.15 where the model expects 0.02: over
    100 points the standardised residuals have a variance well above 2 (the case of a real series
    of 100 points that was reported as ok with a variance of 2.6)."""
    x, y, _, _ = gp_stream(seed=21, n=100)
    noisy = y + 0.15 * np.random.default_rng(21).standard_normal(y.shape)
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        session_id = client.create_session().session_id
        for i in range(len(x)):
            client.add_context(session_id, x[i : i + 1], noisy[i : i + 1])
        report = client.get_session(session_id).calibration
    assert report["scored_points"] == 100
    assert 2.0 <= report["standardised_residual_variance"] <= 4.0, report
    assert report["status"] == "miscalibrated", report


# ---- held out by construction -----------------------------------------------------------------------

FOLD_EVERY = 40  # small, so that the test crosses several folds and also reads a pending log


def score_into(z: np.ndarray, log_density: np.ndarray, at: np.ndarray, y: np.ndarray, prediction: tuple) -> None:
    """Write the scores of the points ``at`` (values y [at]) under a model prediction into z and log_density."""
    mean, variance = (t[0, :, 0].double().numpy() for t in prediction)
    z[at] = (y[at, 0] - mean) / np.sqrt(variance)
    log_density[at] = -0.5 * np.log(2 * math.pi * variance) - (y[at, 0] - mean) ** 2 / (2 * variance)


def report_of(z: np.ndarray, log_density: np.ndarray) -> dict[str, object]:
    """The report's figures from scores, computed with numpy and the standard library."""
    pit = np.array([NORMAL.cdf(v) for v in z])
    return {
        "scored_points": len(z),
        "mean_log_density": log_density.mean(),
        "standardised_residual_mean": z.mean(),
        "standardised_residual_variance": z.var(),
        "coverage": {f"{p:g}": float(np.mean(np.abs(z) <= NORMAL.inv_cdf((1 + p) / 2))) for p in LEVELS},
        "pit_histogram": np.histogram(pit, bins=10, range=(0, 1))[0].tolist(),
    }


def expected_aggregates(
    net: CMANP, x: np.ndarray, y: np.ndarray, fold_starts: list[int], leak: bool = False
) -> dict[str, object]:
    """Score point i by a fresh state conditioned on points [0, b(i)), where b(i) is the larger of the
    first point of its fold batch and the largest power of two <= i. With leak=True, each group of
    points sharing a b(i) is scored by the state after the group instead (which holds them)."""
    n = len(x)
    batch_start = [max(s for s in fold_starts if s <= i) for i in range(n)]
    before = np.array([max(batch_start[i], 2 ** int(math.log2(i)) if i else 0) for i in range(n)])
    z, log_density = np.empty(n), np.empty(n)
    for b in np.unique(before):
        scored = np.flatnonzero(before == b)
        seen = scored[-1] + 1 if leak else b
        with torch.no_grad():
            if seen:
                state = net.condition(torch.tensor(x[None, :seen]).float(), torch.tensor(y[None, :seen]).float())
            else:
                state = net.empty_state()
            prediction = net.predict(state, torch.tensor(x[None, scored]).float())
        score_into(z, log_density, scored, y, prediction)
    return report_of(z, log_density)


def expected_interpolation(net: CMANP, x: np.ndarray, y: np.ndarray, fold_starts: list[int]) -> dict[str, object]:
    """Score every point of fold batch [s, e) by a fresh state conditioned on every point before e
    except its share (the points of the batch at the same position mod 4); the last batch ends at n."""
    n = len(x)
    z, log_density = np.empty(n), np.empty(n)
    bounds = [s for s in fold_starts if s < n] + [n]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        for j in range(min(4, stop - start)):
            share = np.arange(start + j, stop, 4)
            rest = np.setdiff1d(np.arange(stop), share)
            with torch.no_grad():
                xs, ys = (torch.tensor(a[None, rest]).float() for a in (x, y))
                state = net.condition(xs, ys) if len(rest) else net.empty_state()
                prediction = net.predict(state, torch.tensor(x[None, share]).float())
            score_into(z, log_density, share, y, prediction)
    return report_of(z, log_density)


def assert_matches(got: dict, want: dict) -> None:
    assert got["scored_points"] == want["scored_points"]
    for key in ("mean_log_density", "standardised_residual_mean", "standardised_residual_variance"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-3), key
    # Counts may differ only by a value that float rounding puts on the other side of an edge.
    assert got["coverage"] == pytest.approx(want["coverage"], abs=1.5 / want["scored_points"])
    assert np.abs(np.array(got["pit_histogram"]) - want["pit_histogram"]).sum() <= 2


def test_every_point_is_scored_by_a_state_without_it(
    redis_server, redis_client, shipped_dir: Path, shipped_net: CMANP
) -> None:
    x, y, _, _ = gp_stream(seed=7, n=300)
    sizes = np.random.default_rng(0).integers(1, 18, size=100)
    settings = make_settings(redis_server.url, shipped_dir, default_model=SHIPPED, fold_threshold_points=FOLD_EVERY)
    with live_server(settings) as url, CMANPClient(url, API_KEYS["alice"]) as client:
        session_id = client.create_session().session_id
        # One writer: the store folds after a post that brings the log to FOLD_EVERY points.
        fold_starts, log, posted, checked = [0], 0, 0, set()
        for size in sizes:
            size = min(int(size), len(x) - posted)
            client.add_context(session_id, x[posted : posted + size], y[posted : posted + size])
            posted, log = posted + size, log + size
            if log >= FOLD_EVERY:
                fold_starts.append(posted)
                log = 0
                wait_for_folds(redis_client, session_id, FOLD_EVERY)  # before the next post joins the fold
            moment = "log pending" if log else "just folded"
            if moment not in checked or posted == len(x):
                info = client.get_session(session_id)
                seen = (x[:posted], y[:posted])
                assert_matches(info.calibration["forecast"], expected_aggregates(shipped_net, *seen, fold_starts))
                assert_matches(info.calibration, expected_interpolation(shipped_net, *seen, fold_starts))
                checked.add(moment)
            if posted == len(x):
                break
        metrics = client._http.get("/metrics").text
    assert checked == {"log pending", "just folded"}
    assert len(fold_starts) >= 6
    # The sums in Redis cover exactly the folded points (the rest is scored by GET, not stored) ...
    assert float(redis_client.hget(f"{KEY_PREFIX}:{{{session_id}}}:meta", "sum:points")) == fold_starts[-1]
    # ... and so do the server's Prometheus counters.
    scored = re.search(rf'cmanp_calibration_scored_values_total{{model="{SHIPPED}"}} (\S+)', metrics)
    assert scored and float(scored.group(1)) == fold_starts[-1]
    # The test can fail: scoring points by a state that holds them gives clearly different numbers.
    leaked = expected_aggregates(shipped_net, x, y, fold_starts, leak=True)
    assert leaked["mean_log_density"] > info.calibration["forecast"]["mean_log_density"] + 0.1
    # Interpolation scores differ from forecast ones (later points surround them): the two are not one number.
    assert abs(info.calibration["mean_log_density"] - info.calibration["forecast"]["mean_log_density"]) > 0.05


# ---- the range guard --------------------------------------------------------------------------------


def test_out_of_range_points_are_accepted_and_counted(shipped_server: str) -> None:
    # Session x in seconds [0, 60] -> model x in [-2, 2]; y in model units. Training range: x in
    # [-2, 2], y in [-4, 4] (the model card).
    x = np.array([0.0, 60.0, 30.0, 61.0, -5.0, 10.0, 20.0, 40.0])
    y = np.array([0.1, -0.2, 4.5, 0.0, -9.0, -3.9, 0.3, -4.2])
    outside = (x < 0) | (x > 60) | (np.abs(y) > 4)  # 30/4.5, 61, -5/-9, 40/-4.2: the ends 0 and 60 are inside
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        session_id = client.create_session(x_transform={"low": 0.0, "high": 60.0}).session_id
        client.add_context(session_id, x, y)
        info = client.get_session(session_id)
        assert info.out_of_range_fraction == outside.sum() / len(x) == 0.5
        inside = client.predict(session_id, [0.0, 30.0, 60.0])
        beyond = client.predict(session_id, [-1.0, 30.0, 75.0])
    assert inside.warnings == []
    assert len(beyond.warnings) == 1 and beyond.warnings[0].startswith("2 of 3 query points lie outside")
    assert np.all(np.isfinite(beyond.mean))  # still answered


def test_models_list_states_the_training_range(shipped_server: str) -> None:
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        response = client._http.get("/v1/models").json()
    shipped = next(m for m in response["models"] if m["name"] == SHIPPED)
    assert (shipped["x_range"], shipped["y_range"]) == ([-2.0, 2.0], [-4.0, 4.0])
    assert "y_range" not in shipped["metrics"]  # served once, as the range


def test_scoring_can_be_turned_off(redis_server, checkpoint_dir: Path) -> None:
    settings = make_settings(redis_server.url, checkpoint_dir, calibration=False)
    x = np.linspace(-3.0, 3.0, 300)  # 100 of them outside [-2, 2]; the tiny model's card states no y range
    with live_server(settings) as url, CMANPClient(url, API_KEYS["alice"]) as client:
        session_id = client.create_session().session_id
        for start in range(0, 300, 100):  # the third post folds (default threshold 256)
            client.add_context(session_id, x[start : start + 100], np.sin(x[start : start + 100]))
        # The fold runs in the background and counts the out-of-range points once it has committed.
        raw = redis.Redis.from_url(redis_server.url)
        wait_for_folds(raw, session_id, settings.fold_threshold_points)
        raw.close()
        info = client.get_session(session_id)
        deadline = time.monotonic() + 10.0
        while 'out_of_range_points_total{model="tiny"} ' not in (metrics := client._http.get("/metrics").text):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    expected_outside = np.sum(np.abs(x) > 2.0)
    assert info.out_of_range_fraction == pytest.approx(expected_outside / 300)
    report = info.calibration
    assert (report["enabled"], report["scored_points"], report["status"]) == (False, 0, "insufficient_data")
    assert 'cmanp_out_of_range_points_total{model="tiny"} ' in metrics
    assert "cmanp_calibration_coverage{" not in metrics
