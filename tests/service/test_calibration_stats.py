"""The calibration module's pieces on their own: scoring blocks, sums, the verdict's statistics, and
the store's exactly-once commit of a fold's sums (against a real Redis)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
from redis.asyncio import Redis

from service.calibration import ALPHA, binomial_cdf, prequential_blocks
from service.kinds.regression_calibration import (
    TESTS,
    VARIANCE_TOLERANCE,
    Aggregates,
    Scores,
    tolerated_coverage,
    variance_threshold,
)
from service.store import Fold, Session, SessionStore, fold_lease_key


@pytest.mark.parametrize("start", [0, 1, 5, 256, 300, 1000, 4000])
@pytest.mark.parametrize("count", [1, 3, 40, 256, 700])
def test_blocks_follow_the_documented_rule(start: int, count: int) -> None:
    # Point i is scored by the state of the first b(i) points: the larger of the batch start and
    # the largest power of two <= i (0 for point 0).
    def before(i: int) -> int:
        return max(start, 2 ** int(math.log2(i)) if i else 0)

    blocks = prequential_blocks(start, count)
    assert blocks[0][0] == 0 and blocks[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))  # contiguous
    for block_start, block_stop in blocks:
        assert block_start < block_stop
        # every point of a block is scored by the state of the points before the block, none of its own
        assert {before(start + i) for i in range(block_start, block_stop)} == {start + block_start}


def test_tolerance_bands_are_the_documented_ones() -> None:
    # Coverage of a Gaussian whose std is 1.5x smaller or larger than predicted (computed by hand).
    assert tolerated_coverage(0.5) == pytest.approx((0.347, 0.688), abs=1e-3)
    assert tolerated_coverage(0.95) == pytest.approx((0.809, 0.997), abs=1e-3)


@pytest.mark.parametrize(("trials", "p"), [(50, 0.809), (100, 0.347), (200, 0.997), (5_000, 0.5), (200_000, 0.809)])
def test_binomial_tails_match_scipy(trials: int, p: float) -> None:
    from scipy import stats

    for successes in sorted({0, int(trials * p) - 3 * int(math.sqrt(trials)), int(trials * p), trials - 1, trials}):
        expected = stats.binom.cdf(successes, trials, p)
        tolerance = 1e-12 if trials <= 100_000 else 1e-3  # above: the normal approximation
        assert binomial_cdf(successes, trials, p) == pytest.approx(expected, rel=1e-6, abs=tolerance)
    assert binomial_cdf(-1, trials, p) == 0.0


@pytest.mark.parametrize("values", [50, 100, 200, 400])
@pytest.mark.parametrize("level", [0.5, 0.95])
def test_each_coverage_test_rejects_at_most_its_share_at_the_band_edges(values: int, level: float) -> None:
    # Exactly: the probability, over the binomial count of covered values of a forecast whose std is
    # 1.5x off (the band's edge), that the verdict names this level's coverage. At most ALPHA / TESTS
    # / 2 per side for the interpolation set (Wilson's interval gave up to 5x that at the 95% level).
    from scipy import stats

    low, high = tolerated_coverage(level)
    for edge in (low, high):
        pmf = stats.binom.pmf(np.arange(values + 1), values, edge)
        # every level's hits set to the count: only the reasons naming this level are read
        verdicts = [Aggregates(points=values, values=values, covered=(c, c, c)).verdict()[1] for c in range(values + 1)]
        flagged = [any(f"{level:.0%} intervals" in r for r in reasons) for reasons in verdicts]
        assert float(pmf[flagged].sum()) <= ALPHA / TESTS / 2, (edge, float(pmf[flagged].sum()))


def scores(z: np.ndarray) -> Aggregates:
    """Aggregates of standardised residuals z, scored by N(0, 1) predictions."""
    y = torch.from_numpy(z[:, None])
    return Aggregates.of_scores(y, torch.zeros_like(y), torch.ones_like(y))


def test_sums_round_trip_and_add_up() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(70), 3 * rng.standard_normal(30)
    both = scores(np.concatenate([a, b]))
    added = scores(a) + scores(b)
    assert (added.points, added.values, added.covered, added.pit) == (100, 100, both.covered, both.pit)
    assert added.z_square_sum == pytest.approx(both.z_square_sum)
    assert added.log_density == pytest.approx(both.log_density)
    assert Aggregates.from_sums(added.to_sums()) == added
    assert sum(added.pit) == 100 and added.covered[2] == int(np.sum(np.abs(np.concatenate([a, b])) <= 1.959964))


def statuses(std: float, sessions: int, checks: tuple[int, ...], seed: int) -> list[list[str]]:
    """Per simulated session, the status after each number of points in checks, for data whose std is
    ``std`` times the predicted one."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(sessions):
        z = std * rng.standard_normal(checks[-1])
        total, seen, row = Aggregates(), 0, []
        for n in checks:
            total, seen = total + scores(z[seen:n]), n
            row.append(total.verdict()[0])
        result.append(row)
    return result


