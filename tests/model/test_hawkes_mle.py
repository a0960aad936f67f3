"""The references: the oracle's O(N) recursion against a brute-force sum and numerical integral,
the fit's vectorised objective against the oracle, and the fit's recovery of known parameters."""

import numpy as np
import pytest
import torch
from scipy import integrate

from model.data.hawkes import HawkesParams, HawkesPrior, simulate_hawkes
from model.hawkes_mle import (
    MAX_RADIUS,
    SequenceLikelihood,
    event_log_likelihoods,
    fit,
    log_likelihood,
    next_event_forecasts,
    oracle_event_log_likelihoods,
)

TRUE = HawkesParams(
    mu=torch.tensor([[0.3, 0.15]], dtype=torch.float64),
    alpha=torch.tensor([[[0.4, 0.2], [0.1, 0.3]]], dtype=torch.float64),
    beta=torch.tensor([1.5], dtype=torch.float64),
)


def simulated(params: HawkesParams, end: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    batch = simulate_hawkes(params, torch.tensor([end]), 100_000, torch.Generator().manual_seed(seed))
    t, k = batch.sequence(0)
    return t, k, float(batch.end[0])


def brute_force_log_likelihood(params: HawkesParams, t: np.ndarray, k: np.ndarray, end: float) -> float:
    """sum_i log lambda_{k_i}(t_i) by the O(N^2) sum, minus int_0^end sum_k lambda_k by quadrature."""
    mu, alpha, beta = params.mu[0].numpy(), params.alpha[0].numpy(), float(params.beta[0])

    def intensity(s: float) -> np.ndarray:
        past = t < s
        kernel = beta * np.exp(-beta * (s - t[past]))
        return mu + alpha[:, k[past]] @ kernel

    log_sum = sum(np.log(intensity(t[i])[k[i]]) for i in range(len(t)))
    edges = np.concatenate([[0.0], t, [end]])
    total = sum(
        integrate.quad(lambda s: intensity(s).sum(), a, b)[0] for a, b in zip(edges[:-1], edges[1:], strict=True)
    )
    return float(log_sum - total)


def test_the_recursion_equals_a_brute_force_sum_and_integral():
    t, k, end = simulated(TRUE, 40.0, seed=1)
    assert 10 < len(t) < 200
    exact = brute_force_log_likelihood(TRUE, t.numpy(), k.numpy(), end + 2.0)
    assert log_likelihood(TRUE, t, k, end + 2.0) == pytest.approx(exact, rel=1e-7, abs=1e-7)


def test_per_event_terms_sum_to_the_log_likelihood():
    t, k, end = simulated(TRUE, 50.0, seed=2)
    per_event, survival = event_log_likelihoods(TRUE, t, k, end)
    assert per_event.shape == (len(t),) and survival <= 0
    assert per_event.sum() + survival == pytest.approx(log_likelihood(TRUE, t, k, end), rel=1e-12)


def test_the_fit_objective_at_the_true_parameters_equals_the_oracle():
    t, k, end = simulated(TRUE, 300.0, seed=3)
    objective = SequenceLikelihood(t, k, 2, end)
    assert objective.at(TRUE) == pytest.approx(log_likelihood(TRUE, t, k, end), rel=1e-10)


def test_the_oracle_of_a_batch_matches_each_sequence_and_leaves_padding_at_zero():
    prior = HawkesPrior(num_marks=2)
    p = prior.sample(3, torch.Generator().manual_seed(4))
    batch = simulate_hawkes(p, torch.tensor([20.0, 40.0, 60.0]), 1000, torch.Generator().manual_seed(5))
    per_event, survival = oracle_event_log_likelihoods(batch)
    for i in range(3):
        t, k = batch.sequence(i)
        expected, tail = event_log_likelihoods(p.sequence(i), t, k, float(batch.end[i]))
        assert np.allclose(per_event[i, : len(t)].numpy(), expected) and survival[i].item() == pytest.approx(tail)
    assert (per_event[~batch.mask] == 0).all()


def test_the_forecasts_equal_the_survival_integrals_by_quadrature():
    """E[wait] = int S and P(mark k) = int lambda_k S from each event's predecessor on, with the
    intensity summed over the past events and S = exp(-int lambda) by nested quadrature."""
    t, k, _ = simulated(TRUE, 30.0, seed=8)
    mean_wait, probs = next_event_forecasts(TRUE, t, k)
    t, k = t.numpy(), k.numpy()
    mu, alpha, beta = TRUE.mu[0].numpy(), TRUE.alpha[0].numpy(), 1.5
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
    for i in (0, 1, len(t) // 2, len(t) - 1):
        start = t[i - 1] if i else 0.0

        def intensity(s: float, i: int = i, start: float = start) -> np.ndarray:
            return mu + alpha[:, k[:i]] @ (beta * np.exp(-beta * (start + s - t[:i])))

        def survival(s: float) -> float:
            return np.exp(-integrate.quad(lambda x: intensity(x).sum(), 0, s, epsabs=1e-13)[0])

        assert mean_wait[i] == pytest.approx(integrate.quad(survival, 0, np.inf, limit=200)[0], rel=1e-7)
        for m in range(2):
            want = integrate.quad(lambda s, m=m: intensity(s)[m] * survival(s), 0, np.inf, limit=200)[0]
            assert probs[i, m] == pytest.approx(want, rel=1e-6)


def test_the_forecasts_stay_finite_under_a_huge_excitation():
    """A fitted matrix may hold large entries and still be stationary (nilpotent): no overflow."""
    params = HawkesParams(
        torch.tensor([[1e-4, 1e-4]], dtype=torch.float64),
        torch.tensor([[[0.0, 500.0], [0.0, 0.0]]], dtype=torch.float64),
        torch.tensor([0.01], dtype=torch.float64),
    )
    t, k = np.array([1.0, 2.0, 2.5]), np.array([1, 1, 1])
    mean_wait, probs = next_event_forecasts(params, t, k)
    assert np.isfinite(mean_wait).all() and (mean_wait > 0).all() and np.allclose(probs.sum(-1), 1.0)
    assert probs[1:, 0].min() > 0.999  # after a mark-1 event a mark-0 child is all but certain


def test_the_fit_recovers_the_parameters_of_a_long_sequence():
    """About 2,700 events (rate 0.9): mu within 25%, alpha within 0.08, beta within 20%, and the fitted
    likelihood at least the true parameters' (it is the maximum)."""
    t, k, end = simulated(TRUE, 3000.0, seed=6)
    assert len(t) > 2000
    result = fit(t, k, 2, end, restarts=3, seed=0)
    assert result.converged
    assert torch.allclose(result.params.mu, TRUE.mu, rtol=0.25)
    assert (result.params.alpha - TRUE.alpha).abs().max() < 0.08
    assert abs(float(result.params.beta[0]) / 1.5 - 1) < 0.2
    assert result.log_likelihood >= log_likelihood(TRUE, t, k, end) - 1e-6
    assert result.log_likelihood == pytest.approx(log_likelihood(result.params, t, k, end), rel=1e-9)


def test_the_fit_of_a_short_sequence_stays_stationary():
    t, k, end = simulated(TRUE, 12.0, seed=7)
    result = fit(t, k, 2, end, restarts=2, seed=1)
    assert float(result.params.spectral_radius()[0]) <= MAX_RADIUS + 1e-6
    assert (result.params.mu > 0).all() and (result.params.alpha >= -1e-12).all() and result.params.beta[0] > 0


def test_the_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="without events"):
        fit(np.array([]), np.array([]), 2)
    with pytest.raises(ValueError, match="marks"):
        fit(np.array([0.5, 1.0]), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="no true parameters"):
        from model.data.events import EventBatch

        oracle_event_log_likelihoods(EventBatch.from_sequences([(torch.tensor([1.0]), torch.tensor([0]))]))
