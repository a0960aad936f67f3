"""Fourier features of the inputs: x itself, then sin(w_k x) and cos(w_k x) at a fixed ladder of frequencies.

Why: an MLP on a scalar x learns high frequencies slowly (spectral bias; Tancik et al. 2020, "Fourier
features let networks learn high frequency functions in low dimensional domains"). On held-out tasks of
the broad prior, the broad model without them is about 1 nat per point below the exact GP on tasks with a
periodic part, against 0.4 on the others (checkpoints/HISTORY.md, cmanp-gp-general, run 5), and it loses
most to the fitted GP on real series with many short cycles (nottem, sunspot.year). With sin and cos of x
at periods spanning the prior's, a periodic or rough function is nearly a linear read-out of the
embedding's input instead of something the MLP must first build. (Measured since: added to the trained
model, they did not narrow that gap; HISTORY.md has the runs. The option stays for such experiments.)

The ladder is fixed by two config fields, so there is nothing to store: K periods, geometric from
``periods[1]`` down to ``periods[0]``, applied to every input dimension. K = 0 is the identity (the
paper's model).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class FourierFeatures:
    """x [..., dx] -> [x | sin(w x) | cos(w x)] [..., dx (1 + 2K)]; a plain function of x, no parameters."""

    def __init__(self, dim_x: int, n_freqs: int, periods: tuple[float, float]) -> None:
        low, high = periods
        if n_freqs < 0 or not 0 < low < high:
            raise ValueError(f"need n_freqs >= 0 and 0 < min period < max period, got {n_freqs}, {periods}")
        self.dim_x = dim_x
        self.dim_out = dim_x * (1 + 2 * n_freqs)
        steps = [k / max(n_freqs - 1, 1) for k in range(n_freqs)]
        self.frequencies = [2 * math.pi / (high * (low / high) ** s) for s in steps]  # slowest first

    def __call__(self, x: Tensor) -> Tensor:
        if not self.frequencies:
            return x
        w = torch.tensor(self.frequencies, dtype=x.dtype, device=x.device)
        angles = (x.unsqueeze(-1) * w).flatten(-2)  # [..., dx * K], dimension-major
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)
