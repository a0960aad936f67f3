"""Marked point processes to train and test event models on: multivariate exponential-kernel
Hawkes processes drawn from a stationary prior, and three streams that are not in that prior.

Hawkes (the training data). M marks, baselines ``mu_k``, a branching matrix ``alpha`` and one
decay ``beta`` per sequence; the intensity of mark k is

    lambda_k(t) = mu_k + sum_{t_j < t} alpha[k, k_j] * beta * exp(-beta (t - t_j)),

so ``alpha[k, j]`` is the expected number of direct mark-k children of one mark-j event (the
kernel integrates to it; tick's ``HawkesExpKern`` uses the same convention). The process is
stationary iff the spectral radius of ``alpha`` is below 1; its mean rates are then
``(I - alpha)^-1 mu``.

The prior (``HawkesPrior``), per sequence: ``mu_k`` and ``beta`` log-uniform, a sparse random
``alpha`` (each entry nonzero with probability ``edge_prob``, Exp(1) sized) rescaled to a spectral
radius drawn uniformly in ``radius_range`` (below 1: stationary by construction). M = 3 by
default: enough for cross-excitation to matter (which mark comes next depends on the history),
few enough that the classical fit's 13 parameters are ill-determined at 10-50 events and well
determined at 1000, which is the regime a meta-learned model should win and then match.
The defaults give mean inter-event gaps of about 0.1 to 5 model time units.

Sampling is Ogata's thinning: between events a Hawkes intensity only decays, so its value just
after the current time bounds it until the next event. Streams that are not in the prior, for
the calibration tests: an inhomogeneous Poisson process (sinusoidal rate, thinning with a
constant bound), a self-correcting process (``lambda(t) = exp(eta t - gamma N(t))``, sampled by
inverting its compensator exactly), and Hawkes streams at ``rate_factor`` times the rate (mu and
beta scaled: the same process on a clock ``rate_factor`` times faster).

All of it is torch float64 with a seeded ``torch.Generator``: a batch is a deterministic
function of the generator's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from model.data.events import EventBatch


@dataclass
class HawkesParams:
    """Exponential-kernel Hawkes parameters of a batch of sequences (float64)."""

    mu: Tensor  # [B, M] baselines
    alpha: Tensor  # [B, M, M] branching matrix: alpha[k, j] = mean mark-k children of a mark-j event
    beta: Tensor  # [B] decay rate

    @property
    def num_marks(self) -> int:
        return self.mu.shape[-1]

    def spectral_radius(self) -> Tensor:
        """[B]: below 1 iff the process is stationary."""
        return torch.linalg.eigvals(self.alpha).abs().amax(-1)

    def stationary_rate(self) -> Tensor:
        """[B, M]: the mean event rate of each mark, (I - alpha)^-1 mu."""
        eye = torch.eye(self.num_marks, dtype=self.alpha.dtype)
        return torch.linalg.solve(eye - self.alpha, self.mu.unsqueeze(-1)).squeeze(-1)

    def scaled(self, rate_factor: float) -> HawkesParams:
        """The same processes on a clock ``rate_factor`` times faster (every rate times the factor)."""
        return HawkesParams(self.mu * rate_factor, self.alpha, self.beta * rate_factor)

    def sequence(self, i: int) -> HawkesParams:
        """The parameters of sequence ``i`` alone (batch of one)."""
        return HawkesParams(self.mu[i : i + 1], self.alpha[i : i + 1], self.beta[i : i + 1])

    def intensity(self, times: Tensor, marks: Tensor, at: Tensor) -> Tensor:
        """lambda_k at the times ``at`` [G] of a batch-of-one process with history (times [n], marks [n]):
        [G, M], counting only events strictly before each time (the intensity is left-continuous)."""
        if self.mu.shape[0] != 1:
            raise ValueError("intensity is for one sequence: take .sequence(i) first")
        dt = at.unsqueeze(1) - times.unsqueeze(0)  # [G, n]
        decay = torch.where(dt > 0, self.beta * torch.exp(-self.beta * dt.clamp_min(0)), torch.zeros_like(dt))
        return self.mu + decay @ self.alpha[0].T[marks]  # alpha[k, k_j] summed over events j


def _log_uniform(shape: tuple[int, ...], bounds: tuple[float, float], g: torch.Generator) -> Tensor:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64))


@dataclass(frozen=True)
class HawkesPrior:
    """The per-sequence prior over Hawkes parameters (stationary by construction)."""

    num_marks: int = 3
    mu_range: tuple[float, float] = (0.05, 0.5)
    beta_range: tuple[float, float] = (0.5, 5.0)
    radius_range: tuple[float, float] = (0.0, 0.9)
    edge_prob: float = 0.6

    def __post_init__(self) -> None:
        if self.num_marks < 1:
            raise ValueError(f"num_marks must be >= 1, got {self.num_marks}")
        if not 0 <= self.radius_range[0] <= self.radius_range[1] < 1:
            raise ValueError(f"radius_range must lie in [0, 1) for stationarity, got {self.radius_range}")
        for name in ("mu_range", "beta_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be positive and ordered, got {(lo, hi)}")

    def sample(self, batch_size: int, generator: torch.Generator) -> HawkesParams:
        B, M = batch_size, self.num_marks
        mu = _log_uniform((B, M), self.mu_range, generator)
        beta = _log_uniform((B,), self.beta_range, generator)
        lo, hi = self.radius_range
        radius = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
        raw = torch.empty(B, M, M, dtype=torch.float64).exponential_(generator=generator)
        raw = raw * (torch.rand(B, M, M, generator=generator, dtype=torch.float64) < self.edge_prob)
        raw_radius = HawkesParams(mu, raw, beta).spectral_radius()
        # A matrix without cycles has radius 0 whatever its scale: keep it as drawn, scaled down
        # to a row sum of at most the target radius (still stationary: its radius stays 0).
        nilpotent = raw_radius < 1e-9
        scale = torch.where(nilpotent, radius / raw.sum(-1).amax(-1).clamp_min(1e-12), radius / raw_radius)
        return HawkesParams(mu, raw * scale.view(B, 1, 1), beta)


# ---- simulation ---------------------------------------------------------------------------------
class _Intensity(Protocol):
    """What thinning needs of a process: its rates now, a bound valid until the next event, time
    advancing, and an event happening."""

    def rates(self) -> Tensor: ...  # [B, M] at the current time

    def bound(self) -> Tensor: ...  # [B], >= the total rate until the next event

    def advance(self, dt: Tensor) -> None: ...

    def fire(self, rows: Tensor, marks: Tensor) -> None: ...


class _HawkesIntensity:
    def __init__(self, params: HawkesParams) -> None:
        self.p = params
        self.excitation = torch.zeros_like(params.mu)  # [B, M], the sum over past events

    def rates(self) -> Tensor:
        return self.p.mu + self.excitation

    def bound(self) -> Tensor:
        return self.rates().sum(-1)  # the intensity only decays until the next event

    def advance(self, dt: Tensor) -> None:
        self.excitation = self.excitation * torch.exp(-self.p.beta * dt).unsqueeze(-1)

    def fire(self, rows: Tensor, marks: Tensor) -> None:
        jump = self.p.alpha[rows, :, marks[rows]] * self.p.beta[rows].unsqueeze(-1)  # [r, M]
        self.excitation = self.excitation.index_add(0, rows, jump)


class _SinusoidalPoisson:
    """lambda_k(t) = mu_k (1 + amplitude sin(2 pi t / period))."""

    def __init__(self, mu: Tensor, amplitude: float, period: float) -> None:
        self.mu, self.amplitude, self.period = mu, amplitude, period
        self.t = torch.zeros(mu.shape[0], dtype=torch.float64)

    def rates(self) -> Tensor:
        return self.mu * (1 + self.amplitude * torch.sin(2 * math.pi * self.t / self.period)).unsqueeze(-1)

    def bound(self) -> Tensor:
        return self.mu.sum(-1) * (1 + self.amplitude)

    def advance(self, dt: Tensor) -> None:
        self.t = self.t + dt

    def fire(self, rows: Tensor, marks: Tensor) -> None:
        pass


def _thin(process: _Intensity, end: Tensor, max_events: int, g: torch.Generator) -> EventBatch:
    """Ogata's thinning on [0, end_b] per sequence, at most ``max_events`` events each.

    Every sequence draws its random numbers on every round (finished ones too), so the batch is
    a deterministic function of the generator. A sequence that reaches ``max_events`` is observed
    up to its last event (its ``end`` becomes that event's time).
    """
    B = end.shape[0]
    t = torch.zeros(B, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.int64)
    times = torch.zeros(B, max_events, dtype=torch.float64)
    marks = torch.zeros(B, max_events, dtype=torch.int64)
    active = count < max_events
    while active.any():
        bound = process.bound()
        dt = torch.empty(B, dtype=torch.float64).exponential_(generator=g) / bound
        process.advance(dt)
        t = t + dt
        rates = process.rates()
        total = rates.sum(-1)
        accept = torch.rand(B, generator=g, dtype=torch.float64) * bound <= total
        pick = torch.rand(B, generator=g, dtype=torch.float64) * total
        mark = (rates.cumsum(-1) < pick.unsqueeze(-1)).sum(-1).clamp_max(rates.shape[-1] - 1)
        active = active & (t <= end)
        rows = (accept & active).nonzero().squeeze(-1)
        times[rows, count[rows]] = t[rows]
        marks[rows, count[rows]] = mark[rows]
        count[rows] += 1
        process.fire(rows, mark)
        active = active & (count < max_events)
    return _trimmed(times, marks, count, end)


def _trimmed(times: Tensor, marks: Tensor, count: Tensor, end: Tensor) -> EventBatch:
    """The batch cut to its longest sequence; a sequence that filled its buffer ends at its last event."""
    cap = times.shape[1]
    last = times.gather(1, (count - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    end = torch.where(count >= cap, last, end)
    n = max(1, int(count.max()))
    return EventBatch(times[:, :n].contiguous(), marks[:, :n].contiguous(), count, end)


def simulate_hawkes(params: HawkesParams, end: Tensor, max_events: int, generator: torch.Generator) -> EventBatch:
    """Hawkes sequences on [0, end_b] (end [B]); the batch carries ``params`` for the oracle."""
    batch = _thin(_HawkesIntensity(params), end.to(torch.float64), max_events, generator)
    batch.params = params
    return batch


def simulate_sinusoidal_poisson(
    mu: Tensor, amplitude: float, period: float, end: Tensor, max_events: int, generator: torch.Generator
) -> EventBatch:
    """Inhomogeneous Poisson sequences: rate mu_k (1 + amplitude sin(2 pi t / period)), mu [B, M]."""
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude must be in [0, 1] (rates stay non-negative), got {amplitude}")
    return _thin(_SinusoidalPoisson(mu, amplitude, period), end.to(torch.float64), max_events, generator)


def simulate_self_correcting(
    eta: float, gamma: float, mark_probs: Tensor, end: Tensor, max_events: int, generator: torch.Generator
) -> EventBatch:
    """Self-correcting sequences: total rate exp(eta t - gamma N(t)), marks i.i.d. ~ mark_probs [M].

    After an event at t with N events so far the compensator over the next s time units is
    exp(eta t - gamma N) (exp(eta s) - 1) / eta, which inverts in closed form: no thinning.
    """
    B = end.shape[0]
    end = end.to(torch.float64)
    t = torch.zeros(B, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.int64)
    times = torch.zeros(B, max_events, dtype=torch.float64)
    marks = torch.zeros(B, max_events, dtype=torch.int64)
    active = torch.ones(B, dtype=torch.bool)
    while active.any():
        e = torch.empty(B, dtype=torch.float64).exponential_(generator=generator)
        log_rate = eta * t - gamma * count  # bounded: the process corrects itself
        t = t + torch.log1p(eta * e * torch.exp(-log_rate)) / eta
        mark = torch.multinomial(mark_probs.to(torch.float64).expand(B, -1), 1, generator=generator).squeeze(-1)
        active = active & (t <= end)
        rows = active.nonzero().squeeze(-1)
        times[rows, count[rows]] = t[rows]
        marks[rows, count[rows]] = mark[rows]
        count[rows] += 1
        active = active & (count < max_events)
    return _trimmed(times, marks, count, end)


# ---- data sources ---------------------------------------------------------------------------------
class EventSource:
    """A source of event-sequence batches (``model.data.TrainingSource``): ``sample_batch`` for
    training, ``heldout_batch`` (or ``heldout``) for a fixed held-out set.

    Per batch a target count n is drawn log-uniformly in ``num_events``; each sequence is observed
    on a window whose expected number of events is n (capped at 4 n), so lengths vary within a
    batch and the likelihood includes each window's survival term. With ``scored_events`` a
    training batch marks that many random events per sequence for the loss (``EventBatch.scored``);
    held-out batches score every event.
    """

    def __init__(self, num_events: tuple[int, int] = (10, 200), scored_events: int | None = None) -> None:
        lo, hi = num_events
        if not 1 <= lo <= hi:
            raise ValueError(f"num_events must be 1 <= lo <= hi, got {num_events}")
        if scored_events is not None and scored_events < 1:
            raise ValueError(f"scored_events must be >= 1, got {scored_events}")
        self.num_events = (int(lo), int(hi))
        self.scored_events = scored_events

    def _draw(self, batch_size: int, generator: torch.Generator) -> EventBatch:
        n = int(round(float(_log_uniform((), self.num_events, generator))))
        return self.sample_sized(batch_size, n, generator)

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> EventBatch:
        batch = self._draw(batch_size, generator)
        return batch if self.scored_events is None else batch.with_scored(self.scored_events, generator)

    def heldout_batch(self, batch_size: int, generator: torch.Generator) -> EventBatch:
        return self._draw(batch_size, generator)

    def sample_sized(self, batch_size: int, num_events: int, generator: torch.Generator) -> EventBatch:
        """A batch whose windows hold ``num_events`` events in expectation."""
        raise NotImplementedError

    def heldout(self, num_batches: int, batch_size: int, seed: int = 12345) -> list[EventBatch]:
        """A fixed held-out set: the same batches for the same seed."""
        g = torch.Generator().manual_seed(seed)
        return [self.heldout_batch(batch_size, g) for _ in range(num_batches)]


class HawkesSource(EventSource):
    """Sequences of Hawkes processes from ``HawkesPrior``, optionally on a ``rate_factor``-times faster clock."""

    def __init__(
        self,
        num_events: tuple[int, int] = (10, 200),
        rate_factor: float = 1.0,
        scored_events: int | None = None,
        **prior: object,
    ) -> None:
        super().__init__(num_events, scored_events)
        self.prior = HawkesPrior(**{k: tuple(v) if isinstance(v, list) else v for k, v in prior.items()})  # type: ignore[arg-type]
        self.rate_factor = rate_factor

    def sample_sized(self, batch_size: int, num_events: int, generator: torch.Generator) -> EventBatch:
        params = self.prior.sample(batch_size, generator).scaled(self.rate_factor)
        end = num_events / params.stationary_rate().sum(-1)
        return simulate_hawkes(params, end, 4 * num_events, generator)


class SinusoidalPoissonSource(EventSource):
    """Inhomogeneous Poisson sequences, mean rates from the Hawkes prior's baselines, period in model units."""

    def __init__(
        self, num_events: tuple[int, int] = (10, 200), num_marks: int = 3, amplitude: float = 0.9, period: float = 20.0
    ) -> None:
        super().__init__(num_events)
        self.mu_range = HawkesPrior().mu_range
        self.num_marks, self.amplitude, self.period = num_marks, amplitude, period

    def sample_sized(self, batch_size: int, num_events: int, generator: torch.Generator) -> EventBatch:
        mu = _log_uniform((batch_size, self.num_marks), self.mu_range, generator)
        end = num_events / mu.sum(-1)
        return simulate_sinusoidal_poisson(mu, self.amplitude, self.period, end, 4 * num_events, generator)


class SelfCorrectingSource(EventSource):
    """Self-correcting sequences (about eta / gamma events per time unit, marks uniform)."""

    def __init__(
        self, num_events: tuple[int, int] = (10, 200), num_marks: int = 3, eta: float = 1.0, gamma: float = 1.0
    ) -> None:
        super().__init__(num_events)
        self.num_marks, self.eta, self.gamma = num_marks, eta, gamma

    def sample_sized(self, batch_size: int, num_events: int, generator: torch.Generator) -> EventBatch:
        end = torch.full((batch_size,), num_events * self.gamma / self.eta, dtype=torch.float64)
        probs = torch.full((self.num_marks,), 1.0 / self.num_marks)
        return simulate_self_correcting(self.eta, self.gamma, probs, end, 4 * num_events, generator)


PROCESSES: dict[str, type[EventSource]] = {
    "hawkes": HawkesSource,
    "sinusoidal_poisson": SinusoidalPoissonSource,
    "self_correcting": SelfCorrectingSource,
}


def build_source(process: str = "hawkes", **options: object) -> EventSource:
    """The event source a config's ``"data"`` section names (``{"kind": "hawkes", "process": ...}``)."""
    if process not in PROCESSES:
        raise ValueError(f"unknown event process {process!r}; choose from {sorted(PROCESSES)}")
    if "num_events" in options:
        options["num_events"] = tuple(options["num_events"])  # type: ignore[arg-type]
    return PROCESSES[process](**options)  # type: ignore[arg-type]
