"""Generic building blocks: stacked linear maps and norms, attention, feed-forward, MLP.

Shapes: ``[..., n, D]`` for plain modules; "stacked" modules hold one independent set of weights
per CMAB block and work on ``[K, ..., n, D]``. The block axis comes first so that a stacked
linear map is one batched matmul over K of ``[rows, i] x [i, o]``: big GEMMs whose weight
gradient reduces over rows inside the GEMM, not a broadcast over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def linear(d_in: int, d_out: int, stack: int | None) -> nn.Module:
    """An nn.Linear, or a StackedLinear of ``stack`` maps."""
    return nn.Linear(d_in, d_out) if stack is None else StackedLinear(stack, d_in, d_out)


def layer_norm(d: int, stack: int | None) -> nn.Module:
    """An nn.LayerNorm, or the parameters of ``stack`` of them (applied by a StackedLinear)."""
    return nn.LayerNorm(d) if stack is None else StackedLayerNorm(stack, d)


def norm_linear(norm: nn.Module, lin: nn.Module, x: Tensor) -> Tensor:
    """lin(norm(x)) for plain or stacked modules."""
    return lin(x, norm=norm) if isinstance(lin, StackedLinear) else lin(norm(x))


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[..., n, D] -> [..., H, n, Dh]."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(x: Tensor) -> Tensor:
    """[..., H, n, Dh] -> [..., n, D]."""
    return x.transpose(-3, -2).flatten(-2)


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
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
        self.norm = layer_norm(d, stack)
        self.fc = linear(d, width, stack)
        self.proj = linear(width, d, stack)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.gelu(norm_linear(self.norm, self.fc, x)))


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention with a residual connection."""

    def __init__(self, d: int, heads: int, stack: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.norm = layer_norm(d, stack)
        self.qkv = linear(d, 3 * d, stack)
        self.out = linear(d, d, stack)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in norm_linear(self.norm, self.qkv, x).chunk(3, dim=-1))
        return x + self.out(merge_heads(attend(q, k, v)))


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
        q = split_heads(self.q(self.norm_q(x)), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.kv(self.norm_kv(context)).chunk(2, dim=-1))
        return x + self.out(merge_heads(attend(q, k, v)))


def mlp_layers(d_in: int, d: int, depth: int) -> list[nn.Module]:
    """Linear, then (GELU, Linear) ``depth - 1`` times; d_in -> d."""
    layers: list[nn.Module] = [nn.Linear(d_in, d)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(d, d)]
    return layers


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
