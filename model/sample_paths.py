"""Statistics that judge joint sample paths against a reference posterior (issue 20).

A joint model's sample paths feed Thompson sampling, so two things about them matter beyond the
log-likelihood of the true values:

* **Roughness**: the mean squared increment between neighbouring points of a sorted grid. For a
  Gaussian posterior with mean m and covariance C over the grid it has the closed form
  E[(y_{i+1} - y_i)^2] = (m_{i+1} - m_i)^2 + C_{i+1,i+1} + C_{i,i} - 2 C_{i,i+1}, averaged over
  the grid's intervals. Paths from a covariance whose diagonal is too large are rougher.
* **Calibration of the minimum**: the rank of the true minimum over the grid among the S sample
  paths' minima. When the true values are a draw from the same distribution as the paths (a
  calibrated sampler), the S + 1 values are exchangeable, so the rank is uniform on 0..S;
  over-confident paths put the true minimum below all of them (rank 0) too often, paths too rough
  or too wide put it above. A chi-square test of the rank histogram against the uniform decides.

The paths and the truth must be the same kind of quantity: the joint models here predict noisy
readings y (their covariance includes the observation noise), so the reference is the exact GP's
posterior predictive of y, and the truth is the sampled y on the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The min-rank histogram passes when the chi-square test's p-value is above this bound.
UNIFORMITY_P = 0.01


def gaussian_paths(mean: Tensor, cov: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """``num_samples`` draws from N(mean [B, M], cov [B, M, M]), float64 [S, B, M]."""
    chol = torch.linalg.cholesky(cov.double())
    eps = torch.randn((num_samples, *mean.shape, 1), generator=generator, dtype=torch.float64)
    return mean.double() + (chol @ eps).squeeze(-1)


def mean_squared_increment(paths: Tensor) -> Tensor:
    """Per-task mean over paths and grid intervals of (y_{i+1} - y_i)^2: paths [S, B, M] -> [B]."""
    return paths.double().diff(dim=-1).square().mean(dim=(0, -1))


def expected_squared_increment(mean: Tensor, cov: Tensor) -> Tensor:
    """The closed form of ``mean_squared_increment`` under N(mean [B, M], cov [B, M, M]): [B]."""
    mean, cov = mean.double(), cov.double()
    var = cov.diagonal(dim1=-2, dim2=-1)
    neighbours = cov.diagonal(offset=1, dim1=-2, dim2=-1)  # C_{i,i+1}
    expected = mean.diff(dim=-1).square() + var[..., 1:] + var[..., :-1] - 2 * neighbours
    return expected.mean(dim=-1)


def min_ranks(paths: Tensor, truth: Tensor) -> Tensor:
    """Rank (0..S) of each task's true minimum among its paths' minima: paths [S, B, M], truth [B, M] -> [B].

    The rank is the number of paths whose minimum is below the true one (ties, which have
    probability 0 for continuous values, count as not below)."""
    return (paths.amin(dim=-1) < truth.to(paths).amin(dim=-1)).sum(dim=0)


def uniformity_test(ranks: Tensor, num_bins: int) -> dict:
    """Chi-square test that ``ranks`` (integers in 0..num_bins-1) are uniform.

    Returns the histogram, the statistic, its degrees of freedom (num_bins - 1), the p-value (the
    chi-square survival function, as the regularised upper incomplete gamma function), the mean
    rank scaled to [0, 1] (0.5 when calibrated; below, the truth's minimum is too often lower than
    the paths': over-confident paths) and whether it passes (p > ``UNIFORMITY_P``). The test needs
    at least about 5 ranks per bin on average to be trusted."""
    ranks = ranks.long().flatten()
    if ranks.numel() == 0 or ranks.min() < 0 or ranks.max() >= num_bins:
        raise ValueError(f"ranks must be non-empty integers in 0..{num_bins - 1}")
    counts = torch.bincount(ranks, minlength=num_bins).double()
    expected = ranks.numel() / num_bins
    statistic = ((counts - expected).square() / expected).sum()
    dof = num_bins - 1
    p_value = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2).item()
    return {
        "histogram": counts.long().tolist(),
        "chi2": statistic.item(),
        "dof": dof,
        "p_value": p_value,
        "mean_rank": ranks.double().mean().item() / (num_bins - 1),
        "passes": p_value > UNIFORMITY_P,
    }
