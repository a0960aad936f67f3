"""The CMAB encoder: K stacked Constant Memory Attention Blocks over a streaming state.

Shapes: B = batch, N = points, K = blocks, H = heads, L = latents per block, D = d_model,
Dh = D / H. The encoder sees data only as embeddings [B, N, D]; what a point is (``[x | y]`` for
regression) is the model family's business.

Why it is built this way (docs/MODEL.md sections 2 and 3):

* Each CMAB's first cross-attention uses fixed queries (its learned latents), so it is
  summarised by two log-sum-exp accumulators per block, head and latent: the log normaliser
  ``c`` and the normalised value sum ``o`` (``model.state``). Those are the whole session state;
  ``update`` and ``merge`` are exact and cost O(new points).
* Every block reads the same data embeddings, and nothing in the data-side cross-attention
  depends on another block. So one matmul projects new points for all K blocks at once (no
  Python loop per block on the update path), and the per-block latent sublayers run batched over K.
* Everything after the accumulators (latent self-attention, the second cross-attention) is
  constant work, done by ``derive`` when a prediction needs it.
* A learned "null" pseudo-point per block, head and latent (like ``add_bias_kv``) is merged into
  the accumulators only when latents are derived. It gives the empty state a learned prior, and,
  because softmax weights otherwise hide how many points were seen, a bounded signal of data
  density. The stored state never contains it, so merging stays exact.
* Training sees a whole context at once, so there (``encode``) the data cross-attention is one
  plain softmax over the points and the null point: the same function as the accumulators (a
  test checks both paths agree), with fewer passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import (
    CrossAttention,
    FeedForward,
    SelfAttention,
    StackedLayerNorm,
    StackedLinear,
    merge_heads,
    split_heads,
)
from model.state import CMANPState, add_point, merge_accumulators

T = TypeVar("T")


class DataCrossAttention(nn.Module):
    """Step 1 of every CMAB at once: cross-attention from each block's latents L_B to the data.

    Its queries are fixed, so its output is a function of the (c, o) accumulators only.
    ``accumulate`` turns a chunk of data embeddings into accumulators for all K blocks;
    ``read`` turns (merged) accumulators into the block's updated latents X. ``attend`` goes
    straight from a whole context to X, for training, where all points are at hand.
    """

    def __init__(self, blocks: int, heads: int, latents: int, d_model: int) -> None:
        super().__init__()
        K, H, L, D = blocks, heads, latents, d_model
        self.blocks, self.heads, self.n_latents, self.head_dim = K, H, L, D // H
        self.latents = nn.Parameter(torch.randn(K, L, D))  # L_B, one set per block
        self.norm_q = StackedLayerNorm(K, D)
        self.q = StackedLinear(K, D, D)
        # A LayerNorm's affine part would fold into the per-block projections, so one
        # shared, affine-free LayerNorm plus one [D -> K*2D] matmul serves all blocks.
        self.kv = nn.Linear(D, K * 2 * D)
        self.out = StackedLinear(K, D, D)
        # Learned null pseudo-point: a score and a value per block, head and latent.
        self.null_score = nn.Parameter(torch.zeros(K, H, L))
        self.null_value = nn.Parameter(torch.zeros(K, H, L, self.head_dim))
        self._cache: dict[str, object] = {}  # weight-only tensors, see _cached

    def _cached(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, cached in eval mode without grad (where weights cannot change under it).

        What it holds depends on the weights alone and was a large part of a single-point
        update; ``train()`` and the model's ``load_state_dict`` drop it.
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
            return split_heads(q, self.heads) * self.head_dim**-0.5

        return self._cached("queries", compute)

    def _point_projection(self) -> tuple[Tensor, Tensor]:
        """Weight [K*H*L + K*D, D] and bias mapping a normed embedding to its scores and values.

        The queries are fixed, so they fold into the key projection: q . (W_k e + b_k) =
        (q W_k) e + q b_k. For one point that is one small matmul instead of the key/value
        projection plus a batched per-head product; for a chunk it would cost 4x the key
        projection's work (K*H*L = 4*K*D rows here), so chunks keep the two-step path.
        """
        K, H, L, Dh = self.blocks, self.heads, self.n_latents, self.head_dim
        D = H * Dh
        weight = self.kv.weight.view(K, 2, H, Dh, D)
        bias = self.kv.bias.view(K, 2, H, Dh)
        q = self.queries()
        score_weight = torch.einsum("khld,khde->khle", q, weight[:, 0]).reshape(K * H * L, D)
        score_bias = torch.einsum("khld,khd->khl", q, bias[:, 0]).reshape(K * H * L)
        return torch.cat([score_weight, weight[:, 1].reshape(K * D, D)]), torch.cat([score_bias, bias[:, 1].flatten()])

    def point_scores_values(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """emb [B, D] (one point per batch element) -> scores [B, K, H, L], values [B, K, H, Dh]."""
        K, H, L = self.blocks, self.heads, self.n_latents
        weight, bias = self._cached("point_projection", self._point_projection)
        out = F.linear(F.layer_norm(emb, emb.shape[-1:]), weight, bias)
        scores, values = out.split([K * H * L, K * H * self.head_dim], dim=-1)
        B = emb.shape[0]
        return scores.view(B, K, H, L), values.view(B, K, H, -1)

    def _scores_values(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """emb [B, N, D] -> scores [B, K, H, L, N] and values [B, N, K, H, Dh]."""
        kv = self.kv(F.layer_norm(emb, emb.shape[-1:]))  # [B, N, K*2*D]
        kv = kv.unflatten(-1, (self.blocks, 2, self.heads, self.head_dim))  # [B, N, K, 2, H, Dh]
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
        return self.latents.unsqueeze(1) + self.out(merge_heads(attended.transpose(0, 1)))


class LatentStack(nn.Module):
    """Step 2 of every CMAB, batched over blocks: X = FF(SA(FF(X))) on [K, B, L, D]. Independent of N."""

    def __init__(self, blocks: int, d_model: int, heads: int, ff_width: int) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_width, stack=blocks)
        self.attn = SelfAttention(d_model, heads, stack=blocks)
        self.ff2 = FeedForward(d_model, ff_width, stack=blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff2(self.attn(self.ff1(x)))


class LatentReadout(nn.Module):
    """Step 3 of one CMAB: its input latents L_I read the block's X, then FF, SA, FF."""

    def __init__(self, d_model: int, heads: int, ff_width: int) -> None:
        super().__init__()
        self.cross = CrossAttention(d_model, heads)
        self.ff1 = FeedForward(d_model, ff_width)
        self.attn = SelfAttention(d_model, heads)
        self.ff2 = FeedForward(d_model, ff_width)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        return self.ff2(self.attn(self.ff1(self.cross(y, x))))