def test_calibrated_forecasts_almost_never_raise_an_alarm() -> None:
    checks = (20, 50, 100, 200, 500, 1000)
    runs = statuses(1.0, sessions=1000, checks=checks, seed=2)
    assert all(row[0] == "insufficient_data" for row in runs)
    alarms = sum("miscalibrated" in row for row in runs)
    assert alarms <= 2  # stated level: below 0.1% per check; the tolerance band makes it far rarer


# The power stated in the README: data at 20x or 3x the predicted std are caught within 50 and 100
# points, 2x within 400, intervals 2.5x too wide (std 0.4x) within 200.
@pytest.mark.parametrize(("std", "points"), [(20.0, 50), (3.0, 100), (2.0, 400), (0.4, 200)])
def test_clear_miscalibration_is_caught(std: float, points: int) -> None:
    runs = statuses(std, sessions=200, checks=(points,), seed=3)
    assert sum(row[0] == "miscalibrated" for row in runs) >= 198


@pytest.mark.parametrize("values", [50, 100, 200, 1000])
def test_the_variance_test_rejects_at_its_stated_rate_where_intervals_are_at_its_tolerance(values: int) -> None:
    # z-scores of a forecast whose std is VARIANCE_TOLERANCE too small, simulated: the share of
    # sessions over the threshold is the test's size, stated as ALPHA / TESTS (2e-4). A normal
    # quantile of the (skewed) clipped sum gave 8e-4 at 50 values; this fails above 4e-4.
    sessions = min(400_000, 40_000_000 // values)
    rng = np.random.default_rng(values)
    z = VARIANCE_TOLERANCE * rng.standard_normal((sessions, values), dtype=np.float32)
    rate = float((np.minimum(z * z, 9.0).mean(1) > variance_threshold(values)).mean())
    assert 0.25 * ALPHA / TESTS < rate < 2 * ALPHA / TESTS, rate


def test_forecast_intervals_that_are_only_too_wide_raise_no_alarm_but_too_narrow_ones_do() -> None:
    # One-step-ahead intervals start wide (states of a few points, or the prior): the forecast set
    # flags only over-confidence; too-wide intervals are the interpolation set's to judge.
    rng = np.random.default_rng(4)
    calibrated = scores(rng.standard_normal(200))
    assert Scores(calibrated, scores(0.4 * rng.standard_normal(200))).verdict() == ("ok", [])
    assert Scores(scores(0.4 * rng.standard_normal(200)), calibrated).verdict()[0] == "miscalibrated"
    status, reasons = Scores(calibrated, scores(3.0 * rng.standard_normal(200))).verdict()
    assert status == "miscalibrated" and all(r.startswith("forecast:") for r in reasons), reasons


def test_a_dropped_fold_adds_nothing(redis_server) -> None:
    """A fold whose commit loses to another fold is dropped with its sums; the winner's count once."""

    async def scenario() -> tuple[float, tuple[Fold, ...], int]:
        redis = Redis.from_url(redis_server.url)
        store = SessionStore(redis, fold_threshold=4, max_points_per_request=8, idempotency_keys=2)
        # Another process on the same Redis: folds are single-flight per process, and across
        # processes while a fold's lease holds, so only another process's fold after a lapsed lease
        # can race this process's (its commit then fails the epoch check).
        other = SessionStore(redis, fold_threshold=4, max_points_per_request=8, idempotency_keys=2)
        session = Session("dropped-fold", "t", "m", "f", "test", {}, created_at=0.0, ttl_seconds=60)
        session = await store.create(session, b"empty state")
        calls = 0

        async def compute(snapshot) -> Fold:  # noqa: ANN001
            nonlocal calls
            calls += 1
            if calls == 1:  # this fold's lease lapses, and another process folds and commits meanwhile
                await redis.delete(fold_lease_key(session.session_id))
                assert await other.fold(session, compute) is not None
            return Fold(b"state", {"points": float(snapshot.log_points)})

        committed: list[Fold] = []
        await store.append(session, b"\0" * 32, 4, None, compute, committed.append)
        await store.wait_for_folds()  # the post started its fold without waiting for it
        got = await store.get(session.session_id, "t")
        await redis.aclose()
        return got.sums["points"], tuple(committed), calls

    points, folds, calls = asyncio.run(scenario())
    assert calls == 2  # both folds computed ...
    assert points == 4.0  # ... one committed its sums
    assert folds == ()  # this append's own fold was dropped: nothing reported as committed
