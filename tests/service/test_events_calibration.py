"""Calibration of event sessions (``service.kinds.events_calibration``): the sums add up exactly, a
calibrated session is flagged about once in a thousand checks (simulated exactly: uniform PITs,
marks drawn from their forecast probabilities), each kind of misfit is flagged with its reason;
and, with the trained event model, in-prior Hawkes streams pass while a self-correcting stream is
flagged within 200 events (a 10x faster Hawkes stream: a strict xfail, with the evidence why)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from bench.event_monitor import hawkes, self_correcting, session_scores, simulated, verdicts
from model.data.events import EventBatch
from service.kinds.events_calibration import ALPHA, MARKS_LEVEL, NOTABLE, SHAPE_LEVEL, SMOOTH_LEVEL, EventScores
from service.registry import ServedModel
from tests.service.helpers import REPO

TRAINED = REPO / "checkpoints" / "cmhp-hawkes-exp.safetensors"


def test_sums_round_trip_through_the_store_and_add_up() -> None:
    rng = np.random.default_rng(0)
    a, b = simulated(30, rng), simulated(45, rng)
    assert EventScores.from_sums(a.to_sums()) == a
    both = a + b
    assert both.events == 75 and both.pit == tuple(x + y for x, y in zip(a.pit, b.pit, strict=True))
    assert both.compensator == pytest.approx(a.compensator + b.compensator)
    assert EventScores() + a == a and EventScores.from_sums({}) == EventScores()
    stored = {k: float(v) for k, v in (a.to_sums() | {"expected_2": 0.0}).items()}  # a zero mark sum still counts
    assert len(EventScores.from_sums(stored).expected) == 3


def test_sums_written_before_the_pair_sums_are_ignored() -> None:
    a = simulated(60, np.random.default_rng(5))
    assert EventScores.from_sums(a.to_sums() | {"serial": 5.0, "serial_norm": 1.0}) == a


def test_a_failed_smooth_test_always_names_a_component() -> None:
    assert chi2.isf(SMOOTH_LEVEL, 3) > 3 * NOTABLE**2  # so some component is at least NOTABLE
    status, reasons = simulated(200, np.random.default_rng(6), pit=np.random.default_rng(7).beta(3, 3, 200)).verdict()
    assert status == "miscalibrated" and any("smooth test of the PITs" in r for r in reasons), reasons


def test_below_50_events_there_is_no_verdict() -> None:
    assert simulated(49, np.random.default_rng(1), pit=np.full(49, 0.001)).verdict() == ("insufficient_data", [])


def test_a_calibrated_session_is_flagged_about_once_in_a_thousand_checks() -> None:
    rng = np.random.default_rng(2)
    checks = 3000
    alarms = sum(simulated(n, rng).verdict()[0] == "miscalibrated" for n in (50, 200) for _ in range(checks // 2))
    # ALPHA = 1e-3 per check: 3 expected (measured: 75 in 80,000, python -m bench.event_monitor);
    # 10x the rate would give about 30.
    assert alarms <= 3 * ALPHA * checks + 3


def test_the_smooth_test_keeps_near_its_level_at_50_events() -> None:
    """The location and serial components are scaled by their spread given the PITs' distances from
    1/2, so a large dispersion does not inflate them: at 50 events, 100,000 calibrated sessions give
    54-60 alarms at the 4e-4 level (seeds 0-2); scaled by their unconditional spread, 84-91."""
    rng = np.random.default_rng(0)
    n, sessions = 50, 100_000
    c = rng.random((sessions, n)) - 0.5
    pairs = c[:, 1:] * c[:, :-1]
    sums = zip(c.sum(1) + n / 2, (c**2).sum(1), pairs.sum(1), (pairs**2).sum(1), strict=True)
    alarms = sum(
        EventScores(events=n, pit_sum=s, pit_dispersion=d, pair_product=p, pair_variance=v).p_values()["smooth"]
        < SMOOTH_LEVEL
        for s, d, p, v in sums
    )
    assert alarms <= 1.8 * SMOOTH_LEVEL * sessions, alarms


def paired(rng: np.random.Generator, n: int, mirror: bool) -> np.ndarray:
    """PITs in pairs: a uniform u, then 1 - u (mirror) or u again. Each is uniform and the pairs are
    independent, but within a pair the second wait is tied to the first."""
    first = rng.random((n + 1) // 2)
    return np.stack([first, 1 - first if mirror else first], 1).reshape(-1)[:n]


@pytest.mark.parametrize(
    ("pit", "skew", "reason"),
    [
        (lambda r, n: r.random(n) ** 3, 0.0, "events come sooner than forecast"),  # waits too short
        (lambda r, n: r.beta(3, 3, n), 0.0, "waits are more regular than forecast"),
        (lambda r, n: np.where(r.random(n) < 0.5, r.random(n) * 0.1, 1 - r.random(n) * 0.1), 0.0, "burstier"),
        (lambda r, n: 0.3 + 0.7 * r.random(n), 0.0, "the waits' PITs are not uniform"),  # no short waits
        (lambda r, n: r.random(n), 1.5, "marks do not follow their forecast probabilities"),
        # Uniform PITs, each second one tied to the one before.
        (lambda r, n: paired(r, n, mirror=True), 0.0, "a short wait tends to follow a long one"),
        (lambda r, n: paired(r, n, mirror=False), 0.0, "short waits follow short ones"),
    ],
)
def test_each_misfit_is_flagged_with_its_reason_within_200_events(pit, skew, reason) -> None:
    rng = np.random.default_rng(3)
    status, reasons = simulated(200, rng, pit(rng, 200), skew).verdict()
    assert status == "miscalibrated" and any(reason in r for r in reasons), reasons


def test_mirrored_pairs_of_pits_fail_on_the_serial_component_alone() -> None:
    """The serial component's point: PITs whose bag looks uniform (mirrored pairs balance the
    histogram) but whose order does not pass the other tests."""
    rng = np.random.default_rng(4)
    scores = simulated(200, rng, paired(rng, 200, mirror=True))
    z, p = scores.smooth_components(), scores.p_values()
    assert z["serial"] < -5 and abs(z["location"]) < NOTABLE and abs(z["dispersion"]) < NOTABLE, z
    assert p["smooth"] < 1e-5 and p["shape"] > SHAPE_LEVEL and p["marks"] > MARKS_LEVEL, p


# ---- the trained model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> ServedModel:
    if not TRAINED.exists():
        pytest.skip(f"{TRAINED.relative_to(REPO)} is not in this checkout")
    return ServedModel.load(TRAINED)


def test_in_prior_hawkes_streams_are_ok_and_their_pooled_pits_flat(trained: ServedModel) -> None:
    """20 streams of 200 events from the training prior: at most one flagged (measured over 900: 2.8%,
    bench.event_monitor), and their 3,980 waiting-time PITs pooled fill every tenth of [0, 1] with
    8-12% of them (10% when flat; one bin's binomial sd is 0.5 points; measured 9.2-11.2%)."""
    scores = session_scores(trained, hawkes(20, seed=11))
    statuses = [s.verdict()[0] for s in scores]
    assert statuses.count("miscalibrated") <= 1, statuses
    pooled = np.sum([s.pit for s in scores], axis=0)
    shares = pooled / pooled.sum()
    assert ((shares >= 0.08) & (shares <= 0.12)).all(), shares


@pytest.mark.xfail(
    strict=True,
    reason="issue 18 asks for this, but most 10x streams arrive at rates the prior holds "
    "(test_most_ten_times_faster_streams_arrive_at_rates_the_prior_holds) and the trained model forecasts "
    "them nearly as well as in-prior ones "
    "(test_the_model_forecasts_ten_times_faster_streams_nearly_as_well_as_in_prior_ones): "
    "a monitor with a 1e-3 false-alarm rate can only flag real misfit, and there is little (16 of 40 flagged, "
    "python -m bench.event_monitor)",
)
def test_a_hawkes_stream_at_ten_times_the_rate_is_flagged_within_200_events(trained: ServedModel) -> None:
    batch = hawkes(10, seed=12, rate_factor=10.0)
    statuses = verdicts(trained, batch)
    assert statuses.count("miscalibrated") >= 8, statuses


def shortfall(trained: ServedModel, batch: EventBatch, truth: torch.Tensor) -> float:
    """The true process's log-likelihood minus the model's, per event, over events 50 onwards (each
    scored against the events before it); ``truth`` [B, N] is the true process's per event."""
    batch.end = None
    with torch.no_grad():
        model, _ = trained.net.event_log_likelihoods(batch)
    return float((truth[:, 50:] - model[:, 50:]).mean())


def hawkes_shortfall(trained: ServedModel, batch: EventBatch) -> float:
    from model.hawkes_mle import oracle_event_log_likelihoods

    return shortfall(trained, batch, oracle_event_log_likelihoods(batch)[0])


def test_the_model_forecasts_ten_times_faster_streams_nearly_as_well_as_in_prior_ones(trained: ServedModel) -> None:
    """Why the 10x stream is not flagged: meta-trained on rates that vary ~100-fold across the prior,
    the model reads a stream's rate from its events. Events 50-200 of each stream, scored against
    the events before them, beside the true process's exact log-likelihood: the model's shortfall
    at 10x the rate is within 0.15 nats per event of its shortfall on in-prior streams."""
    in_prior = hawkes_shortfall(trained, hawkes(20, seed=11))
    fast = hawkes_shortfall(trained, hawkes(20, seed=12, rate_factor=10.0))
    assert 0 < in_prior and fast < in_prior + 0.15, (in_prior, fast)


def test_most_ten_times_faster_streams_arrive_at_rates_the_prior_holds() -> None:
    """Why a faster clock is not out of the model's range: the prior's stationary rates span ~100x,
    so most 10x streams have mean gaps within the central 99% of in-prior streams' (measured: 75% of
    400 streams), and only their decay rates (5-50 per unit against 0.5-5) leave the prior."""
    in_prior, fast = hawkes(2000, seed=9), hawkes(400, seed=102, rate_factor=10.0)

    def mean_gaps(batch: EventBatch) -> torch.Tensor:
        return (batch.times[:, -1] - batch.times[:, 0]) / (batch.lengths - 1)

    low = torch.quantile(mean_gaps(in_prior), 0.005)
    assert (mean_gaps(fast) >= low).double().mean() > 0.6


def self_correcting_log_likelihoods(batch: EventBatch) -> torch.Tensor:
    """Each event's exact log-likelihood under the process ``self_correcting`` simulates: with i events
    before it, rate exp(t - i) since the last one (log-rate t_i - i at it, compensator
    exp(t_(i-1) - i) (exp(t_i - t_(i-1)) - 1) over the wait), times the mark's 1/3."""
    t = batch.times
    before = torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], dim=1)
    i = torch.arange(t.shape[1], dtype=t.dtype)
    return (t - i) - torch.exp(before - i) * torch.expm1(t - before) + math.log(1 / 3)


def test_the_model_misfits_self_correcting_streams_far_more_than_in_prior_ones(trained: ServedModel) -> None:
    """Why self-correcting streams are flagged (the next test): the same comparison as above finds a
    shortfall far larger than in prior (measured 0.30 against 0.10)."""
    in_prior = hawkes_shortfall(trained, hawkes(20, seed=11))
    batch = self_correcting(20, seed=13)
    regular = shortfall(trained, batch, self_correcting_log_likelihoods(batch))
    assert regular > in_prior + 0.1, (in_prior, regular)


def test_a_self_correcting_stream_is_flagged_within_200_events(trained: ServedModel) -> None:
    batch = self_correcting(10, seed=13)
    statuses = verdicts(trained, batch)
    # Measured: 10 of these 10; on streams not used to choose the tests (seeds 7 and 2027), 73 of 80.
    assert statuses.count("miscalibrated") >= 8, statuses
