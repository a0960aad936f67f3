"""Constant Memory Attentive Neural Process (CMANP), streaming-exact.

One readable file: the config, the small modules, and the model. Shapes use
B = batch, N = context points, M = queries, K = CMAB blocks, H = heads,
L = latents per block, D = d_model, Dh = D / H.

Why it is built this way (see docs/MODEL.md):

* Each CMAB's first cross-attention uses fixed queries (its learned latents), so
  it can be summarised by two log-sum-exp accumulators per block, head and
  latent: the log normaliser ``c`` and the normalised value sum ``o``. Those are
  the whole session state. Updates and merges are exact and cost O(new points).
* Every block reads the same data embeddings, and nothing in the data-side
  cross-attention depends on another block. So one embedding pass plus one
  matmul projects new points for all K blocks at once (no Python loop per block
  on the update path), and the per-block "latent" sublayers run batched over K.
* Training sees a whole context at once, so there the data cross-attention is one plain
  softmax over the points and the null point: the same function as the accumulators (a test
  checks both paths agree), with fewer passes.
* Everything after the accumulators (latent self-attention, the second
  cross-attention, the decoder) is constant work. It is derived lazily when a
  prediction needs it, and cached on the (immutable) state object.
* A learned "null" pseudo-point per block, head and latent (like ``add_bias_kv``)
  is merged into the accumulators only when latents are derived. It gives the
  empty state a learned prior, and because softmax weights otherwise hide how
  many points were seen, it gives the model a bounded signal of data density,
  so predictions can keep sharpening as a session grows. The stored state never
  contains it, so merging stays exact.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.state import CMANPState, add_point, merge_accumulators

T = TypeVar("T")


@dataclass(frozen=True)
class CMANPConfig:
    dim_x: int = 1
    dim_y: int = 1
    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 6
    n_latents: int = 128  # |L_I| = |L_B|
    ff_width: int = 128
    embed_depth: int = 4
    min_std: float = 1e-3  # floor of the predictive std, keeps the likelihood finite
    # Input range seen in training, per x dimension; the service maps user units into it.
    x_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("dim_x", "dim_y", "d_model", "n_heads", "n_blocks", "n_latents", "ff_width", "embed_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "x_range", tuple(float(v) for v in self.x_range))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["x_range"] = list(self.x_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CMANPConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------- building blocks
# Each module works on plain [..., n, D] tensors, or "stacked" over the K blocks as
# [K, ..., n, D] with one independent set of weights per block. The block axis comes first
# so a stacked linear map is one batched matmul over K of [rows, i] x [i, o]: big GEMMs whose
# weight gradient reduces over rows inside the GEMM, not a broadcast over the batch.


class StackedLinear(nn.Module):
    """K independent linear maps applied in one batched matmul: [K, ..., i] -> [K, ..., o]."""

    def __init__(self, stack: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # same scale as nn.Linear's default init
        self.weight = nn.Parameter(torch.empty(stack, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(stack, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor, norm: StackedLayerNorm | None = None) -> Tensor:
        """self(x), or self(norm(x)) when a norm is given."""
        weight, bias = self.weight, self.bias
        if norm is not None:
            # Fold the norm's affine part into this map ([K, D, O]-sized work): the activations
            # then take one plain layer_norm pass, not three passes (and three more backward).
            weight = norm.weight.transpose(1, 2) * self.weight
            bias = torch.baddbmm(self.bias, norm.bias, self.weight)
            x = F.layer_norm(x, x.shape[-1:])
        y = torch.baddbmm(bias, x.reshape(x.shape[0], -1, x.shape[-1]), weight)
        return y.view(*x.shape[:-1], -1)


class StackedLayerNorm(nn.Module):
    """The parameters of K independent LayerNorms over the last dim of [K, ..., D].

    Always applied by the StackedLinear that follows it (``linear(x, norm=...)``), which folds
    the affine part into its weights.
    """

    def __init__(self, stack: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(stack, 1, d))
        self.bias = nn.Parameter(torch.zeros(stack, 1, d))


def _linear(d_in: int, d_out: int, stack: int | None) -> nn.Module:
    return nn.Linear(d_in, d_out) if stack is None else StackedLinear(stack, d_in, d_out)


def _norm(d: int, stack: int | None) -> nn.Module:
    return nn.LayerNorm(d) if stack is None else StackedLayerNorm(stack, d)


def _norm_linear(norm: nn.Module, linear: nn.Module, x: Tensor) -> Tensor:
    """linear(norm(x)) for plain or stacked modules."""
    return linear(x, norm=norm) if isinstance(linear, StackedLinear) else linear(norm(x))


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[..., n, D] -> [..., H, n, Dh]."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """[..., H, n, Dh] -> [..., n, D]."""
    return x.transpose(-3, -2).flatten(-2)


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention over [..., H, n, Dh].

    float32: SDPA's fused kernel, with leading dims flattened to one batch dim because its CPU
    kernel takes 4-D inputs (5-D falls back to a slow path). bfloat16 (training under autocast):
    plain matmuls, which use the CPU's bf16 dot products, where the fused kernel's bf16 backward
    is 3x slower than its float32 one; torch.compile also fuses this softmax with its neighbours.
    """
    if q.dtype == torch.bfloat16:
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    lead = q.shape[:-3]
    out = F.scaled_dot_product_attention(q.flatten(0, -4), k.flatten(0, -4), v.flatten(0, -4))
    return out.unflatten(0, lead)


