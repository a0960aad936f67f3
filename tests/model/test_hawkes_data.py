"""The event-stream simulators: the stationary prior, determinism, the stationary rate, the
time-rescaling theorem (compensator increments are Exp(1)) for every process, and our Hawkes
simulator against tick's (an independent implementation)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from model.data import build_source
from model.data.events import EventBatch
from model.data.hawkes import (
    HawkesParams,
    HawkesPrior,
    HawkesSource,
    SelfCorrectingSource,
    SinusoidalPoissonSource,
    simulate_hawkes,
    simulate_self_correcting,
    simulate_sinusoidal_poisson,
)
from model.hawkes_mle import compensator_increments


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_prior_draws_stationary_processes_within_its_ranges():
    prior = HawkesPrior()
    p = prior.sample(500, gen())
    radius = p.spectral_radius()
    assert (radius < prior.radius_range[1] + 1e-9).all() and (p.alpha >= 0).all()
    assert p.mu.min() >= prior.mu_range[0] and p.mu.max() <= prior.mu_range[1]
    assert p.beta.min() >= prior.beta_range[0] and p.beta.max() <= prior.beta_range[1]
    # The stationary rates exist and are positive: (I - alpha)^-1 mu with radius < 1.
    assert (p.stationary_rate() > 0).all()


def test_a_prior_allowing_a_radius_of_one_is_refused():
    with pytest.raises(ValueError, match="stationarity"):
        HawkesPrior(radius_range=(0.5, 1.0))


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    a, b = (HawkesSource(num_events=(20, 50)).sample_batch(4, gen(3)) for _ in range(2))
    c = HawkesSource(num_events=(20, 50)).sample_batch(4, gen(4))
    assert torch.equal(a.times, b.times) and torch.equal(a.marks, b.marks) and torch.equal(a.lengths, b.lengths)
    assert not (a.times.shape == c.times.shape and torch.equal(a.times, c.times))


def test_the_heldout_set_is_fixed_by_its_seed():
    source = HawkesSource(num_events=(10, 30))
    a, b = source.heldout(2, 3, seed=7), source.heldout(2, 3, seed=7)
    assert all(torch.equal(x.times, y.times) for x, y in zip(a, b, strict=True))


def test_sequences_are_sorted_inside_their_windows_with_valid_marks():
    batch = HawkesSource(num_events=(30, 60)).sample_batch(6, gen(1))
    for i in range(batch.batch_size):
        t, k = batch.sequence(i)
        assert (t.diff() >= 0).all() and (t > 0).all() and (t <= batch.end[i]).all()
        assert k.min() >= 0 and k.max() < 3
    assert (batch.times[~batch.mask] == 0).all()


def test_event_counts_match_the_stationary_rate():
    """N_k(T) / T -> ((I - alpha)^-1 mu)_k, with the asymptotic count covariance of a Hawkes process,
    T (I - alpha)^-1 diag(lambda) (I - alpha)^-T, as the scale of each z-score."""
    p = HawkesPrior(radius_range=(0.3, 0.7)).sample(6, gen(2))
    rate = p.stationary_rate()
    end = 3000.0 / rate.sum(-1)
    batch = simulate_hawkes(p, end, 20_000, gen(5))
    assert (batch.lengths < 20_000).all()
    inv = torch.linalg.inv(torch.eye(3, dtype=torch.float64) - p.alpha)
    cov = inv @ torch.diag_embed(rate) @ inv.transpose(1, 2)  # per unit time
    for i in range(6):
        counts = torch.bincount(batch.sequence(i)[1], minlength=3).double()
        z = (counts - end[i] * rate[i]) / torch.sqrt(end[i] * cov[i].diagonal())
        assert z.abs().max() < 4.5, (counts, end[i] * rate[i], z)


def _ks_exponential(increments: np.ndarray) -> float:
    return stats.kstest(increments, "expon").pvalue


def test_hawkes_compensator_increments_are_exponential():
    p = HawkesPrior().sample(4, gen(6))
    batch = simulate_hawkes(p, 600.0 / p.stationary_rate().sum(-1), 5000, gen(7))
    increments = np.concatenate(
        [compensator_increments(p.sequence(i), *batch.sequence(i)) for i in range(batch.batch_size)]
    )
    assert len(increments) > 1500 and _ks_exponential(increments) > 1e-3


# A process with asymmetric cross-excitation, so that a transposed convention would show.
TICK_MU = np.array([0.2, 0.1, 0.3])
TICK_ALPHA = np.array([[0.3, 0.0, 0.4], [0.2, 0.2, 0.0], [0.0, 0.5, 0.1]])
TICK_BETA = 2.0


def _tick_sequences(end: float, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` sequences on [0, end] from tick's simulator (times, marks), sorted by time."""
    tick = pytest.importorskip("tick.hawkes")
    out = []
    for s in range(count):
        sim = tick.SimuHawkesExpKernels(
            adjacency=TICK_ALPHA, decays=TICK_BETA, baseline=TICK_MU, end_time=end, seed=seed + s, verbose=False
        )
        sim.simulate()
        t = np.concatenate(sim.timestamps)
        k = np.concatenate([np.full(len(x), m) for m, x in enumerate(sim.timestamps)])
        order = np.argsort(t, kind="stable")
        out.append((t[order], k[order]))
    return out


def _tick_params(batch: int = 1, transpose: bool = False) -> HawkesParams:
    alpha = torch.tensor(TICK_ALPHA.T if transpose else TICK_ALPHA)
    return HawkesParams(
        torch.tensor(TICK_MU).expand(batch, 3).clone(),
        alpha.expand(batch, 3, 3).clone(),
        torch.full((batch,), TICK_BETA, dtype=torch.float64),
    )


