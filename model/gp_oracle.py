"""The exact-GP oracle: the true kernel and hyperparameters, float64 Cholesky.

It is the Bayes-optimal predictor for Gaussian-noise GP tasks, so it bounds what any model can score.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.data import TaskBatch


def gp_posterior(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Joint posterior predictive of the noisy targets, float64: mean [B, M] and covariance [B, M, M]."""
    xc, yc, xt = (t.double().cpu() for t in (batch.xc, batch.yc, batch.xt))
    noise_var = batch.noise_variance().view(-1, 1, 1)
    k_tt = batch.covariance(xt, xt) + noise_var * torch.eye(xt.shape[1], dtype=torch.float64)
    if xc.shape[1] == 0:
        return torch.zeros(xt.shape[:2], dtype=torch.float64), k_tt
    k_cc = batch.covariance(xc, xc) + noise_var * torch.eye(xc.shape[1], dtype=torch.float64)
    k_ct = batch.covariance(xc, xt)
    chol = torch.linalg.cholesky(k_cc)
    alpha = torch.cholesky_solve(yc, chol)  # [B, N, 1]
    mean = (k_ct.mT @ alpha).squeeze(-1)
    v = torch.linalg.solve_triangular(chol, k_ct, upper=False)  # [B, N, M]
    return mean, k_tt - v.mT @ v


def gp_predict(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Posterior predictive mean and variance of the noisy targets, float64, each [B, M]."""
    mean, cov = gp_posterior(batch)
    return mean, cov.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)


def gp_log_likelihood(batch: TaskBatch) -> Tensor:
    """Per-task mean target log-likelihood under the exact GP, float64 [B]."""
    mean, var = gp_predict(batch)
    yt = batch.yt.double().cpu().squeeze(-1)
    ll = -0.5 * (math.log(2 * math.pi) + var.log() + (yt - mean).square() / var)
    return ll.mean(-1)


def gp_joint_log_likelihood(batch: TaskBatch) -> Tensor:
    """Per-task joint target log-likelihood per target (a multivariate normal over all targets), float64 [B]."""
    mean, cov = gp_posterior(batch)
    yt = batch.yt.double().cpu().squeeze(-1)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(yt) / yt.shape[1]
