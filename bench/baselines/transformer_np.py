"""A re-encoding attention NP in the style of the Transformer Neural Process (TNP-D).

Context points are embedded from (x, y, 1), targets from (x, 0, 0); a stack of pre-LN transformer
layers runs over all of them, with the TNP-D mask: context tokens attend to every context token,
target tokens attend to every context token (not to each other). A head maps each target token
to a mean and a std. The mask is applied as two fused attention calls per layer (context over
context, targets over context) rather than one masked call over N + M tokens: same result, and
no N x N score matrix is kept in memory, so this is the fast way to run the model, not a straw man.

It has no streaming state: the context encoding depends on every pair of context points, so adding
a point means running the whole model again on N + 1 points, O(N^2) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TNPConfig:
    dim_x: int = 1
    dim_y: int = 1
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 6
    ff_width: int = 128
    embed_depth: int = 4


class Layer(nn.Module):
    """Pre-LN transformer layer whose keys and values are the context tokens only."""

    def __init__(self, cfg: TNPConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.n_heads
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.ff_width), nn.GELU(), nn.Linear(cfg.ff_width, d))

    def _split(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, n, D] -> [B, H, n, Dh]

    def forward(self, context: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        d = context.shape[-1]
        q_c, k, v = (self._split(t) for t in self.qkv(self.norm(context)).chunk(3, dim=-1))
        # Targets only need queries: the first d rows of the fused projection.
        q_t = self._split(F.linear(self.norm(targets), self.qkv.weight[:d], self.qkv.bias[:d]))
        outputs = []
        for x, q in ((context, q_c), (targets, q_t)):
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
            x = x + self.out(attended)
            outputs.append(x + self.ff(x))
        return outputs[0], outputs[1]


class TransformerNP(nn.Module):
    def __init__(self, cfg: TNPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        layers: list[nn.Module] = [nn.Linear(cfg.dim_x + cfg.dim_y + 1, d)]
        for _ in range(cfg.embed_depth - 1):
            layers += [nn.GELU(), nn.Linear(d, d)]
        self.embed = nn.Sequential(*layers)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2 * cfg.dim_y))

    def forward(self, xc: Tensor, yc: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        """Context [B, N, *] and targets [B, M, dx] -> predictive mean and std [B, M, dy]."""
        ones = torch.ones(*xc.shape[:2], 1)
        context = self.embed(torch.cat([xc, yc, ones], dim=-1))
        targets = self.embed(torch.cat([xt, torch.zeros(*xt.shape[:2], self.cfg.dim_y + 1)], dim=-1))
        for layer in self.layers:
            context, targets = layer(context, targets)
        mean, raw = self.head(targets).chunk(2, dim=-1)
        return mean, 1e-3 + F.softplus(raw)
