"""The log-normal mixture's quantile inverts its conditional survival function to float64
precision, checked against scipy's root finder on the mixture written out independently."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from model.waiting_time import LogNormalMixture


def random_mixture(batch: int, components: int, seed: int) -> LogNormalMixture:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, components, generator=g, dtype=torch.float64) * 2
    loc = torch.randn(batch, components, generator=g, dtype=torch.float64) * 2
    scale = 0.05 + torch.rand(batch, components, generator=g, dtype=torch.float64) * 2
    return LogNormalMixture(torch.log_softmax(logits, -1), loc, scale)


def survival(mix: LogNormalMixture, i: int, tau: float) -> float:
    w = np.exp(mix.log_weights[i].numpy())
    return float(np.sum(w * norm.sf((math.log(tau) - mix.loc[i].numpy()) / mix.scale[i].numpy())))


@pytest.mark.parametrize("given_quantile", [0.0, 0.5, 0.999])
def test_the_quantile_is_the_root_of_the_conditional_survival(given_quantile):
    mix = random_mixture(batch=6, components=5, seed=int(given_quantile * 1000))
    levels = torch.tensor([0.01, 0.3, 0.5, 0.9, 0.999], dtype=torch.float64).expand(6, -1)
    # "given": a quiet time already passed, from nothing to deep in the tail.
    given = torch.zeros(6, dtype=torch.float64)
    if given_quantile:
        given = mix.quantile(torch.full((6, 1), given_quantile, dtype=torch.float64), given).squeeze(-1)
    waits = mix.quantile(levels, given)
    for i in range(6):
        s_given = survival(mix, i, max(float(given[i]), 1e-300))
        for q, wait in zip(levels[i].tolist(), waits[i].tolist(), strict=True):

            def gap(log_tau: float, q: float = q, i: int = i, s_given: float = s_given) -> float:
                return survival(mix, i, math.exp(log_tau)) / s_given - (1 - q)

            lo = math.log(max(float(given[i]), 1e-300)) if given[i] > 0 else -60.0
            root = math.exp(brentq(gap, lo, 60.0, xtol=1e-14, rtol=1e-14)) - float(given[i])
            assert wait == pytest.approx(root, rel=1e-9, abs=1e-12)
