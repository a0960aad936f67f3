"""A broad GP prior for meta-training a model that is calibrated on real data.

A Neural Process learns the posterior predictive of the prior it is trained on. Trained on smooth
RBF functions with noise 0.02, it is over-confident on anything rougher or noisier. This prior
draws, per task, a kernel *structure* and its hyperparameters, so the trained network approximates
the posterior with the hyperparameters integrated out (prior-fitted networks, Müller et al. 2022).

Per task (all ranges log-uniform unless stated; the ranges and why are in ``BroadPrior``):
  * a stationary base kernel: RBF, Matern 1/2, 3/2, 5/2 or rational quadratic, with a length-scale;
  * optionally a periodic part, added to the base (trend + season) or multiplying it (a quasi-periodic
    cycle whose shape drifts, like the lynx or sunspot cycles);
  * optionally a second stationary part at its own length-scale (fast wiggles on a slow curve);
  * optionally a linear trend with a random offset (a dot-product kernel plus a constant);
  * the signal's total amplitude split between the parts by Dirichlet weights;
  * observation noise from far below to about the signal's size; a share of tasks has Student-t noise,
    and a share has heteroscedastic noise (its scale drifts smoothly with x, as in MASS/mcycle).

Sampling is exact: a float64 Cholesky of the task's covariance. ``BroadBatch`` keeps every task's
parameters, so the exact GP with the true kernel (``model.gp_oracle``) scores the same tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

STATIONARY = ("rbf", "matern12", "matern32", "matern52", "rq")
HETERO_FEATURES = 16
JITTER = 1e-6  # relative to the task's signal variance; far below the smallest noise variance
ROUGH_LENGTH = 0.15  # model units: about four sample spacings of a 120-point window mapped onto [-2, 2]


def _stationary(kind: int, d: Tensor, length: Tensor, alpha: Tensor) -> Tensor:
    """Unit-variance stationary kernel of type STATIONARY[kind] at distances d [b, n, m]."""
    r = d / length.view(-1, 1, 1)
    name = STATIONARY[kind]
    if name == "rbf":
        return torch.exp(-0.5 * r.square())
    if name == "matern12":
        return torch.exp(-r)
    if name == "matern32":
        s = math.sqrt(3.0) * r
        return (1.0 + s) * torch.exp(-s)
    if name == "matern52":
        s = math.sqrt(5.0) * r
        return (1.0 + s + s.square() / 3.0) * torch.exp(-s)
    a = alpha.view(-1, 1, 1)  # rational quadratic: a scale mixture of RBFs (multi-scale roughness)
    return (1.0 + r.square() / (2.0 * a)).pow(-a)


@dataclass
class BroadBatch:
    """One batch of tasks with their kernel parameters; points are float32, parameters float64 [B]."""

    xc: Tensor  # [B, N, dx]
    yc: Tensor  # [B, N, 1]
    xt: Tensor  # [B, M, dx]
    yt: Tensor  # [B, M, 1]
    params: dict[str, Tensor] = field(repr=False)
    student_t: Tensor = field(repr=False)  # [B] bool: the task's noise is Student-t, not Gaussian
    ft: Tensor = field(repr=False)  # [B, M, 1] float64: the noise-free function at the targets

    def to(self, device: torch.device | str) -> BroadBatch:
        moved = {k: getattr(self, k).to(device) for k in ("xc", "yc", "xt", "yt")}
        return BroadBatch(**moved, params=self.params, student_t=self.student_t, ft=self.ft)

    def readings(self, draws: int, generator: torch.Generator) -> Tensor:
        """``draws`` fresh noisy readings of each task's function at its targets, float64 [B, M, draws]:
        the same function values, new noise (to judge a forecast by its expected, not one realised, fit)."""
        B, M = self.ft.shape[:2]
        eps = standardised_noise(self.params, (B, M, draws), generator, int(self.params["dof"].max()))
        return self.ft + noise_scale(self.params, self.xt.double()).unsqueeze(-1) * eps

    @property
    def oracle_exact(self) -> Tensor:
        """[B] bool: the task's noise is Gaussian with one variance, so the exact GP is its Bayes predictor."""
        return ~(self.student_t | self.params["hetero"])

    def noise_scale(self, x: Tensor) -> Tensor:
        """Each task's noise scale at inputs x [B, n, dx], float64 [B, n] (constant but for heteroscedastic tasks)."""
        return noise_scale(self.params, x.double())

    def covariance(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The noise-free kernel k(x1, x2) of every task, float64 [B, n, m]."""
        return covariance(self.params, x1.double(), x2.double())

    def noise_variance(self) -> Tensor:
        """Each task's observation-noise variance [B] (for Student-t: its scale squared)."""
        return self.params["noise"].square()

    def families(self) -> list[str]:
        """Each task's family for a breakdown of scores: "periodic" (a periodic part, added or multiplying),
        else "rough" (the base length-scale below ``ROUGH_LENGTH``), else "smooth"."""
        p = self.params
        periodic = (p["weights"][:, 1] > 0) | p["per_multiplies"]
        return [
            "periodic" if bool(per) else "rough" if float(length) < ROUGH_LENGTH else "smooth"
            for per, length in zip(periodic, p["length"], strict=True)
        ]


def covariance(p: dict[str, Tensor], x1: Tensor, x2: Tensor) -> Tensor:
    """k(x1, x2) = w_b k_base + w_p k_per (or w_b k_base k_per) + w_2 k_second + w_l (x1.x2 / 4 + c), [B, n, m].

    Task by task, computing only the parts a task has: at N = 1,000 the kernel matrices dominate
    the cost of sampling, and most tasks have two parts or fewer.
    """
    d = torch.cdist(x1, x2)
    out = torch.empty_like(d)
    for i in range(d.shape[0]):
        w = p["weights"][i].tolist()  # variances of base, periodic, second, linear
        di = d[i : i + 1]
        k = _stationary(int(p["kind"][i]), di, p["length"][i : i + 1], p["alpha"][i : i + 1])
        if w[1] > 0 or bool(p["per_multiplies"][i]):
            per = torch.exp(
                -2.0 * torch.sin(math.pi / float(p["period"][i]) * di).square() / float(p["per_length"][i]) ** 2
            )
            # A multiplying periodic part modulates the base; an added one is a season on top of it.
            k = k * per if bool(p["per_multiplies"][i]) else k.mul_(w[0]).add_(per, alpha=w[1]).div_(w[0])
        k = k.mul_(w[0])
        if w[2] > 0:
            k.add_(_stationary(int(p["kind2"][i]), di, p["length2"][i : i + 1], p["alpha"][i : i + 1]), alpha=w[2])
        if w[3] > 0:
            k.add_((x1[i : i + 1] @ x2[i : i + 1].mT) / 4.0 + float(p["lin_offset"][i]), alpha=w[3])
        out[i] = k[0]
    return out


def standardised_noise(p: dict[str, Tensor], shape: tuple[int, int, int], g: torch.Generator, max_dof: int) -> Tensor:
    """Each task's noise at unit scale, float64 ``shape`` [B, n, k]: Gaussian, or Student-t with the
    task's integer dof (a normal over the root of a chi-square with dof terms; ``max_dof`` >= every
    dof, fixed by the prior so that the random stream does not depend on the batch)."""
    eps = torch.randn(*shape, generator=g, dtype=torch.float64)
    chi = torch.randn(*shape, max_dof, generator=g, dtype=torch.float64).square()
    chi2 = (chi * (torch.arange(max_dof) < p["dof"].view(-1, 1, 1, 1))).sum(-1)
    t = eps / torch.sqrt(chi2 / p["dof"].view(-1, 1, 1))
    return torch.where(p["student_t"].view(-1, 1, 1), t, eps)


def noise_scale(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """The noise's scale at x [B, n, dx] (float64 [B, n]): ``noise`` times exp(s h(x)) for heteroscedastic tasks.

    h is a random-Fourier-feature draw of a unit-variance RBF process (``HETERO_FEATURES`` features,
    frequencies ~ N(0, 1 / length^2)), so the envelope is smooth, its log has standard deviation s,
    and it is a deterministic function of the task's parameters (no state kept beside them).
    """
    proj = x[..., :1] * p["het_freq"].unsqueeze(1) + p["het_phase"].unsqueeze(1)  # [B, n, J]
    h = math.sqrt(2.0 / HETERO_FEATURES) * torch.cos(proj).sum(-1)  # [B, n]
    s = torch.where(p["hetero"], p["het_scale"], torch.zeros_like(p["het_scale"]))
    return p["noise"].unsqueeze(1) * torch.exp(s.unsqueeze(1) * h)


@dataclass(frozen=True)
class BroadPrior:
    """The prior's ranges, in model units (x in ``x_range``, y after the session's y transform).

    Why these ranges: a user's x span is mapped onto [-2, 2] and y is standardised by an estimate
    of its mean and standard deviation (hand-set, or ``"auto"`` from the first points). A window of
    120 readings then has a spacing of 0.034, so length-scales run from that spacing (white-ish,
    rough series) to twice the span (a near-linear drift); periods from 3 to 60 samples; the signal's
    standard deviation from 0.1 to 2 (a scale estimated from a few points is often off by 2x either
    way); the noise's standard deviation from 0.005 to 1.2 times the signal's (near-exact readings
    to noise as large as the signal: a share of pure-noise tasks teaches a model to call structure
    noise, and real series standardised by their spread are rarely noise alone). In a share of tasks
    the noise's log-scale drifts with x (standard deviation 0.3-1.2, length-scale 0.3-4): real
    readings are often quiet in one regime and loud in another (mcycle's noise sd changes tenfold).
    """

    x_range: tuple[float, float] = (-2.0, 2.0)
    dim_x: int = 1
    length_range: tuple[float, float] = (0.03, 8.0)
    amplitude_range: tuple[float, float] = (0.1, 2.0)
    noise_ratio_range: tuple[float, float] = (0.005, 1.2)  # noise sd / signal amplitude
    period_range: tuple[float, float] = (0.1, 2.0)
    per_length_range: tuple[float, float] = (0.3, 3.0)  # the periodic kernel's own smoothness
    rq_alpha_range: tuple[float, float] = (0.2, 5.0)
    lin_offset_range: tuple[float, float] = (0.01, 1.0)
    p_periodic: float = 0.35
    p_per_multiplies: float = 0.4
    p_second: float = 0.25
    p_trend: float = 0.3
    p_student_t: float = 0.15
    p_hetero: float = 0.2
    het_scale_range: tuple[float, float] = (0.3, 1.2)  # standard deviation of the log noise scale
    het_length_range: tuple[float, float] = (0.3, 4.0)
    t_dofs: tuple[int, ...] = (3, 4, 6, 10)
    # Sizes of a training batch beyond the long-context curriculum: N ~ U{3..max_context}.
    max_context: int = 100
    max_target: int = 50

    def _log_uniform(self, lo_hi: tuple[float, float], n: int, g: torch.Generator) -> Tensor:
        lo, hi = math.log(lo_hi[0]), math.log(lo_hi[1])
        return torch.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))

    def sample_params(self, batch_size: int, g: torch.Generator) -> dict[str, Tensor]:
        """Kernel structures and hyperparameters for ``batch_size`` tasks (float64 or bool/int tensors of shape [B])."""
        B = batch_size

        def coin(p: float) -> Tensor:
            return torch.rand(B, generator=g, dtype=torch.float64) < p

        has = torch.stack(
            [torch.ones(B, dtype=torch.bool), coin(self.p_periodic), coin(self.p_second), coin(self.p_trend)], 1
        )
        # Dirichlet(1, ..., 1) over the parts present: the share of the signal variance each holds.
        raw = -torch.log(torch.rand(B, 4, generator=g, dtype=torch.float64)) * has
        share = raw / raw.sum(1, keepdim=True)
        per_multiplies = has[:, 1] & coin(self.p_per_multiplies)
        # A multiplying periodic part has no variance of its own: it hands its share to the base.
        share[:, 0] += torch.where(per_multiplies, share[:, 1], torch.zeros(B, dtype=torch.float64))
        share[:, 1] = torch.where(per_multiplies, torch.zeros(B, dtype=torch.float64), share[:, 1])
        amplitude = self._log_uniform(self.amplitude_range, B, g)
        n_dof = len(self.t_dofs)
        return {
            "kind": torch.randint(len(STATIONARY), (B,), generator=g),
            "kind2": torch.randint(len(STATIONARY), (B,), generator=g),
            "length": self._log_uniform(self.length_range, B, g),
            "length2": self._log_uniform(self.length_range, B, g),
            "alpha": self._log_uniform(self.rq_alpha_range, B, g),
            "period": self._log_uniform(self.period_range, B, g),
            "per_length": self._log_uniform(self.per_length_range, B, g),
            "per_multiplies": per_multiplies,
            "lin_offset": self._log_uniform(self.lin_offset_range, B, g),
            "weights": share * amplitude.square().unsqueeze(1),
            "noise": amplitude * self._log_uniform(self.noise_ratio_range, B, g),
            "student_t": coin(self.p_student_t),
            "dof": torch.tensor(self.t_dofs, dtype=torch.float64)[torch.randint(n_dof, (B,), generator=g)],
            **self._hetero_params(B, g),
        }

    def _hetero_params(self, batch_size: int, g: torch.Generator) -> dict[str, Tensor]:
        """The heteroscedastic envelope's parameters (``noise_scale``): drawn for every task, used where ``hetero``."""
        B, J = batch_size, HETERO_FEATURES
        length = self._log_uniform(self.het_length_range, B, g)
        return {
            "hetero": torch.rand(B, generator=g, dtype=torch.float64) < self.p_hetero,
            "het_scale": self.het_scale_range[0]
            + (self.het_scale_range[1] - self.het_scale_range[0]) * torch.rand(B, generator=g, dtype=torch.float64),
            "het_freq": torch.randn(B, J, generator=g, dtype=torch.float64) / length.unsqueeze(1),
            "het_phase": 2 * math.pi * torch.rand(B, J, generator=g, dtype=torch.float64),
        }

    def sample(self, batch_size: int, num_context: int, num_target: int, generator: torch.Generator) -> BroadBatch:
        B, n, g = batch_size, num_context + num_target, generator
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(B, n, self.dim_x, generator=g, dtype=torch.float64)
        p = self.sample_params(B, g)
        cov = covariance(p, x, x)
        signal_var = p["weights"].sum(1).view(B, 1, 1)
        eye = torch.eye(n, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(cov + JITTER * signal_var * eye)
        if bool((info > 0).any()):  # a near-singular long-length-scale task: more jitter, still far below the noise
            chol = torch.linalg.cholesky(cov + 1e-4 * signal_var * eye)
        f = chol @ torch.randn(B, n, 1, generator=g, dtype=torch.float64)
        y = f + noise_scale(p, x).unsqueeze(-1) * standardised_noise(p, (B, n, 1), g, int(max(self.t_dofs)))
        x, y = x.float(), y.float()
        c = num_context
        return BroadBatch(x[:, :c], y[:, :c], x[:, c:], y[:, c:], params=p, student_t=p["student_t"], ft=f[:, c:])

    def sample_protocol(self, batch_size: int, generator: torch.Generator) -> BroadBatch:
        """The main training sizes: N ~ U{3..max_context}, M ~ U{3..max_target}, shared across the batch."""
        nc = int(torch.randint(3, self.max_context + 1, (1,), generator=generator))
        nt = int(torch.randint(3, self.max_target + 1, (1,), generator=generator))
        return self.sample(batch_size, nc, nt, generator)