class FeedForward(nn.Module):
    """Pre-LN GELU MLP with a residual connection."""

    def __init__(self, d: int, width: int, stack: int | None = None) -> None:
        super().__init__()
        self.norm = _norm(d, stack)
        self.fc = _linear(d, width, stack)
        self.proj = _linear(width, d, stack)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.gelu(_norm_linear(self.norm, self.fc, x)))


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention with a residual connection."""

    def __init__(self, d: int, heads: int, stack: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(d, stack)
        self.qkv = _linear(d, 3 * d, stack)
        self.out = _linear(d, d, stack)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in _norm_linear(self.norm, self.qkv, x).chunk(3, dim=-1))
        return x + self.out(_merge_heads(_attend(q, k, v)))


class CrossAttention(nn.Module):
    """Pre-LN multi-head cross-attention from queries to a key/value set, with a residual."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = _split_heads(self.q(self.norm_q(x)), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv(self.norm_kv(context)).chunk(2, dim=-1))
        return x + self.out(_merge_heads(_attend(q, k, v)))


def mlp(d_in: int, d: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, d)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(d, d)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- CMAB pieces


class DataCrossAttention(nn.Module):
    """Step 1 of every CMAB at once: cross-attention from each block's latents L_B to the data.

    Its queries are fixed, so its output is a function of the (c, o) accumulators only.
    ``accumulate`` turns a chunk of data embeddings into accumulators for all K blocks;
    ``read`` turns (merged) accumulators into the block's updated latents X. ``attend`` goes
    straight from a whole context to X, for training, where all points are at hand.
    """

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        K, H, L, D = cfg.n_blocks, cfg.n_heads, cfg.n_latents, cfg.d_model
        self.cfg = cfg
        self.latents = nn.Parameter(torch.randn(K, L, D))  # L_B, one set per block
        self.norm_q = StackedLayerNorm(K, D)
        self.q = StackedLinear(K, D, D)
        # A LayerNorm's affine part would fold into the per-block projections, so one
        # shared, affine-free LayerNorm plus one [D -> K*2D] matmul serves all blocks.
        self.kv = nn.Linear(D, K * 2 * D)
        self.out = StackedLinear(K, D, D)
        # Learned null pseudo-point: a score and a value per block, head and latent.
        self.null_score = nn.Parameter(torch.zeros(K, H, L))
        self.null_value = nn.Parameter(torch.zeros(K, H, L, cfg.head_dim))
        self._cache: dict[str, object] = {}  # weight-only tensors, see _cached

    def _cached(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, cached in eval mode without grad (where weights cannot change under it).

        What it holds depends on the weights alone and was a large part of a single-point
        update; ``train()`` and ``CMANP.load_state_dict`` drop it.
        """
        if self.training or torch.is_grad_enabled():
            return compute()
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]  # type: ignore[return-value]

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True) -> DataCrossAttention:
        self.clear_cache()
        return super().train(mode)

    def queries(self) -> Tensor:
        """[K, H, L, Dh], pre-scaled by 1/sqrt(Dh)."""

        def compute() -> Tensor:
            q = self.q(self.latents, norm=self.norm_q)
            return _split_heads(q, self.cfg.n_heads) * self.cfg.head_dim**-0.5

        return self._cached("queries", compute)

    def _point_projection(self) -> tuple[Tensor, Tensor]:
        """Weight [K*H*L + K*D, D] and bias mapping a normed embedding to its scores and values.

        The queries are fixed, so they fold into the key projection: q . (W_k e + b_k) =
        (q W_k) e + q b_k. For one point that is one small matmul instead of the key/value
        projection plus a batched per-head product; for a chunk it would cost 4x the key
        projection's work (K*H*L = 4*K*D rows here), so chunks keep the two-step path.
        """
        cfg = self.cfg
        K, H, L, D, Dh = cfg.n_blocks, cfg.n_heads, cfg.n_latents, cfg.d_model, cfg.head_dim
        weight = self.kv.weight.view(K, 2, H, Dh, D)
        bias = self.kv.bias.view(K, 2, H, Dh)
        q = self.queries()
        score_weight = torch.einsum("khld,khde->khle", q, weight[:, 0]).reshape(K * H * L, D)
        score_bias = torch.einsum("khld,khd->khl", q, bias[:, 0]).reshape(K * H * L)
        return torch.cat([score_weight, weight[:, 1].reshape(K * D, D)]), torch.cat([score_bias, bias[:, 1].flatten()])

    def point_scores_values(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """emb [B, D] (one point per batch element) -> scores [B, K, H, L], values [B, K, H, Dh]."""
        cfg = self.cfg
        weight, bias = self._cached("point_projection", self._point_projection)
        out = F.linear(F.layer_norm(emb, emb.shape[-1:]), weight, bias)
        scores, values = out.split([cfg.n_blocks * cfg.n_heads * cfg.n_latents, cfg.n_blocks * cfg.d_model], dim=-1)
        B = emb.shape[0]
        return scores.view(B, cfg.n_blocks, cfg.n_heads, cfg.n_latents), values.view(B, cfg.n_blocks, cfg.n_heads, -1)

    def _scores_values(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """emb [B, N, D] -> scores [B, K, H, L, N] and values [B, N, K, H, Dh]."""
        cfg = self.cfg
        kv = self.kv(F.layer_norm(emb, emb.shape[-1:]))  # [B, N, K*2*D]
        kv = kv.unflatten(-1, (cfg.n_blocks, 2, cfg.n_heads, cfg.head_dim))  # [B, N, K, 2, H, Dh]
        keys, values = kv.unbind(dim=3)
        return torch.einsum("khld,bnkhd->bkhln", self.queries(), keys), values

    def accumulate(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """emb [B, N, D] (N >= 1) -> log_norm [B, K, H, L], value_sum [B, K, H, L, Dh]."""
        scores, values = self._scores_values(emb)
        log_norm = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - log_norm.unsqueeze(-1))
        value_sum = torch.einsum("bkhln,bnkhd->bkhld", weights, values)
        return log_norm, value_sum

    def read(self, log_norm: Tensor, value_sum: Tensor) -> Tensor:
        """Accumulators (without the null point) -> X [K, B, L, D] (block-major)."""
        B = log_norm.shape[0]
        null_norm = self.null_score.expand(B, -1, -1, -1)
        null_sum = self.null_value.expand(B, -1, -1, -1, -1)
        _, attended = merge_accumulators(log_norm, value_sum, null_norm, null_sum)  # [B, K, H, L, Dh]
        return self._project(attended)

    def attend(self, emb: Tensor) -> Tensor:
        """emb [B, N, D] (N >= 1) -> X [K, B, L, D]: the same as ``read(*accumulate(emb))``.

        With the whole context at hand, one softmax over the points and the null point replaces
        the log-sum-exp accumulators and their merge: fewer passes, for training.
        """
        scores, values = self._scores_values(emb)
        null = self.null_score.unsqueeze(-1).expand(scores.shape[0], -1, -1, -1, 1)
        weights = torch.cat([scores, null], dim=-1).softmax(dim=-1)
        attended = torch.einsum("bkhln,bnkhd->bkhld", weights[..., :-1], values)
        return self._project(attended + weights[..., -1:] * self.null_value)

    def _project(self, attended: Tensor) -> Tensor:
        """Attention output [B, K, H, L, Dh] -> X [K, B, L, D] (block-major)."""
        return self.latents.unsqueeze(1) + self.out(_merge_heads(attended.transpose(0, 1)))


class LatentStack(nn.Module):
    """Step 2 of every CMAB, batched over blocks: X = FF(SA(FF(X))) on [K, B, L, D]. Independent of N."""

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        K = cfg.n_blocks
        self.ff1 = FeedForward(cfg.d_model, cfg.ff_width, stack=K)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, stack=K)
        self.ff2 = FeedForward(cfg.d_model, cfg.ff_width, stack=K)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff2(self.attn(self.ff1(x)))


class LatentReadout(nn.Module):
    """Step 3 of one CMAB: its input latents L_I read the block's X, then FF, SA, FF."""

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.cross = CrossAttention(cfg.d_model, cfg.n_heads)
        self.ff1 = FeedForward(cfg.d_model, cfg.ff_width)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads)
        self.ff2 = FeedForward(cfg.d_model, cfg.ff_width)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        return self.ff2(self.attn(self.ff1(self.cross(y, x))))


