"""CMHP: the Constant Memory Hawkes Process, an event-stream model on the shared CMAB encoder.

A stream is a set of events ``(t, k)``: a time and a mark in 0..M-1. After any history the model
gives the distribution of the next event: its waiting time (a log-normal mixture,
``model.waiting_time``) and its mark. Shapes: B = batch, n = events, K, H, L, Dh as in ``model.cmab``.

Time, exactly and in constant memory. An event's score in the first cross-attention of each
block, head and latent is linear in its time:

    score_j = q . key(k_j) + w t_j,        w = exp(log_rate) > 0, one per block, head and latent,

so, read at the time ``a`` of the latest event, the softmax weighs event j by
``exp(q . key(k_j) - w (a - t_j))``: a bank of exponential Hawkes kernels with learned decays.
The log normaliser ``log sum_j exp(q . key(k_j) - w (a - t_j))`` is a log excitation level
(``log sum alpha e^{-beta dt}``), and the learned null point merged in when latents are derived
plays the baseline: the more recent excitation, the more the data outweigh it.
Adding a constant to every score changes no softmax weight, so the state keeps its accumulators
relative to its latest time (``model.event_state``): they stay O(1) however large t grows, and
moving the reference by dt is ``log_norm -= w dt``, exact and O(1). Update and merge shift to the
later reference, then combine as in ``model.state``: events may come one at a time, in chunks,
late (before the latest event), or from merged partial states, with the same result.
Values depend on the mark only; nothing reads an absolute time, so a stream at t = 10^6
forecasts as the same stream at t = 0.

The next event. Latents are derived at the anchor ``a`` (the latest event; ``now`` for an empty
history, whose clock starts at the forecast). One learned query reads them through the decoder,
and ``model.heads.NextEventHead`` gives the waiting-time mixture and the mark probabilities.
A forecast at ``now`` after the anchor conditions on the quiet time u = now - a exactly
(survival S(u + s) / S(u)), so forecasts at any time and the likelihood are one point-process
model; the latents are derived once per state and cached. The log-likelihood of a sequence is
the sum of each event's log-density given the events before it, plus the survival of the
window's quiet end: exact, no Monte-Carlo integral. Marks are independent of the wait given the
history (a limit: for a Hawkes process the next mark's odds drift as excitation decays).

Training (``loss``) scores every event against the state of the events before it in one
differentiable pass: chunks of C events attend causally within the chunk, and a running state
of earlier chunks (the same shift-and-merge algebra) enters as one extra pseudo-event, so
memory is O(N C), not O(N^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

from model.cmab import CMABEncoder
from model.data.events import EventBatch
from model.decoder import Decoder
from model.event_spectrum import EventSpectrum
from model.event_state import CMHPState
from model.heads import NextEventHead
from model.identity import FingerprintedModel, check_owner
from model.state import CMANPState, add_point, merge_accumulators
from model.waiting_time import LogNormalMixture

# A finite "log 0" for the training pass: an empty prefix with -inf scores would give its
# logsumexp and logaddexp NaN gradients; exp(-1e30 - c) is exactly 0 in float32 for any real c.
_EMPTY = -1e30


@dataclass(frozen=True)
class CMHPConfig:
    num_marks: int = 3
    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 4
    n_latents: int = 32
    ff_width: int = 128
    components: int = 8  # log-normal components of the waiting-time density
    min_log_std: float = 0.05  # floor of each component's std of log tau
    # Initial decay rates w (per model time unit), log-spaced over each head's latents: from
    # counts over hundreds of events (rate estimates) to the last few events (bursts).
    rate_range: tuple[float, float] = (0.01, 10.0)
    # Damped Fourier sums of the history (model.event_spectrum): the pairwise timing the CMAB sums
    # cannot hold. 0 bands: none. Frequencies log-spaced over spectrum_range (radians per model
    # time unit), spectrum_per_band of them averaged per feature, each at every memory Q / omega.
    spectrum_bands: int = 0
    spectrum_per_band: int = 8
    spectrum_range: tuple[float, float] = (0.01, 31.6)
    spectrum_qualities: tuple[float, ...] = (32.0, 128.0)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("num_marks", "d_model", "n_heads", "n_blocks", "n_latents", "ff_width", "components"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.min_log_std > 0:
            raise ValueError(f"min_log_std must be > 0, got {self.min_log_std}")
        lo, hi = (float(v) for v in self.rate_range)
        if not 0 < lo <= hi:
            raise ValueError(f"rate_range must be positive and ordered, got {self.rate_range}")
        object.__setattr__(self, "rate_range", (lo, hi))
        if self.spectrum_bands < 0 or self.spectrum_per_band < 1:
            raise ValueError("spectrum_bands must be >= 0 and spectrum_per_band >= 1")
        lo, hi = (float(v) for v in self.spectrum_range)
        qualities = tuple(float(q) for q in self.spectrum_qualities)
        if not (0 < lo <= hi and qualities and all(q > 0 for q in qualities)):
            raise ValueError(f"spectrum_range must be positive and ordered and spectrum_qualities positive, got {self}")
        object.__setattr__(self, "spectrum_range", (lo, hi))
        object.__setattr__(self, "spectrum_qualities", qualities)
        if not self.spectrum_bands:  # no spectrum: its options would be dropped from the saved config
            changed = [
                f.name for f in fields(self) if f.name.startswith("spectrum_") and getattr(self, f.name) != f.default
            ]
            if changed:
                raise ValueError(f"{changed} set without spectrum_bands: they configure a spectrum")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("rate_range", "spectrum_range", "spectrum_qualities"):
            d[name] = list(getattr(self, name))
        if not self.spectrum_bands:  # a model without a spectrum keeps the config (and fingerprint) it had before
            d = {k: v for k, v in d.items() if not k.startswith("spectrum_")}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CMHPConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class NextEvent:
    """A forecast at ``now`` [B] (float64): waiting times are counted from ``now``."""

    now: Tensor  # [B] float64
    quantiles: Tensor  # [B, Q] float64: waiting-time quantiles
    mean: Tensor  # [B] float64: mean waiting time
    mark_probs: Tensor  # [B, M]


@dataclass
class EventSamples:
    """Sampled future sequences in (now, now + horizon], padded to the longest."""

    times: Tensor  # [B, S, E] float64, NaN after each sequence's count
    marks: Tensor  # [B, S, E] int64, -1 after each sequence's count
    counts: Tensor  # [B, S] int64
    truncated: Tensor  # [B, S] bool: stopped at max_events before the horizon


class CMHP(FingerprintedModel):
    """Event streams: update/condition/merge an exact constant-size state, forecast and sample the next events."""

    architecture: ClassVar[str] = "cmhp"
    session_kind: ClassVar[str] = "events"
    trains_in_bf16: ClassVar[bool] = False  # the time-linear scores need float32's range: not validated in bf16
    can_sample: ClassVar[bool] = True
    joint_block_size: ClassVar[int | None] = None

    def __init__(self, cfg: CMHPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, K, H, L = cfg.d_model, cfg.n_blocks, cfg.n_heads, cfg.n_latents
        self.mark_embed = nn.Embedding(cfg.num_marks, D)
        self.encoder = CMABEncoder(D, H, K, L, cfg.ff_width)
        lo, hi = cfg.rate_range
        self.log_rate = nn.Parameter(torch.linspace(math.log(lo), math.log(hi), L).expand(K, H, L).clone())
        self.next_query = nn.Parameter(torch.randn(1, 1, D))
        self.decoder = Decoder(K, D, H, cfg.ff_width)
        self.head = NextEventHead(D, cfg.components, cfg.num_marks, cfg.min_log_std)
        self.spectrum: EventSpectrum | None = None
        self.spectrum_proj: nn.Sequential | None = None
        if cfg.spectrum_bands:
            self.spectrum = EventSpectrum(
                cfg.spectrum_bands, cfg.spectrum_per_band, cfg.spectrum_range, cfg.spectrum_qualities
            )
            # Added to the next-event query's encoding. The last layer starts at zero, so a model
            # warm-started from one without a spectrum begins as that model and learns to use it.
            self.spectrum_proj = nn.Sequential(nn.Linear(self.spectrum.num_features, D), nn.GELU(), nn.Linear(D, D))
            nn.init.zeros_(self.spectrum_proj[-1].weight)
            nn.init.zeros_(self.spectrum_proj[-1].bias)
        self._tables: tuple[Tensor, Tensor, Tensor] | None = None  # see _weights

    # Identity (fingerprint, train, load_state_dict, device) comes from FingerprintedModel.
    def train(self, mode: bool = True) -> CMHP:
        self._tables = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - nn.Module's signature
        self._tables = None
        return super().load_state_dict(*args, **kwargs)

    def rates(self) -> Tensor:
        """The decay rates w [K, H, L] (per model time unit)."""
        return self._weights()[2]

    def _weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """Mark scores [M, K, H, L], mark values [M, K, H, Dh] and rates [K, H, L].

        Marks are discrete, so the data embedding and key/value projections run on M rows once,
        and an event's contribution is a lookup plus its time term. They depend on the weights
        alone: cached in eval mode without grad (most of a one-event update otherwise), dropped
        by ``train()`` and ``load_state_dict``.
        """
        if self._tables is not None and not (self.training or torch.is_grad_enabled()):
            return self._tables
        scores, values = self.encoder.data_attn.point_scores_values(self.mark_embed.weight)
        tables = (scores, values, self.log_rate.exp())
        if not (self.training or torch.is_grad_enabled()):
            self._tables = tables
        return tables

    # ---- validation -------------------------------------------------------------------------
    def _marks(self, k: Tensor | Sequence, name: str = "k") -> Tensor:
        """Integer marks in 0..M-1 as int64 on the model's device."""
        k = torch.as_tensor(k, device=self.device)
        if k.is_floating_point():
            if not (torch.isfinite(k).all() and (k == k.round()).all()):
                raise ValueError(f"{name} must hold integer marks")
        elif k.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            raise ValueError(f"{name} must hold integer marks, got dtype {k.dtype}")
        k = k.long()
        bad = (k < 0) | (k >= self.cfg.num_marks)
        if bad.any():
            raise ValueError(
                f"unknown mark {int(k[bad][0])} in {name}: the model has marks 0..{self.cfg.num_marks - 1}"
            )
        return k

    def _times(self, t: Tensor | Sequence | float, name: str) -> Tensor:
        """Finite times as float64 on the model's device (absolute times need float64's resolution)."""
        # Python numbers and lists become float64 directly: through float32 a time of 10^6 would
        # lose its sub-second digits before any check.
        t = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
        t = t.to(self.device, torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf")
        return t

    def _events(self, t: Tensor, k: Tensor, batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Checked events: times [B, n] (float64, non-decreasing) and marks [B, n] (int64)."""
        t = self._times(t, "t")
        if t.ndim != 2:
            raise ValueError(f"t must have shape [batch, events], got {tuple(t.shape)}")
        k = self._marks(k)
        if k.shape != t.shape:
            raise ValueError(f"t has shape {tuple(t.shape)} but k has {tuple(k.shape)}")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"t has batch size {t.shape[0]}, the state has {batch}")
        if t.shape[1] == 0:
            raise ValueError("no events")
        if (t.diff(dim=1) < 0).any():
            raise ValueError("event times must be sorted (non-decreasing) within a chunk")
        return t, k

    def check_state(self, state: CMHPState, name: str = "state") -> None:
        """Raise ValueError unless ``state`` is a CMHPState built by this model (with its spectrum, if any)."""
        check_owner(state, CMHPState, self.fingerprint, name)
        expected = None if self.spectrum is None else (state.batch_size, 3, self.spectrum.width)
        got = None if state.spectrum is None else tuple(state.spectrum.shape)
        if got != expected:
            raise ValueError(f"{name} has spectral sums of shape {got}, this model keeps {expected}")

    def _now(self, state: CMHPState, now: Tensor | float | None) -> Tensor:
        """The forecast time [B] (float64): ``now``, by default the latest event (0 for an empty history)."""
        last = state.last_time
        if now is None:
            return torch.where(torch.isfinite(last), last, torch.zeros_like(last))
        now = self._times(now, "now")
        if now.ndim > 1 or now.numel() not in (1, state.batch_size):
            raise ValueError(f"now must be a number or have shape [{state.batch_size}], got {tuple(now.shape)}")
        now = now.reshape(-1).expand(state.batch_size).clone()
        early = now < last
        if early.any():
            i = int(early.nonzero()[0])
            raise ValueError(
                f"now={float(now[i])} is before the last event at {float(last[i])}: "
                "forecasts are made at or after the last event"
            )
        return now

    # ---- the state algebra ------------------------------------------------------------------
    def empty_state(self, batch_size: int = 1) -> CMHPState:
        """The state of an empty history; its forecasts are the model's prior."""
        acc = self.encoder.empty(batch_size, self.fingerprint)
        spectrum = None if self.spectrum is None else self.spectrum.empty(batch_size)
        return CMHPState(acc, torch.full((batch_size,), -math.inf, dtype=torch.float64, device=self.device), spectrum)

    def _shift(self, log_norm: Tensor, dt: Tensor) -> Tensor:
        """Accumulators [B, K, H, L] re-referenced dt [B] (float64, >= 0) later: log_norm - w dt."""
        return log_norm - self.rates() * dt.to(log_norm.dtype).view(-1, 1, 1, 1)

    @staticmethod
    def _gap(later: Tensor, earlier: Tensor) -> Tensor:
        """later - earlier [B], 0 where ``earlier`` is -inf (an empty state has nothing to shift)."""
        return torch.where(torch.isfinite(earlier), later - earlier, torch.zeros_like(later))

    def _fold(self, state: CMHPState, t: Tensor, k: Tensor) -> CMHPState:
        """Checked events t [B, n] (sorted), k [B, n] folded into the state; cost O(n)."""
        scores, values, w = self._weights()
        ref = torch.maximum(state.last_time, t[:, -1])  # [B] the new reference time
        log_norm = self._shift(state.acc.log_norm, self._gap(ref, state.last_time))
        rel = (t - ref.unsqueeze(1)).to(scores.dtype)  # [B, n] <= 0: small however large t is
        s = scores[k] + w * rel.view(*rel.shape, 1, 1, 1)  # [B, n, K, H, L]
        v = values[k]  # [B, n, K, H, Dh]
        if t.shape[1] == 1:
            log_norm, value_sum = add_point(log_norm, state.acc.value_sum, s[:, 0], v[:, 0].unsqueeze(3))
        else:
            s = s.permute(0, 2, 3, 4, 1)  # [B, K, H, L, n]
            chunk_norm = torch.logsumexp(s, dim=-1)
            chunk_sum = torch.einsum("bkhln,bnkhd->bkhld", torch.exp(s - chunk_norm.unsqueeze(-1)), v)
            log_norm, value_sum = merge_accumulators(log_norm, state.acc.value_sum, chunk_norm, chunk_sum)
        n = t.shape[1]
        acc = CMANPState(log_norm, value_sum, state.acc.num_points + n, state.fingerprint, state.acc.version + 1)
        spectrum = None
        if self.spectrum is not None:
            moved = self.spectrum.shift(state.spectrum, self._gap(ref, state.last_time))
            spectrum = self.spectrum.add(moved, ref.unsqueeze(1) - t)
        return CMHPState(acc, ref, spectrum)

    def update(self, state: CMHPState, t: Tensor, k: Tensor) -> CMHPState:
        """Fold events (t [B, n], k [B, n]; times sorted within the chunk) into the state; cost O(n), not O(N).

        The state is a set of events: a chunk may predate events already folded in (the service
        decides whether late events are allowed); the result is the same in any order.
        """
        self.check_state(state)
        return self._fold(state, *self._events(t, k, state.batch_size))

    def condition(self, t: Tensor, k: Tensor, chunk_size: int | None = None) -> CMHPState:
        """Same as update(empty_state, t, k); with chunk_size, peak memory does not grow with n."""
        t, k = self._events(t, k)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        state = self.empty_state(t.shape[0])
        step = chunk_size or t.shape[1]
        for i in range(0, t.shape[1], step):
            state = self._fold(state, t[:, i : i + step], k[:, i : i + step])
        return state

    def merge(self, a: CMHPState, b: CMHPState) -> CMHPState:
        """The state of the union of both event sets (exact; associative and commutative)."""
        self.check_state(a, "a")
        self.check_state(b, "b")
        if a.batch_size != b.batch_size:
            raise ValueError(f"cannot merge states of batch sizes {a.batch_size} and {b.batch_size}")
        ref = torch.maximum(a.last_time, b.last_time)
        c, o = merge_accumulators(
            self._shift(a.acc.log_norm, self._gap(ref, a.last_time)),
            a.acc.value_sum,
            self._shift(b.acc.log_norm, self._gap(ref, b.last_time)),
            b.acc.value_sum,
        )
        acc = CMANPState(c, o, a.num_events + b.num_events, a.fingerprint, a.acc.version + b.acc.version)
        spectrum = None
        if self.spectrum is not None:
            spectrum = self.spectrum.shift(a.spectrum, self._gap(ref, a.last_time)) + self.spectrum.shift(
                b.spectrum, self._gap(ref, b.last_time)
            )
        return CMHPState(acc, ref, spectrum)

    def state_from_bytes(self, blob: bytes) -> CMHPState:
        """Parse and validate a blob from ``CMHPState.to_bytes`` made by this model."""
        width = 0 if self.spectrum is None else self.spectrum.width
        return CMHPState.from_bytes(blob, self.fingerprint, self.encoder.state_dims, self.device, width)

    # ---- the next event -----------------------------------------------------------------------
    def latents(self, state: CMHPState) -> Tensor:
        """The encoder's latents [K, B, L, D] at the state's latest event, derived once per state object."""
        self.check_state(state)
        grad = torch.is_grad_enabled()
        cached = None if grad else state.acc.derived(self.fingerprint)
        if cached is not None:
            return cached
        latents = self.encoder.derive(state.acc)
        if not grad:  # never pin an autograd graph to a state object
            state.acc.keep_derived(self.fingerprint, latents)
        return latents

    def _decode(self, latents: Tensor, spectrum: Tensor | None) -> tuple[LogNormalMixture, Tensor]:
        """Latents [K, B, L, D] and spectral sums [B, 3, F] (None without a spectrum) -> waiting-time
        mixture [B, C] and mark log-probabilities [B, M]."""
        query = self.next_query.expand(latents.shape[1], -1, -1)
        z = self.decoder(query, latents)[:, 0]  # [B, D]
        if self.spectrum_proj is not None:
            z = z + self.spectrum_proj(self.spectrum.features(spectrum))
        return self.head(z)

    def _next(self, state: CMHPState, now: Tensor) -> tuple[LogNormalMixture, Tensor, Tensor]:
        """At checked ``now`` [B]: the mixture (float64), mark log-probabilities and the anchor [B]."""
        mixture, mark_logp = self._decode(self.latents(state), state.spectrum)
        anchor = torch.where(torch.isfinite(state.last_time), state.last_time, now)
        return mixture.double(), mark_logp, anchor

    def log_prob_next(
        self, state: CMHPState, t_next: Tensor, k_next: Tensor, now: Tensor | float | None = None
    ) -> Tensor:
        """log density of the next event being (t_next, k_next), given none in (latest event, now].

        t_next, k_next: [B] or [B, m] (m candidates per element); ``now`` defaults to the latest
        event (0 for an empty history). Returns float64 of t_next's shape.
        """
        self.check_state(state)
        now = self._now(state, now)
        t_next, k_next = self._times(t_next, "t_next"), self._marks(k_next, "k_next")
        single = t_next.ndim == 1
        t_next, k_next = (t_next.unsqueeze(-1), k_next.unsqueeze(-1)) if single else (t_next, k_next)
        if t_next.ndim != 2 or t_next.shape[0] != state.batch_size or k_next.shape != t_next.shape:
            raise ValueError(f"t_next and k_next must have shape [{state.batch_size}] or [{state.batch_size}, m]")
        if (t_next < now.unsqueeze(-1)).any():
            raise ValueError("t_next is before now: the next event is after the forecast time")
        mixture, mark_logp, anchor = self._next(state, now)
        log_density = mixture.log_prob(t_next - anchor.unsqueeze(-1)) - mixture.log_survival(
            (now - anchor).unsqueeze(-1)
        )
        out = log_density + mark_logp.double().gather(-1, k_next)
        return out.squeeze(-1) if single else out

    def waiting_time_cdf(self, state: CMHPState, t_next: Tensor, now: Tensor | float | None = None) -> Tensor:
        """P(next event at or before t_next | none in (latest event, now]) = 1 - S(t_next - a) / S(now - a).

        t_next: [B] or [B, m]; ``now`` as in ``log_prob_next``. Read at the observed next event, this
        is its waiting time's probability integral transform: uniform, and independent from event to
        event, when the model is calibrated (what the service's calibration of event sessions tests).
        Returns float64 of t_next's shape.
        """
        self.check_state(state)
        now = self._now(state, now)
        t_next = self._times(t_next, "t_next")
        single = t_next.ndim == 1
        t_next = t_next.unsqueeze(-1) if single else t_next
        if t_next.ndim != 2 or t_next.shape[0] != state.batch_size:
            raise ValueError(f"t_next must have shape [{state.batch_size}] or [{state.batch_size}, m]")
        if (t_next < now.unsqueeze(-1)).any():
            raise ValueError("t_next is before now: the next event is after the forecast time")
        mixture, _, anchor = self._next(state, now)
        log_ratio = mixture.log_survival(t_next - anchor.unsqueeze(-1)) - mixture.log_survival(
            (now - anchor).unsqueeze(-1)
        )
        out = -torch.expm1(log_ratio.clamp_max(0))
        return out.squeeze(-1) if single else out

    def next_event(
        self, state: CMHPState, now: Tensor | float | None = None, quantiles: Sequence[float] = (0.05, 0.5, 0.95)
    ) -> NextEvent:
        """Waiting-time quantiles and mean (counted from ``now``) and mark probabilities of the next event."""
        self.check_state(state)
        now = self._now(state, now)
        q = torch.as_tensor(quantiles, dtype=torch.float64, device=self.device).reshape(-1)
        if not ((q > 0) & (q < 1)).all():
            raise ValueError(f"quantiles must lie in (0, 1), got {list(quantiles)}")
        mixture, mark_logp, anchor = self._next(state, now)
        given = now - anchor
        waits = mixture.quantile(q.expand(state.batch_size, -1), given)
        return NextEvent(now, waits, mixture.mean_residual(given), mark_logp.exp())

    @torch.no_grad()
    def sample(
        self,
        state: CMHPState,
        horizon: float,
        num_samples: int = 1,
        now: Tensor | float | None = None,
        generator: torch.Generator | None = None,
        max_events: int = 1000,
    ) -> EventSamples:
        """Future sequences in (now, now + horizon]: each sampled event is folded into a copy of the
        state before the next is drawn (the caller's state is untouched). Cost per event is O(1)."""
        self.check_state(state)
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be positive and finite, got {horizon}")
        if num_samples < 1 or max_events < 1:
            raise ValueError("num_samples and max_events must be >= 1")
        B, S = state.batch_size, num_samples
        now = self._now(state, now)
        end = (now + horizon).repeat(S)  # copy-major [S * B], like tile
        current, cur_time = state.tile(S), now.repeat(S)
        times = torch.full((S * B, max_events), math.nan, dtype=torch.float64, device=self.device)
        marks = torch.full((S * B, max_events), -1, dtype=torch.int64, device=self.device)
        active = torch.ones(S * B, dtype=torch.bool, device=self.device)
        count = 0
        while count < max_events and active.any():
            mixture, mark_logp, anchor = self._next(current, cur_time)
            u = torch.rand(S * B, 1, generator=generator, dtype=torch.float64).to(self.device)
            t_new = cur_time + mixture.quantile(u, cur_time - anchor).squeeze(-1)
            k_new = torch.multinomial(mark_logp.exp().cpu(), 1, generator=generator).to(self.device)
            active = active & (t_new <= end)
            times[:, count] = torch.where(active, t_new, math.nan)
            marks[:, count] = torch.where(active, k_new.squeeze(-1), -1)
            folded = self._fold(current, t_new.unsqueeze(1), k_new)
            current = folded.where(active, current)
            cur_time = torch.where(active, t_new, cur_time)
            count += 1
        counts = (marks >= 0).sum(-1)
        truncated = active & (counts == max_events)
        E = max(1, int(counts.max()))

        def per_task(x: Tensor) -> Tensor:  # copy-major [S * B, ...] -> [B, S, ...]
            return x.view(S, B, *x.shape[1:]).transpose(0, 1)

        return EventSamples(per_task(times[:, :E]), per_task(marks[:, :E]), per_task(counts), per_task(truncated))

    # ---- training -----------------------------------------------------------------------------
    def _prefix_accumulators(
        self, times: Tensor, marks: Tensor, lengths: Tensor, chunk: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The state before each event and after the last, in one differentiable pass.

        times [B, N] float64 (sorted within lengths), marks [B, N], lengths [B] -> accumulators of
        positions 0..N (position i holds events j < i, relative to its anchor a_i = t_{i-1},
        a_0 = 0): log_norm [B, N+1, K, H, L], value_sum [B, N+1, K, H, L, Dh], anchors [B, N+1].
        """
        B, N = times.shape
        C = chunk
        G = -(-(N + 1) // C)  # chunks of positions covering 0..N
        P = G * C
        scores, values, w = self._weights()
        w = w.unsqueeze(-1)  # [K, H, L, 1]
        mask = torch.arange(P, device=times.device) < lengths.unsqueeze(1)  # [B, P] real events
        last = times.gather(1, (lengths - 1).clamp_min(0).unsqueeze(1))
        last = torch.where(lengths.unsqueeze(1) > 0, last, torch.zeros_like(last))
        # Padding repeats the last real time, so the reference never moves across it.
        t = torch.cat([times, last.expand(B, P - N)], dim=1)
        t = torch.where(mask, t, last)
        anchors = torch.cat([torch.zeros_like(last), t[:, :-1]], dim=1)  # [B, P]: a_p = t_{p-1}
        k = torch.cat([marks, marks.new_zeros(B, P - N)], dim=1)
        s = scores[k].view(B, G, C, *scores.shape[1:]).permute(0, 1, 3, 4, 5, 2)  # [B, G, K, H, L, C]
        v = values[k].view(B, G, C, *values.shape[1:])  # [B, G, C, K, H, Dh]
        tk, ta, km = t.view(B, G, C), anchors.view(B, G, C), mask.view(B, G, C)

        # Within a chunk: query p reads key q < p at weight score_q - w (a_p - t_q).
        dt = (tk.unsqueeze(2) - ta.unsqueeze(3)).clamp_max(0).float()  # [B, G, p, q]
        causal = torch.ones(C, C, dtype=torch.bool, device=times.device).tril(-1) & km.unsqueeze(2)
        within = s.unsqueeze(-2) + w.unsqueeze(-1) * dt.view(B, G, 1, 1, 1, C, C)  # [B, G, K, H, L, p, q]
        within = within.masked_fill(~causal.view(B, G, 1, 1, 1, C, C), _EMPTY)

        # Each chunk's own accumulators, relative to its last time (the next chunk's first anchor).
        ends = tk[:, :, -1:]  # [B, G, 1]
        own = (s + w * (tk - ends).float().view(B, G, 1, 1, 1, C)).masked_fill(~km.view(B, G, 1, 1, 1, C), _EMPTY)
        own_norm = torch.logsumexp(own, dim=-1)  # [B, G, K, H, L]
        own_sum = torch.einsum("bgkhlq,bgqkhd->bgkhld", torch.exp(own - own_norm.unsqueeze(-1)), v)

        # The running state of earlier chunks, relative to each chunk's first anchor r_g.
        r = ta[:, :, 0]  # [B, G]
        carry_norm = [torch.full_like(own_norm[:, 0], _EMPTY)]
        carry_sum = [torch.zeros_like(own_sum[:, 0])]
        for g in range(1, G):
            shifted = self._shift(carry_norm[-1], r[:, g] - r[:, g - 1])
            c, o = merge_accumulators(shifted, carry_sum[-1], own_norm[:, g - 1], own_sum[:, g - 1])
            carry_norm.append(c)
            carry_sum.append(o)
        carry_c = torch.stack(carry_norm, dim=1)  # [B, G, K, H, L]
        carry_o = torch.stack(carry_sum, dim=1)  # [B, G, K, H, L, Dh]
        carry = carry_c.unsqueeze(-1) - w * (ta - r.unsqueeze(-1)).float().view(B, G, 1, 1, 1, C)  # [.., p]

        # One softmax per query over its chunk's earlier keys and the carried pseudo-event.
        logits = torch.cat([within, carry.unsqueeze(-1)], dim=-1)  # [B, G, K, H, L, p, C + 1]
        log_norm = torch.logsumexp(logits, dim=-1)  # [B, G, K, H, L, p]
        weights = torch.exp(logits - log_norm.unsqueeze(-1))
        value_sum = torch.einsum("bgkhlpq,bgqkhd->bgkhlpd", weights[..., :C], v)
        value_sum = value_sum + weights[..., C:] * carry_o.unsqueeze(-2)
        log_norm = log_norm.permute(0, 1, 5, 2, 3, 4).reshape(B, P, *log_norm.shape[2:5])[:, : N + 1]
        value_sum = value_sum.permute(0, 1, 5, 2, 3, 4, 6).reshape(B, P, *value_sum.shape[2:5], -1)[:, : N + 1]
        return log_norm, value_sum, anchors[:, : N + 1]

    def event_log_likelihoods(self, batch: EventBatch, chunk_size: int = 32) -> tuple[Tensor, Tensor]:
        """Each event's log-density given the events before it [B, N] (0 at padding and at events
        outside ``batch.scored``), and each window's survival term [B] (0 without ``batch.end``).
        Causal, differentiable, one pass; latents are derived only where a density is read."""
        times, marks, lengths = batch.times.to(self.device), batch.marks.to(self.device), batch.lengths.to(self.device)
        B, N = times.shape
        t = self._times(times, "times")
        mask = batch.mask.to(self.device)
        if ((t.diff(dim=1) < 0) & mask[:, 1:]).any():
            raise ValueError("event times must be sorted (non-decreasing) within each sequence")
        k = self._marks(torch.where(mask, marks, torch.zeros_like(marks)), "marks")
        scored = mask if batch.scored is None else mask & batch.scored.to(self.device)
        log_norm, value_sum, anchors = self._prefix_accumulators(t, k, lengths, chunk_size)
        # The positions read: the state before each scored event, then each window's end state.
        rows, cols = scored.nonzero(as_tuple=True)  # [S]
        rows = torch.cat([rows, torch.arange(B, device=self.device)])
        cols = torch.cat([cols, lengths])
        latents = self.encoder.derive_accumulators(log_norm[rows, cols], value_sum[rows, cols])
        spectrum = None
        if self.spectrum is not None:
            with torch.no_grad():
                spectrum = self.spectrum.prefix(t, lengths)[rows, cols]  # [S + B, 3, F]
        mixture, mark_logp = self._decode(latents, spectrum)  # [S + B, C], [S + B, M]
        S = rows.shape[0] - B
        waits = (t - anchors[:, :N]).float()[rows[:S], cols[:S]]  # [S]
        first = LogNormalMixture(mixture.log_weights[:S], mixture.loc[:S], mixture.scale[:S])
        density = first.log_prob(waits.unsqueeze(-1)).squeeze(-1)
        density = density + mark_logp[:S].gather(-1, k[rows[:S], cols[:S]].unsqueeze(-1)).squeeze(-1)
        per_event = torch.zeros(B, N, dtype=density.dtype, device=self.device).index_put((rows[:S], cols[:S]), density)
        if batch.end is None:
            return per_event, torch.zeros(B, device=self.device)
        end = self._times(batch.end, "end")
        at_end = LogNormalMixture(mixture.log_weights[S:], mixture.loc[S:], mixture.scale[S:])
        quiet = end - anchors.gather(1, lengths.unsqueeze(1)).squeeze(1)  # [B]
        if (quiet < 0).any():
            raise ValueError("a window's end is before its last event")
        survival = at_end.log_survival(quiet.float().view(B, 1)).view(B)
        return per_event, survival

    def loss(self, batch: EventBatch, chunk_size: int = 16) -> Tensor:
        """Minus the log-likelihood per event over the batch (each event scored against the events
        before it, plus each window's quiet end): a scalar to minimise. With ``batch.scored``, each
        scored event stands for length / scored events of its sequence (unbiased)."""
        per_event, survival = self.event_log_likelihoods(batch, chunk_size)
        lengths = batch.lengths.to(per_event.device)
        total = per_event.sum(1)
        if batch.scored is not None:
            scored = (batch.scored.to(per_event.device) & batch.mask.to(per_event.device)).sum(1)
            total = total * lengths / scored.clamp_min(1)
        return -(total.sum() + survival.sum()) / lengths.sum().clamp_min(1)

    def log_likelihood(self, batch: EventBatch, chunk_size: int = 32) -> Tensor:
        """Per-sequence log-likelihood per event [B] (the survival term included)."""
        per_event, survival = self.event_log_likelihoods(batch, chunk_size)
        return (per_event.sum(1) + survival) / batch.lengths.clamp_min(1).to(per_event.device)

    def heldout_score(self, batch: EventBatch) -> Tensor:
        """What ``model.train`` keeps the best checkpoint by: the log-likelihood per event [B]."""
        return self.log_likelihood(batch)
