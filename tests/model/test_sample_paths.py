"""The sample-path statistics, checked on the exact GP's own paths (where the answer is known) and
against independent computations: a difference-matrix form of the expected roughness, scipy's
chi-square test, and an over-confident sampler that the minimum-rank test must reject."""

import pytest
import torch
from scipy.stats import chisquare

from model.data.eval_sets import joint_set
from model.gp_oracle import gp_posterior
from model.sample_paths import (
    UNIFORMITY_P,
    expected_squared_increment,
    gaussian_paths,
    mean_squared_increment,
    min_ranks,
    uniformity_test,
)


@pytest.mark.parametrize("kernel", ["rbf", "matern"])
def test_gp_paths_roughness_matches_the_closed_form(tmp_path, kernel):
    (batch,) = joint_set(kernel, 1, 8, num_targets=20, grid=True, cache_dir=tmp_path)
    mean, cov = gp_posterior(batch)
    expected = expected_squared_increment(mean, cov)
    # Independently: with D the (M-1) x M difference matrix, E|D y|^2 = |D m|^2 + tr(D C D^T).
    m = mean.shape[1]
    d = torch.eye(m, dtype=torch.float64)[1:] - torch.eye(m, dtype=torch.float64)[:-1]
    trace = (d @ cov @ d.T).diagonal(dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(expected, ((mean @ d.T).square().sum(-1) + trace) / (m - 1), rtol=1e-10)
    # Monte Carlo: the GP's own paths, per task within 4 standard errors over paths.
    paths = gaussian_paths(mean, cov, 4000, torch.Generator().manual_seed(0))
    per_path = paths.diff(dim=-1).square().mean(-1)  # [S, B]
    se = per_path.std(0) / per_path.shape[0] ** 0.5
    assert ((mean_squared_increment(paths) - expected).abs() < 4 * se).all()
    # ... and a sampler with an inflated diagonal (rougher paths) is out of those bounds.
    rough = gaussian_paths(mean, cov + 0.01 * torch.eye(m), 4000, torch.Generator().manual_seed(0))
    assert ((mean_squared_increment(rough) - expected) > 4 * se).all()


def test_min_rank_passes_for_gp_paths_and_fails_for_an_over_confident_sampler(tmp_path):
    batches = joint_set("rbf", 25, 16, num_targets=20, grid=True, cache_dir=tmp_path)  # 400 tasks, 20 per bin
    g = torch.Generator().manual_seed(0)
    calibrated, over_confident = [], []
    for b in batches:
        mean, cov = gp_posterior(b)
        truth = b.yt[..., 0]
        calibrated.append(min_ranks(gaussian_paths(mean, cov, 19, g), truth))
        over_confident.append(min_ranks(gaussian_paths(mean, 0.25 * cov, 19, g), truth))
    good = uniformity_test(torch.cat(calibrated), 20)
    bad = uniformity_test(torch.cat(over_confident), 20)
    assert good["passes"] and good["p_value"] > UNIFORMITY_P
    assert abs(good["mean_rank"] - 0.5) < 0.05
    assert not bad["passes"] and bad["p_value"] < 1e-6
    assert bad["mean_rank"] < 0.4  # the true minimum lies below the narrow paths' minima too often


def test_min_ranks_count_the_paths_whose_minimum_is_lower():
    paths = torch.tensor([[[0.0, 1.0]], [[2.0, -1.0]], [[3.0, 0.5]]])  # 3 paths, 1 task, 2 points
    assert min_ranks(paths, torch.tensor([[0.2, 0.9]])).tolist() == [2]  # minima 0.0, -1.0, 0.5: two below 0.2
    assert min_ranks(paths, torch.tensor([[-5.0, 0.0]])).tolist() == [0]
    assert min_ranks(paths, torch.tensor([[9.0, 9.0]])).tolist() == [3]


def test_uniformity_test_agrees_with_scipy():
    ranks = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(1))
    ranks[:30] = 0  # some excess in one bin, so the p-value is not near 1
    got = uniformity_test(ranks, 10)
    want = chisquare(torch.bincount(ranks, minlength=10).numpy())
    assert got["chi2"] == pytest.approx(want.statistic, rel=1e-12)
    assert got["p_value"] == pytest.approx(want.pvalue, rel=1e-9)
    assert got["dof"] == 9 and sum(got["histogram"]) == 300
    with pytest.raises(ValueError):
        uniformity_test(torch.tensor([0, 10]), 10)
