"""GP meta-regression tasks, as in the benchmark protocol (docs/MODEL.md, section 6).

Each task draws its own kernel hyperparameters; a batch shares its context and target sizes.
Sampling is exact (float64 Cholesky of the joint covariance of context and targets).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Kernel = Literal["rbf", "matern", "periodic"]
Noise = Literal["gaussian", "student_t"]
KERNELS: tuple[Kernel, ...] = ("rbf", "matern", "periodic")
NOISE_STD = 0.02
JITTER = 1e-8


@dataclass
class GPBatch:
    """One batch of tasks. Points are float32; hyperparameters are kept for the exact-GP oracle."""

    xc: Tensor  # [B, N, dx]
    yc: Tensor  # [B, N, 1]
    xt: Tensor  # [B, M, dx]
    yt: Tensor  # [B, M, 1]
    length: Tensor  # [B]
    scale: Tensor  # [B]
    period: Tensor  # [B] (used by the periodic kernel only)
    kernel: Kernel
    noise_std: float = NOISE_STD
    ft: Tensor | None = None  # [B, M, 1] float64: the noise-free function at the targets
    noise: Noise = "gaussian"
    t_df: float = 2.1

    def to(self, device: torch.device | str) -> GPBatch:
        moved = {k: getattr(self, k).to(device) for k in ("xc", "yc", "xt", "yt")}
        return dataclasses.replace(self, **moved)

    def readings(self, draws: int, generator: torch.Generator) -> Tensor:
        """``draws`` fresh noisy readings of each task's function at its targets, float64 [B, M, draws]:
        the same function values, new noise (to judge a forecast by its expected, not one realised, fit)."""
        if self.ft is None:
            raise ValueError("this batch was built without its noise-free targets")
        B, M = self.ft.shape[:2]
        return self.ft + self.noise_std * standardised_noise(self.noise, self.t_df, (B, M, draws), generator)

    def covariance(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The noise-free kernel k(x1, x2) of every task, float64 [B, n, m]."""
        return kernel_matrix(self.kernel, x1.double(), x2.double(), self.length, self.scale, self.period)

    def noise_variance(self) -> Tensor:
        """Each task's observation-noise variance [B]."""
        return torch.full(self.length.shape, self.noise_std**2, dtype=torch.float64)


def standardised_noise(noise: Noise, t_df: float, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Unit-scale noise, float64 ``shape``: Gaussian, or Student-t with ``t_df`` degrees of freedom
    (a normal over the square root of a scaled chi-square)."""
    eps = torch.randn(*shape, generator=g, dtype=torch.float64)
    if noise == "gaussian":
        return eps
    chi2 = 2.0 * gamma_draws(t_df / 2, shape, g)
    return eps / torch.sqrt(chi2 / t_df)


def gamma_draws(concentration: float, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Gamma(concentration, 1) draws, float64 ``shape``, from the generator ``g`` alone (torch's own
    gamma samplers take no generator, so tasks would not follow the seed). Marsaglia and Tsang's
    squeeze-free rejection method; below concentration 1, a draw at concentration + 1 times U^(1/c)."""
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    a = concentration + 1 if concentration < 1 else concentration
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(shape, dtype=torch.float64).flatten()
    todo = torch.arange(out.numel())
    while len(todo):  # each round accepts over 95% of the candidates
        x = torch.randn(len(todo), generator=g, dtype=torch.float64)
        u = torch.rand(len(todo), generator=g, dtype=torch.float64)
        v = (1 + c * x) ** 3
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[accept]] = d * v[accept]
        todo = todo[~accept]
    if concentration < 1:
        out *= torch.rand(out.numel(), generator=g, dtype=torch.float64) ** (1 / concentration)
    return out.view(shape)


def kernel_matrix(kernel: Kernel, x1: Tensor, x2: Tensor, length: Tensor, scale: Tensor, period: Tensor) -> Tensor:
    """k(x1, x2) for a batch: x1 [B, n, dx], x2 [B, m, dx], hyperparameters [B] -> [B, n, m]."""
    d = torch.cdist(x1, x2)
    length, scale, period = (t.to(d).view(-1, 1, 1) for t in (length, scale, period))
    if kernel == "rbf":
        k = torch.exp(-0.5 * (d / length) ** 2)
    elif kernel == "matern":
        r = math.sqrt(5.0) * d / length
        k = (1.0 + r + r**2 / 3.0) * torch.exp(-r)
    elif kernel == "periodic":
        k = torch.exp(-2.0 * torch.sin(math.pi * d / period) ** 2 / length**2)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
    return scale**2 * k


class GPSampler:
    """Draws GP tasks: x ~ U[x_range]^dx, y = f(x) + noise, f ~ GP(0, k) with per-task hyperparameters."""

    def __init__(
        self,
        kernel: Kernel = "rbf",
        dim_x: int = 1,
        x_range: tuple[float, float] = (-2.0, 2.0),
        length_range: tuple[float, float] = (0.1, 0.6),
        scale_range: tuple[float, float] = (0.1, 1.0),
        period_range: tuple[float, float] = (0.1, 0.5),
        noise_std: float = NOISE_STD,
        noise: Noise = "gaussian",
        t_df: float = 2.1,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
        if noise not in ("gaussian", "student_t"):
            raise ValueError(f"unknown noise {noise!r}")
        self.kernel, self.dim_x, self.x_range = kernel, dim_x, x_range
        self.length_range, self.scale_range, self.period_range = length_range, scale_range, period_range
        self.noise_std, self.noise, self.t_df = noise_std, noise, t_df

    def _uniform(self, lo_hi: tuple[float, float], shape: tuple[int, ...], g: torch.Generator) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)

    def sample(self, batch_size: int, num_context: int, num_target: int, generator: torch.Generator) -> GPBatch:
        x = self._uniform(self.x_range, (batch_size, num_context + num_target, self.dim_x), generator)
        return self.sample_at(x, num_context, generator)

    def sample_at(self, x: Tensor, num_context: int, generator: torch.Generator) -> GPBatch:
        """Tasks at given inputs x [B, n, dx] (float64), the first ``num_context`` of them the context:
        hyperparameters, f and noise drawn as in ``sample`` (which draws x, then calls this), so a
        caller can put the targets on a grid of its own."""
        B, n = x.shape[:2]
        length = self._uniform(self.length_range, (B,), generator)
        scale = self._uniform(self.scale_range, (B,), generator)
        period = self._uniform(self.period_range, (B,), generator)
        cov = kernel_matrix(self.kernel, x, x, length, scale, period)
        cov = cov + JITTER * torch.eye(n, dtype=torch.float64)
        f = torch.linalg.cholesky(cov) @ torch.randn(B, n, 1, generator=generator, dtype=torch.float64)
        y = f + self.noise_std * standardised_noise(self.noise, self.t_df, (B, n, 1), generator)
        x, y = x.float(), y.float()
        return GPBatch(
            x[:, :num_context],
            y[:, :num_context],
            x[:, num_context:],
            y[:, num_context:],
            length,
            scale,
            period,
            self.kernel,
            self.noise_std,
            f[:, num_context:],
            self.noise,
            self.t_df,
        )

    def sample_protocol(
        self, batch_size: int, generator: torch.Generator, max_context: int = 46, max_total: int = 49
    ) -> GPBatch:
        """The paper's sizes: N ~ U{3..46}, M ~ U{3..49-N}, shared across the batch."""
        nc = int(torch.randint(3, max_context + 1, (1,), generator=generator))
        nt = int(torch.randint(3, max_total - nc + 1, (1,), generator=generator))
        return self.sample(batch_size, nc, nt, generator)
