"""The waiting-time distribution of the next event: a mixture of log-normals.

``log tau ~ sum_c w_c N(loc_c, scale_c^2)`` for the time ``tau > 0`` from an anchor to the next
event (intensity-free point processes, Shchur et al. 2020). Its density, survival function and
mean are closed-form, so a sequence's log-likelihood is exact (no Monte-Carlo integral of an
intensity), and forecasts made a while after the anchor condition on the quiet time exactly:
given no event in (0, u], the residual wait has survival S(u + s) / S(u).

Shapes: parameters [..., C]; times broadcast against the batch dims [...] with one trailing
axis of m values per batch element ([..., m]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Waiting times are clamped to at least this before taking logs: a tie (two events at one time)
# scores a very low but finite density, and log S(0) = 0 keeps a finite gradient.
TINY = 1e-30
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class LogNormalMixture:
    log_weights: Tensor  # [..., C], normalised
    loc: Tensor  # [..., C], mean of log tau
    scale: Tensor  # [..., C], std of log tau (> 0)

    def double(self) -> LogNormalMixture:
        return LogNormalMixture(self.log_weights.double(), self.loc.double(), self.scale.double())

    def _z(self, log_tau: Tensor) -> Tensor:
        """log tau [..., m] -> standardised [..., m, C]."""
        return (log_tau.unsqueeze(-1) - self.loc.unsqueeze(-2)) / self.scale.unsqueeze(-2)

    def log_prob(self, tau: Tensor) -> Tensor:
        """log density of waiting times tau [..., m] -> [..., m]."""
        y = torch.log(tau.clamp_min(TINY))
        z = self._z(y)
        per_component = -0.5 * z.square() - torch.log(self.scale).unsqueeze(-2) - _LOG_SQRT_2PI
        return torch.logsumexp(self.log_weights.unsqueeze(-2) + per_component, dim=-1) - y

    def log_survival(self, tau: Tensor) -> Tensor:
        """log P(wait > tau), tau [..., m] -> [..., m]."""
        z = self._z(torch.log(tau.clamp_min(TINY)))
        return torch.logsumexp(self.log_weights.unsqueeze(-2) + torch.special.log_ndtr(-z), dim=-1)

    def quantile(self, q: Tensor, given: Tensor, iterations: int = 28) -> Tensor:
        """Residual waits s [..., m] with P(wait - given <= s | wait > given) = q (q [..., m] in [0, 1)).

        On log tau, where the survival function is monotone and smooth: ``iterations`` halvings of a
        bracket a few tens of log units wide (28: to ~1e-7), then two Newton steps kept inside the
        final bracket, each squaring the error (to float64 resolution) at the cost of one halving.
        """
        target = torch.log1p(-q) + self.log_survival(given.unsqueeze(-1))  # [..., m]
        spread = 12 * self.scale
        lo = (self.loc - spread).amin(-1, keepdim=True).expand_as(target)
        lo = torch.maximum(lo, torch.log(given.clamp_min(TINY)).unsqueeze(-1))
        hi = (self.loc + spread).amax(-1, keepdim=True).expand_as(target)
        hi = torch.maximum(hi, lo + 1)
        for _ in range(64):  # far-tail targets (given deep in the tail, q near 1): widen until bracketed
            short = self.log_survival(torch.exp(hi)) > target
            if not short.any():
                break
            hi = torch.where(short, hi + 2 * (hi - lo), hi)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = self.log_survival(torch.exp(mid)) > target  # the root lies above mid
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        y = 0.5 * (lo + hi)
        for _ in range(2):
            # d/dy log S(e^y) = -f(e^y) e^y / S(e^y): the log density of log tau minus log S.
            tau = torch.exp(y)
            log_s = self.log_survival(tau)
            slope = -torch.exp(self.log_prob(tau) + y - log_s)
            step = torch.where(slope < 0, (log_s - target) / slope, torch.zeros_like(y))
            y = torch.minimum(torch.maximum(y - step, lo), hi)
        return (torch.exp(y) - given.unsqueeze(-1)).clamp_min(0)

    def mean_residual(self, given: Tensor) -> Tensor:
        """E[wait - given | wait > given], given [...] -> [...].

        Per component E[tau 1{tau > u}] = exp(loc + scale^2 / 2) Phi((loc + scale^2 - log u) / scale).
        """
        log_u = torch.log(given).unsqueeze(-1)  # log 0 = -inf gives Phi(inf) = 1: the plain mean
        s2 = self.scale.square()
        log_partial = self.loc + 0.5 * s2 + torch.special.log_ndtr((self.loc + s2 - log_u) / self.scale)
        log_num = torch.logsumexp(self.log_weights + log_partial, dim=-1)
        log_surv = self.log_survival(given.unsqueeze(-1)).squeeze(-1)
        return torch.exp(log_num - log_surv) - given
