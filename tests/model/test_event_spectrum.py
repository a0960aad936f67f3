"""Damped Fourier sums of an event history (``model.event_spectrum``): the streamed sums are the
pairwise periodogram they stand for, the training pass reads the streamed sums, the features follow
a Hawkes process's theoretical power spectrum, and a model with a spectrum forecasts from it."""

import math

import numpy as np
import pytest
import torch

from model import CMHPState
from model.data.hawkes import HawkesParams, simulate_hawkes
from model.event_spectrum import EventSpectrum
from tests.model.conftest import SMALL_SPECTRUM, small_cmhp

EULER_GAMMA = 0.5772156649  # E[log X] = -gamma for X ~ Exp(1): a periodogram ordinate's log bias


def stream(mu: float, alpha: float, beta: float, n: int, seed: int) -> np.ndarray:
    """Event times of a one-mark Hawkes process (alpha = 0: Poisson), n events."""
    params = HawkesParams(
        torch.tensor([[mu]], dtype=torch.float64),
        torch.tensor([[[alpha]]], dtype=torch.float64),
        torch.tensor([beta], dtype=torch.float64),
    )
    g = torch.Generator().manual_seed(seed)
    batch = simulate_hawkes(params, torch.tensor([1e9], dtype=torch.float64), n, g)
    assert int(batch.lengths[0]) == n
    return batch.times[0].numpy()


def streamed(spectrum: EventSpectrum, times: np.ndarray) -> torch.Tensor:
    """The sums after folding events one at a time in time order: [1, 3, F] relative to the last."""
    sums, last = spectrum.empty(1), None
    for t in times:
        if last is not None:
            sums = spectrum.shift(sums, torch.tensor([t - last], dtype=torch.float64))
        sums = spectrum.add(sums, torch.zeros(1, 1, dtype=torch.float64))
        last = t
    return sums


def test_the_streamed_sums_are_the_pairwise_periodogram():
    spectrum = EventSpectrum(bands=2, per_band=3, freq_range=(0.05, 5.0), qualities=(4.0, 32.0))
    times = np.sort(np.random.default_rng(0).uniform(0, 40, 60))
    re, im, d = streamed(spectrum, times)[0].double()
    omega, r = spectrum.omega.numpy(), spectrum.rate.numpy()
    age = times[-1] - times  # [n]
    weight = np.exp(-r[:, None] * age[None])  # [F, n]
    gaps = times[:, None] - times[None]  # [n, n]
    pairwise = np.einsum("fi,fj,fij->f", weight, weight, np.cos(omega[:, None, None] * gaps[None]))
    np.testing.assert_allclose((re**2 + im**2).numpy(), pairwise, rtol=1e-4)
    np.testing.assert_allclose(d.numpy(), (weight**2).sum(1), rtol=1e-5)


def test_the_training_pass_reads_the_streamed_sums_before_each_event():
    spectrum = EventSpectrum(bands=2, per_band=2, freq_range=(0.1, 3.0), qualities=(8.0,))
    times = np.sort(np.random.default_rng(1).uniform(0, 20, 12))
    padded = torch.tensor(np.concatenate([times, [0.0, 0.0]]), dtype=torch.float64).unsqueeze(0)
    prefix = spectrum.prefix(padded, torch.tensor([12]))  # [1, 15, 3, F]
    for i in (0, 1, 5, 12):
        expected = spectrum.empty(1) if i == 0 else streamed(spectrum, times[:i])
        torch.testing.assert_close(prefix[:, i], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prefix[:, 14], prefix[:, 12])  # padding changes nothing


@pytest.mark.parametrize(("alpha", "low", "high"), [(0.0, 1.0, 1.0), (0.8, 25.0, 1.0)])
def test_the_features_follow_the_hawkes_power_spectrum(alpha, low, high):
    """A one-mark Hawkes process (beta = 1, branching ratio alpha) has the power spectrum
    lambda (beta^2 + omega^2) / (beta^2 (1 - alpha)^2 + omega^2): relative to a Poisson stream, 1 / (1 - alpha)^2
    far below the knee beta (1 - alpha) and 1 far above it. A periodogram ordinate is that times an
    Exp(1) variable, so the mean log ratio is log(spectrum ratio) - Euler's gamma."""
    spectrum = EventSpectrum(bands=8, per_band=4, freq_range=(0.01, 100.0), qualities=(128.0,))
    feats = np.stack(
        [spectrum.features(streamed(spectrum, stream(0.5, alpha, 1.0, 4000, s)))[0].numpy() for s in range(8)]
    )
    centres = np.logspace(-2, 2, 32).reshape(8, 4).mean(1)  # each band's mean frequency (rad per unit)
    # Well below the knee, where the stream's start (the mean's leakage, ~lambda^2 / omega^2) is small.
    below = feats[:, (centres > 0.03) & (centres < 0.09)].mean()
    above = feats[:, centres > 10].mean()
    assert below == pytest.approx(math.log(low) - EULER_GAMMA, abs=0.35)
    assert above == pytest.approx(math.log(high) - EULER_GAMMA, abs=0.2)


def test_a_model_with_a_spectrum_forecasts_from_it():
    net = small_cmhp(cfg=SMALL_SPECTRUM)
    t = torch.tensor([[0.0, 0.2, 0.3, 2.0, 2.1, 5.0]], dtype=torch.float64)
    k = torch.tensor([[0, 1, 0, 2, 2, 1]])
    state = net.condition(t, k)
    silent = CMHPState(state.acc, state.last_time, net.spectrum.empty(1))  # the same CMAB sums
    with torch.no_grad():
        with_sums, without = net.next_event(state).quantiles, net.next_event(silent).quantiles
    assert not torch.allclose(with_sums, without, rtol=1e-3)
