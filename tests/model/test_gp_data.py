"""GP data and the exact-GP oracle, checked against independent float64 numpy computations."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from model.data.eval_sets import joint_set
from model.data.gp import GPSampler, gamma_draws, kernel_matrix
from model.gp_oracle import gp_joint_log_likelihood, gp_log_likelihood, gp_predict


def numpy_kernel(kind, a, b, length, scale, period):
    d = np.abs(a[:, None] - b[None, :])
    if kind == "rbf":
        k = np.exp(-(d**2) / (2 * length**2))
    elif kind == "matern":
        r = np.sqrt(5) * d / length
        k = (1 + r + 5 * d**2 / (3 * length**2)) * np.exp(-r)
    else:
        k = np.exp(-2 * np.sin(np.pi * d / period) ** 2 / length**2)
    return scale**2 * k


@pytest.mark.parametrize("kind", ["rbf", "matern", "periodic"])
def test_kernel_matrix_matches_the_formula(kind):
    a, b = np.linspace(-2, 2, 7), np.linspace(-1, 1.5, 5)
    ours = kernel_matrix(
        kind,
        torch.tensor(a).view(1, -1, 1),
        torch.tensor(b).view(1, -1, 1),
        torch.tensor([0.3]),
        torch.tensor([0.7]),
        torch.tensor([0.4]),
    )
    assert np.allclose(ours[0].numpy(), numpy_kernel(kind, a, b, 0.3, 0.7, 0.4), atol=1e-12)


@pytest.mark.parametrize("kind", ["rbf", "matern", "periodic"])
def test_samples_are_whitened_by_their_own_covariance(kind):
    """y ~ N(0, K + s^2 I) exactly when L^-1 y is standard normal: check its first two moments."""
    sampler = GPSampler(kind)
    batch = sampler.sample(256, 20, 10, torch.Generator().manual_seed(0))
    x = torch.cat([batch.xc, batch.xt], 1).double()
    y = torch.cat([batch.yc, batch.yt], 1).double()
    cov = kernel_matrix(kind, x, x, batch.length, batch.scale, batch.period) + 0.02**2 * torch.eye(30)
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), y, upper=False).flatten()
    assert abs(z.mean().item()) < 4 / math.sqrt(z.numel())
    assert abs(z.var().item() - 1) < 0.05


def test_protocol_sizes_and_seeded_determinism():
    sampler = GPSampler("rbf")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):
        a, b = sampler.sample_protocol(4, g1), sampler.sample_protocol(4, g2)
        nc, nt = a.xc.shape[1], a.xt.shape[1]
        assert 3 <= nc <= 46 and 3 <= nt <= 49 - nc
        assert torch.equal(a.yt, b.yt)
        assert ((a.xc >= -2) & (a.xc <= 2)).all()
        assert ((a.length >= 0.1) & (a.length < 0.6)).all() and ((a.scale >= 0.1) & (a.scale < 1)).all()


def test_student_t_noise_is_heavier_tailed():
    g = torch.Generator().manual_seed(1)
    gauss = GPSampler("rbf", scale_range=(1e-4, 2e-4)).sample(64, 0, 200, g)
    heavy = GPSampler("rbf", scale_range=(1e-4, 2e-4), noise="student_t").sample(64, 0, 200, g)
    kurt = lambda t: ((t - t.mean()) ** 4).mean() / t.var() ** 2  # noqa: E731
    assert kurt(gauss.yt) < 4 < kurt(heavy.yt)


@pytest.mark.parametrize("concentration", [0.4, 1.05, 7.0])
def test_gamma_draws_follow_scipy_s_gamma_and_the_seed(concentration: float) -> None:
    from scipy import stats

    draws = gamma_draws(concentration, (40, 100), torch.Generator().manual_seed(3))
    again = gamma_draws(concentration, (40, 100), torch.Generator().manual_seed(3))
    assert torch.equal(draws, again) and draws.shape == (40, 100)
    assert stats.kstest(draws.flatten().numpy(), stats.gamma(concentration).cdf).pvalue > 1e-3


def test_student_t_tasks_follow_the_seed_and_scipy_s_t() -> None:
    from scipy import stats

    sampler = GPSampler("rbf", noise="student_t")
    a, b = (sampler.sample(16, 10, 40, torch.Generator().manual_seed(8)) for _ in range(2))
    assert torch.equal(a.yt, b.yt) and torch.equal(a.yc, b.yc)
    noise = ((a.readings(50, torch.Generator().manual_seed(9)) - a.ft) / a.noise_std).flatten().numpy()
    assert stats.kstest(noise, stats.t(sampler.t_df).cdf).pvalue > 1e-3


def test_oracle_matches_an_independent_numpy_posterior():
    batch = GPSampler("matern").sample(3, 12, 6, torch.Generator().manual_seed(2))
    mean, var = gp_predict(batch)
    ll = gp_log_likelihood(batch)
    for b in range(3):
        xc, yc = batch.xc[b, :, 0].double().numpy(), batch.yc[b, :, 0].double().numpy()
        xt, yt = batch.xt[b, :, 0].double().numpy(), batch.yt[b, :, 0].double().numpy()
        hyp = (batch.length[b].item(), batch.scale[b].item(), batch.period[b].item())
        kcc = numpy_kernel("matern", xc, xc, *hyp) + 0.02**2 * np.eye(12)
        kct = numpy_kernel("matern", xc, xt, *hyp)
        m = kct.T @ np.linalg.solve(kcc, yc)
        v = hyp[1] ** 2 + 0.02**2 - np.einsum("ij,ij->j", kct, np.linalg.solve(kcc, kct))
        assert np.allclose(mean[b].numpy(), m, atol=1e-9) and np.allclose(var[b].numpy(), v, atol=1e-9)
        ref_ll = np.mean(-0.5 * (np.log(2 * np.pi * v) + (yt - m) ** 2 / v))
        assert abs(ll[b].item() - ref_ll) < 1e-9


def test_oracle_joint_ll_is_the_chain_of_its_conditionals():
    """log p(y1..yM | D) = sum_i log p(y_i | D, y_<i): each conditional is the marginal oracle with the
    earlier targets moved into the context."""
    batch = GPSampler("rbf").sample(4, 5, 4, torch.Generator().manual_seed(3))
    chain = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        step = dataclasses.replace(
            batch,
            xc=torch.cat([batch.xc, batch.xt[:, :i]], 1),
            yc=torch.cat([batch.yc, batch.yt[:, :i]], 1),
            xt=batch.xt[:, i : i + 1],
            yt=batch.yt[:, i : i + 1],
        )
        chain += gp_log_likelihood(step)
    assert torch.allclose(gp_joint_log_likelihood(batch) * 4, chain, rtol=0, atol=1e-8)
    assert not torch.allclose(gp_log_likelihood(batch) * 4, chain, rtol=0, atol=1e-3)  # correlations matter


def test_sample_is_sample_at_its_own_inputs():
    # sample() draws x and hands it to sample_at(): the same generator state gives the same task.
    a = GPSampler("matern").sample(3, 5, 7, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    x = -2.0 + 4.0 * torch.rand((3, 12, 1), generator=g, dtype=torch.float64)
    b = GPSampler("matern").sample_at(x, 5, g)
    for name in ("xc", "yc", "xt", "yt", "length", "scale", "period"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_joint_set_grid_targets_are_one_sorted_grid(tmp_path):
    grid = joint_set("rbf", 2, 3, num_targets=10, grid=True, cache_dir=tmp_path)
    assert torch.equal(grid[0].xt[:, :, 0], torch.linspace(-2, 2, 10, dtype=torch.float64).float().expand(3, -1))
    assert all(3 <= b.xc.shape[1] <= 46 for b in grid)
    random = joint_set("rbf", 2, 3, num_targets=10, cache_dir=tmp_path)
    assert not torch.equal(random[0].xt, grid[0].xt) and random[0].xt.abs().max() <= 2
    again = joint_set("rbf", 2, 3, num_targets=10, grid=True, cache_dir=tmp_path / "fresh")  # regenerated
    assert all(torch.equal(a.yt, b.yt) for a, b in zip(grid, again, strict=True))


def test_fresh_readings_are_the_task_s_function_plus_new_noise_of_the_stated_size() -> None:
    from scipy import stats

    batch = GPSampler("rbf").sample(32, 10, 40, torch.Generator().manual_seed(5))
    readings = batch.readings(50, torch.Generator().manual_seed(6))  # [B, 40, 50]
    fresh = ((readings - batch.ft) / batch.noise_std).flatten().numpy()
    drawn = ((batch.yt.double() - batch.ft) / batch.noise_std).flatten().numpy()
    assert stats.kstest(fresh, stats.norm().cdf).pvalue > 1e-3
    assert stats.kstest(drawn, stats.norm().cdf).pvalue > 1e-3  # ft is the function the targets were read from