class CMABEncoder(nn.Module):
    """K stacked CMABs: data embeddings -> a constant-size state -> every block's output latents.

    The state algebra: ``empty``, ``update`` (fold in embedded points), ``merge`` (union of two
    point sets), ``derive`` (state -> latents [K, B, L, D]). ``encode`` is the training path.
    """

    def __init__(self, d_model: int, heads: int, blocks: int, latents: int, ff_width: int) -> None:
        super().__init__()
        self.data_attn = DataCrossAttention(blocks, heads, latents, d_model)
        self.latent_stack = LatentStack(blocks, d_model, heads, ff_width)
        self.input_latents = nn.Parameter(torch.randn(latents, d_model))  # L_I of block 1
        self.readouts = nn.ModuleList(LatentReadout(d_model, heads, ff_width) for _ in range(blocks))

    @property
    def state_dims(self) -> tuple[int, int, int, int]:
        """(blocks, heads, latents, head_dim) of the state."""
        a = self.data_attn
        return a.blocks, a.heads, a.n_latents, a.head_dim

    def clear_cache(self) -> None:
        """Drop what was cached from the weights (call when they change outside an optimiser step)."""
        self.data_attn.clear_cache()

    # ---- the state algebra --------------------------------------------------------------------
    def empty(self, batch_size: int, fingerprint: str) -> CMANPState:
        """The state of ``batch_size`` empty contexts, owned by the model ``fingerprint``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        log_norm, value_sum = self._empty_accumulators(batch_size)
        num_points = torch.zeros(batch_size, dtype=torch.int64, device=log_norm.device)
        return CMANPState(log_norm, value_sum, num_points, fingerprint, version=0)

    def _empty_accumulators(self, batch_size: int) -> tuple[Tensor, Tensor]:
        K, H, L, Dh = self.state_dims
        device = self.input_latents.device
        shape = (batch_size, K, H, L)
        return torch.full(shape, -math.inf, device=device), torch.zeros(*shape, Dh, device=device)

    def update(self, state: CMANPState, emb: Tensor) -> CMANPState:
        """The state with k embedded points emb [B, k, D] folded in (a new state); cost O(k)."""
        k = emb.shape[1]
        if k == 1:  # one point (the service's usual post): its weight within the chunk is exactly 1
            scores, values = self.data_attn.point_scores_values(emb[:, 0])
            log_norm, value_sum = add_point(state.log_norm, state.value_sum, scores, values.unsqueeze(3))
        else:
            log_norm, value_sum = merge_accumulators(state.log_norm, state.value_sum, *self.data_attn.accumulate(emb))
        return CMANPState(log_norm, value_sum, state.num_points + k, state.fingerprint, state.version + 1)

    def chunk_state(self, emb: Tensor, fingerprint: str) -> CMANPState:
        """The state of one chunk of embedded points emb [B, N, D] (N >= 1), owned by ``fingerprint``.

        The same as ``update(empty(B), emb)`` but for rounding: it takes the chunk path for any N
        and skips the merge with the empty state. The training loss of a joint model conditions so.
        """
        B, N = emb.shape[:2]
        num_points = torch.full((B,), N, dtype=torch.int64, device=emb.device)
        return CMANPState(*self.data_attn.accumulate(emb), num_points, fingerprint, version=1)

    def merge(self, a: CMANPState, b: CMANPState) -> CMANPState:
        """The state of the union of both point sets (exact; associative and commutative)."""
        return a.merge(b)

    def derive(self, state: CMANPState) -> Tensor:
        """State -> every block's output latents, stacked block-major [K, B, L, D]."""
        return self.derive_accumulators(state.log_norm, state.value_sum)

    def derive_accumulators(self, log_norm: Tensor, value_sum: Tensor) -> Tensor:
        """``derive`` of bare accumulators [B, K, H, L] and [B, K, H, L, Dh]: for a family's training
        pass, which computes many prefix states at once and never makes state objects of them."""
        return self._block_outputs(self.data_attn.read(log_norm, value_sum))

    # ---- training -----------------------------------------------------------------------------
    def encode(self, emb: Tensor) -> Tensor:
        """A whole context emb [B, N, D] (N >= 1) -> latents [K, B, L, D]: ``derive`` of its state,
        with one softmax over the points instead of the accumulators."""
        return self._block_outputs(self.data_attn.attend(emb))

    def prior(self, batch_size: int) -> Tensor:
        """The latents of an empty context [K, B, L, D] (no state object: for training)."""
        return self._block_outputs(self.data_attn.read(*self._empty_accumulators(batch_size)))

    def _block_outputs(self, x: Tensor) -> Tensor:
        """Every block's X after the data cross-attention [K, B, L, D] -> the block outputs [K, B, L, D]."""
        x = self.latent_stack(x)
        y = self.input_latents.expand(x.shape[1], -1, -1)
        outputs = []
        for k, readout in enumerate(self.readouts):  # inherently sequential: block k reads block k-1
            y = readout(y, x[k])
            outputs.append(y)
        return torch.stack(outputs)
