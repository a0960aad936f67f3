"""The event figure: its two intensities are the true process's and the model's forecasts, checked
against independent computations, and the CLI draws a PNG."""

import math

import pytest
import torch

from model import save_checkpoint
from model.data.hawkes import HawkesPrior, simulate_hawkes
from model.hawkes_mle import compensator_increments
from model.plot_events import main, model_intensity
from tests.model.conftest import small_cmhp


def stream(n: int = 30, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    params = HawkesPrior().sample(1, g)
    batch = simulate_hawkes(params, 100 * n / params.stationary_rate().sum(-1), n, g)
    return params, *batch.sequence(0)


def integrate(values: torch.Tensor, grid: torch.Tensor) -> float:
    return float(torch.trapezoid(values, grid))


def close_to(x: float):
    return pytest.approx(float(x), rel=1e-3, abs=1e-6)


def test_the_true_intensity_integrates_to_the_compensator_between_events():
    params, times, marks = stream()
    increments = compensator_increments(params, times, marks)
    for i in (1, 10, 29):
        grid = torch.linspace(float(times[i - 1]), float(times[i]), 20001, dtype=torch.float64)[1:]
        assert integrate(params.intensity(times, marks, grid).sum(-1), grid) == close_to(increments[i])


def test_the_model_intensity_integrates_to_minus_log_survival_of_its_forecast():
    """exp(-int hazard) over (t_i, t_i + u] is P(wait > u): at the forecast's q-quantile, 1 - q."""
    net = small_cmhp()
    _, times, marks = stream(n=12)
    with torch.no_grad():
        state = net.condition(times.view(1, -1), marks.view(1, -1))
        u = float(net.next_event(state, quantiles=(0.7,)).quantiles[0, 0])
    grid = float(times[-1]) + torch.logspace(-9, math.log10(u), 20001, dtype=torch.float64)
    later = torch.cat([times, torch.tensor([float(times[-1]) + 2 * u], dtype=torch.float64)])
    hazard = model_intensity(net, later, torch.cat([marks, marks[:1]]), grid).sum(-1)
    assert integrate(hazard, grid) == close_to(-math.log(1 - 0.7))


def test_the_cli_draws_a_png(tmp_path):
    path = tmp_path / "cmhp.safetensors"
    save_checkpoint(small_cmhp(), path)
    main(["--checkpoint", str(path), "--out", str(tmp_path / "fig.png"), "--events", "40", "--shown", "20"])
    assert (tmp_path / "fig.png").stat().st_size > 10_000