def test_our_compensator_rescales_ticks_sequences_to_exponentials():
    """tick's events, rescaled by our compensator, are Exp(1); with the branching matrix transposed
    they are not (tick's ``adjacency[i, j]`` is our ``alpha[k, j]``: j's effect on i). Long windows:
    the gaps of a fixed window are biased short by about 1 / (events in it), too little to see here."""
    sequences = _tick_sequences(4000.0, 4, seed=100)
    increments = np.concatenate([compensator_increments(_tick_params(), t, k) for t, k in sequences])
    transposed = np.concatenate([compensator_increments(_tick_params(transpose=True), t, k) for t, k in sequences])
    assert len(increments) > 15_000 and _ks_exponential(increments) > 1e-3
    assert _ks_exponential(transposed) < 1e-6


def test_our_simulator_draws_ticks_process_from_an_empty_start():
    """1,000 windows of 30 time units from each simulator (the transient from an empty history
    included): the counts of each mark have the same mean (Welch's t-test) and the time of the
    fifth event the same distribution (two-sample KS)."""
    count, end = 1000, 30.0
    theirs = _tick_sequences(end, count, seed=1000)
    ours = simulate_hawkes(_tick_params(count), torch.full((count,), end), 2000, gen(13))
    our_counts = np.stack([np.bincount(ours.sequence(i)[1].numpy(), minlength=3) for i in range(count)])
    their_counts = np.stack([np.bincount(k, minlength=3) for _, k in theirs])
    for m in range(3):
        assert stats.ttest_ind(our_counts[:, m], their_counts[:, m], equal_var=False).pvalue > 1e-3
    fifth = [float(ours.sequence(i)[0][4]) if ours.lengths[i] > 4 else end for i in range(count)]
    their_fifth = [t[4] if len(t) > 4 else end for t, _ in theirs]
    assert stats.ks_2samp(fifth, their_fifth).pvalue > 1e-3


def test_self_correcting_compensator_increments_are_exponential():
    eta, gamma = 1.0, 1.0
    batch = simulate_self_correcting(eta, gamma, torch.full((3,), 1 / 3), torch.full((4,), 400.0), 5000, gen(8))
    increments = []
    for i in range(batch.batch_size):
        t = batch.sequence(i)[0].numpy()
        previous = np.concatenate([[0.0], t[:-1]])
        count_before = np.arange(len(t))  # events before the gap that ends at t_i
        increments.append(np.exp(eta * previous - gamma * count_before) * np.expm1(eta * (t - previous)) / eta)
    increments = np.concatenate(increments)
    assert len(increments) > 1000 and _ks_exponential(increments) > 1e-3


def test_sinusoidal_poisson_compensator_increments_are_exponential():
    amplitude, period = 0.9, 20.0
    mu = torch.tensor([[0.3, 0.5, 0.2]] * 4, dtype=torch.float64)
    batch = simulate_sinusoidal_poisson(mu, amplitude, period, torch.full((4,), 400.0), 5000, gen(9))

    def compensator(t: np.ndarray) -> np.ndarray:
        return mu[0].sum().item() * (t + amplitude * period / (2 * math.pi) * (1 - np.cos(2 * math.pi * t / period)))

    increments = np.concatenate(
        [np.diff(compensator(np.concatenate([[0.0], batch.sequence(i)[0].numpy()]))) for i in range(4)]
    )
    assert len(increments) > 1000 and _ks_exponential(increments) > 1e-3


def test_the_ten_times_rate_stream_is_the_same_process_on_a_faster_clock():
    base = HawkesSource(num_events=(50, 50)).sample_batch(3, gen(10))
    fast = HawkesSource(num_events=(50, 50), rate_factor=10.0).sample_batch(3, gen(10))
    assert torch.allclose(fast.params.mu, 10 * base.params.mu) and torch.allclose(
        fast.params.beta, 10 * base.params.beta
    )
    assert torch.allclose(fast.params.stationary_rate(), 10 * base.params.stationary_rate())
    assert torch.equal(fast.params.alpha, base.params.alpha)


def test_the_alternative_streams_yield_event_batches():
    for source in (SinusoidalPoissonSource(num_events=(20, 20)), SelfCorrectingSource(num_events=(20, 20))):
        batch = source.sample_batch(3, gen(11))
        assert isinstance(batch, EventBatch) and batch.params is None and (batch.lengths > 5).all()


def test_a_config_names_the_hawkes_source():
    spec = {"kind": "hawkes", "process": "hawkes", "num_events": [10, 20], "num_marks": 2, "radius_range": [0.1, 0.5]}
    source = build_source(spec, cfg=None)  # an event source reads nothing from the model's config
    batch = source.sample_batch(2, gen(12))
    assert batch.params.num_marks == 2 and (batch.params.spectral_radius() <= 0.5 + 1e-9).all()
    with pytest.raises(ValueError, match="unknown event process"):
        build_source({"kind": "hawkes", "process": "poisson"}, cfg=None)


def test_a_batch_moves_and_pads():
    batch = EventBatch.from_sequences(
        [(torch.tensor([0.5, 1.0]), torch.tensor([1, 0])), (torch.tensor([2.0]), torch.tensor([2]))], end=[3.0, 4.0]
    )
    assert batch.lengths.tolist() == [2, 1] and batch.mask.tolist() == [[True, True], [True, False]]
    moved = batch.to("cpu")
    assert torch.equal(moved.times, batch.times) and torch.equal(moved.end, batch.end)
    assert isinstance(HawkesParams(torch.ones(1, 1), torch.zeros(1, 1, 1), torch.ones(1)).sequence(0), HawkesParams)