class DecoderLayer(nn.Module):
    """Queries read one block's output latents, then an FF."""

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.cross = CrossAttention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.ff_width)

    def forward(self, z: Tensor, latents: Tensor) -> Tensor:
        return self.ff(self.cross(z, latents))


# --------------------------------------------------------------------------- the model


class CMANP(nn.Module):
    """CMANP with an exact, constant-memory streaming state. See the module docstring."""

    architecture = "cmanp"  # recorded in checkpoints, so loading builds the right class

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.context_embed = mlp(cfg.dim_x + cfg.dim_y, D, cfg.embed_depth)
        self.data_attn = DataCrossAttention(cfg)
        self.latent_stack = LatentStack(cfg)
        self.input_latents = nn.Parameter(torch.randn(cfg.n_latents, D))  # L_I of block 1
        self.readouts = nn.ModuleList(LatentReadout(cfg) for _ in range(cfg.n_blocks))
        self.query_embed = mlp(cfg.dim_x, D, cfg.embed_depth)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_blocks))
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.GELU(), nn.Linear(D, 2 * cfg.dim_y))
        self._fingerprint: str | None = None

    # ---- identity -------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Stable id of config + weights (hex, 128 bits).

        Cached in eval mode; recomputed in train mode, where an optimiser may change weights.
        """
        if self._fingerprint is not None and not self.training:
            return self._fingerprint
        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{name}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
        self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    def train(self, mode: bool = True) -> CMANP:
        self._fingerprint = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - nn.Module's signature
        self._fingerprint = None
        self.data_attn.clear_cache()
        return super().load_state_dict(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.input_latents.device

    # ---- validation -------------------------------------------------------------------------
    def _as_points(self, t: Tensor, dim: int, name: str, batch: int | None = None, finite: bool = True) -> Tensor:
        """Check a [B, n, dim] numeric tensor (of finite numbers, if ``finite``) and move it to the
        model's device/dtype."""
        t = torch.as_tensor(t)
        if t.ndim != 3:
            raise ValueError(f"{name} must have shape [batch, points, {dim}], got {tuple(t.shape)}")
        if t.shape[-1] != dim:
            raise ValueError(f"{name} has {t.shape[-1]} features per point, the model expects {dim}")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"{name} has batch size {t.shape[0]}, expected {batch}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} has no points")
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
        t = t.to(self.device, torch.float32)
        if finite:
            _check_finite(t, name)
        return t

    def _context_points(self, x: Tensor, y: Tensor, batch: int | None = None) -> Tensor:
        """Checked context points (x [B,k,dx], y [B,k,dy]) as one [B, k, dx + dy] tensor."""
        x = self._as_points(x, self.cfg.dim_x, "x", batch, finite=False)
        y = self._as_points(y, self.cfg.dim_y, "y", x.shape[0], finite=False)
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"x has {x.shape[1]} points but y has {y.shape[1]}")
        xy = torch.cat([x, y], dim=-1)
        if not torch.isfinite(xy).all():  # one pass over both; name the culprit only on failure
            _check_finite(x, "x")
            _check_finite(y, "y")
        return xy

    def _check_state(self, state: CMANPState, name: str = "state") -> None:
        if not isinstance(state, CMANPState):
            raise ValueError(f"{name} must be a CMANPState, got {type(state).__name__}")
        if state.fingerprint != self.fingerprint:
            raise ValueError(f"{name} was built by model {state.fingerprint}, not by this model ({self.fingerprint})")

    # ---- state --------------------------------------------------------------------------------
    def empty_state(self, batch_size: int = 1) -> CMANPState:
        """The state of an empty context; predicting from it gives the model's prior."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        log_norm, value_sum = self._empty_accumulators(batch_size)
        num_points = torch.zeros(batch_size, dtype=torch.int64, device=self.device)
        return CMANPState(log_norm, value_sum, num_points, self.fingerprint, version=0)

    def _empty_accumulators(self, batch_size: int) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        shape = (batch_size, cfg.n_blocks, cfg.n_heads, cfg.n_latents)
        return (torch.full(shape, -math.inf, device=self.device), torch.zeros(*shape, cfg.head_dim, device=self.device))

    def _accumulate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The accumulators of a chunk of points (x [B,k,dx], y [B,k,dy], k >= 1)."""
        return self.data_attn.accumulate(self.context_embed(torch.cat([x, y], dim=-1)))

    def _add_points(self, state: CMANPState, xy: Tensor) -> CMANPState:
        """The state with checked points xy [B, k, dx + dy] folded in (a new state)."""
        emb = self.context_embed(xy)
        k = xy.shape[1]
        if k == 1:  # one point (the service's usual post): its weight within the chunk is exactly 1
            scores, values = self.data_attn.point_scores_values(emb[:, 0])
            log_norm, value_sum = add_point(state.log_norm, state.value_sum, scores, values.unsqueeze(3))
        else:
            log_norm, value_sum = merge_accumulators(state.log_norm, state.value_sum, *self.data_attn.accumulate(emb))
        return CMANPState(log_norm, value_sum, state.num_points + k, state.fingerprint, state.version + 1)

    def update(self, state: CMANPState, x: Tensor, y: Tensor) -> CMANPState:
        """Fold k new points (x [B,k,dx], y [B,k,dy]) into the state; cost is O(k), not O(N)."""
        self._check_state(state)
        return self._add_points(state, self._context_points(x, y, state.batch_size))

    def condition(self, x: Tensor, y: Tensor, chunk_size: int | None = None) -> CMANPState:
        """Same as update(empty_state, x, y); with chunk_size, peak memory does not grow with N."""
        xy = self._context_points(x, y)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        state = self.empty_state(xy.shape[0])
        step = chunk_size or xy.shape[1]
        for i in range(0, xy.shape[1], step):
            state = self._add_points(state, xy[:, i : i + step])
        return state

    def merge(self, a: CMANPState, b: CMANPState) -> CMANPState:
        """The state of the union of both point sets (exact; associative and commutative)."""
        self._check_state(a, "a")
        self._check_state(b, "b")
        return a.merge(b)

    def state_from_bytes(self, blob: bytes) -> CMANPState:
        """Parse and validate a blob from ``CMANPState.to_bytes`` made by this model."""
        cfg = self.cfg
        return CMANPState.from_bytes(
            blob,
            fingerprint=self.fingerprint,
            dims=(cfg.n_blocks, cfg.n_heads, cfg.n_latents, cfg.head_dim),
            device=self.device,
        )

    # ---- derived latents and decoding ------------------------------------------------------------
    def _derive(self, log_norm: Tensor, value_sum: Tensor) -> Tensor:
        """Accumulators -> every block's output latents, stacked block-major [K, B, L, D]."""
        return self._block_outputs(self.data_attn.read(log_norm, value_sum))

    def _block_outputs(self, x: Tensor) -> Tensor:
        """Every block's X after the data cross-attention [K, B, L, D] -> the block outputs [K, B, L, D]."""
        x = self.latent_stack(x)
        y = self.input_latents.expand(x.shape[1], -1, -1)
        outputs = []
        for k, readout in enumerate(self.readouts):  # inherently sequential: block k reads block k-1
            y = readout(y, x[k])
            outputs.append(y)
        return torch.stack(outputs)

    def latents(self, state: CMANPState) -> Tensor:
        """The derived block outputs for a state, computed once per state object and cached."""
        self._check_state(state)
        grad = torch.is_grad_enabled()
        if state._derived is not None and state._derived[0] == self.fingerprint and not grad:
            return state._derived[1]
        latents = self._derive(state.log_norm, state.value_sum)
        if not grad:  # never pin an autograd graph to a state object
            state._derived = (self.fingerprint, latents)
        return latents

    def _target_encodings(self, latents: Tensor, xq: Tensor) -> Tensor:
        """The decoder's per-target representation [B, m, D] before the output head."""
        z = self.query_embed(xq)
        for k, layer in enumerate(self.decoder):
            z = layer(z, latents[k])
        return z

    def _decode(self, latents: Tensor, xq: Tensor) -> tuple[Tensor, Tensor]:
        z = self._target_encodings(latents, xq)
        # The output head stays float32 under bf16 autocast (training): a bf16 mean has 3
        # significant digits, coarser than the noise the likelihood scores it against.
        with torch.autocast(z.device.type, enabled=False):
            mean, raw = self.head(z.float()).chunk(2, dim=-1)
        std = self.cfg.min_std + F.softplus(raw)
        return mean, std

    def predict(self, state: CMANPState, xq: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance, each [B, m, dy], at queries xq [B, m, dx]."""
        latents = self.latents(state)
        xq = self._as_points(xq, self.cfg.dim_x, "xq", state.batch_size)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        step = chunk_size or xq.shape[1]
        means, variances = [], []
        for i in range(0, xq.shape[1], step):
            mean, std = self._decode(latents, xq[:, i : i + step])
            means.append(mean)
            variances.append(std.square())
        return torch.cat(means, dim=1), torch.cat(variances, dim=1)

    # ---- training -----------------------------------------------------------------------------
    def forward(self, xc: Tensor, yc: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        """One differentiable pass: context [B,N,*] and targets [B,M,dx] -> mean, std [B,M,dy].

        The same function as ``predict(condition(xc, yc), xt)``, but the data cross-attention
        is one plain softmax over the whole context (no accumulators); N = 0 gives the prior.
        """
        if xc.shape[1] == 0:
            latents = self._derive(*self._empty_accumulators(xc.shape[0]))
        else:
            latents = self._block_outputs(self.data_attn.attend(self.context_embed(torch.cat([xc, yc], dim=-1))))
        return self._decode(latents, xt)

    def _context_accumulators(self, xc: Tensor, yc: Tensor) -> tuple[Tensor, Tensor]:
        """Accumulators of a training context; N = 0 gives the empty ones (the prior)."""
        if xc.shape[1] == 0:
            return self._empty_accumulators(xc.shape[0])
        return self._accumulate(xc, yc)

    def loss(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Minus the target log-likelihood, averaged over targets, then over tasks."""
        return -self.log_likelihood(xc, yc, xt, yt).mean()

    def log_likelihood(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Per-task mean target log-likelihood [B] (summed over output dims)."""
        mean, std = self(xc, yc, xt)
        return torch.distributions.Normal(mean, std).log_prob(yt).sum(-1).mean(-1)


def _check_finite(t: Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
