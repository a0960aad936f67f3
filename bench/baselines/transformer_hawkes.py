"""A re-encoding transformer event model in the style of the Transformer Hawkes Process (THP).

Each event is a token: its mark's embedding plus THP's temporal encoding of its time (sines and
cosines of t / 10000^(2j/D), computed in float64 so that late times keep their resolution). A
stack of pre-LN transformer layers with causal self-attention runs over the whole history, and
the last token's encoding gives the next event through the same head as the CMHP
(``model.heads.NextEventHead``: a log-normal mixture over the wait and a categorical over the
mark), so a forecast does the same head work and a timing compares the encoders alone.

It has no streaming state: as THP models are run, a new event means encoding the whole history
again, O(N^2) attention per layer. (A key/value cache of a causal model would cut that to O(N)
per event, with O(N) memory per stream; THP's published code has none.) This is a cost baseline:
``bench.event_costs`` times it with random weights, which cost what trained ones cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.baselines.transformer_np import Layer, TNPConfig
from model.heads import NextEventHead
from model.waiting_time import LogNormalMixture


@dataclass(frozen=True)
class THPConfig:
    """Defaults: the width and depth of configs/hawkes-exp.json's CMHP (d_model 64, 4 heads, 3 blocks)."""

    num_marks: int = 3
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    ff_width: int = 128
    components: int = 8
    min_log_std: float = 0.05


class CausalLayer(Layer):
    """The TNP baseline's pre-LN layer, over one sequence: each token attends to itself and the
    tokens before it."""

    def __init__(self, cfg: THPConfig) -> None:
        super().__init__(TNPConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, ff_width=cfg.ff_width))

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override] - one sequence, not context and targets
        q, k, v = (self._split(t) for t in self.qkv(self.norm(x)).chunk(3, dim=-1))
        x = x + self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(-2))
        return x + self.ff(x)


class TransformerHawkes(nn.Module):
    """Events (times [B, N] float64, marks [B, N]) -> the next event after the last one."""

    def __init__(self, cfg: THPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.mark_embed = nn.Embedding(cfg.num_marks, d)
        # THP's temporal encoding: frequency 1 / 10000^(2j / d) for the j-th sine/cosine pair.
        exponents = torch.arange(0, d, 2, dtype=torch.float64) / d  # float64: t * frequency must keep t's digits
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * exponents))
        self.layers = nn.ModuleList(CausalLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = NextEventHead(d, cfg.components, cfg.num_marks, cfg.min_log_std)

    def temporal_encoding(self, times: Tensor) -> Tensor:
        """[B, N] float64 -> [B, N, D] float32: sin in the even features, cos in the odd ones."""
        angle = times.unsqueeze(-1) * self.frequencies
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2).float()

    def encode(self, times: Tensor, marks: Tensor) -> Tensor:
        """The encoding of every event given those up to it [B, N, D]: the whole history, every call."""
        x = self.mark_embed(marks) + self.temporal_encoding(times)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, times: Tensor, marks: Tensor) -> tuple[LogNormalMixture, Tensor]:
        """The waiting-time mixture and mark log-probabilities [B, M] of the event after the last."""
        return self.head(self.encode(times, marks)[:, -1])

    def forecast(
        self, times: Tensor, marks: Tensor, quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Waiting-time quantiles [B, Q] and mean [B] from the last event, mark probabilities [B, M]:
        what ``CMHP.next_event`` gives, by the same head functions."""
        mixture, mark_logp = self(times, marks)
        mixture = mixture.double()
        zero = torch.zeros(times.shape[0], dtype=torch.float64, device=times.device)
        q = torch.tensor(quantiles, dtype=torch.float64, device=times.device).expand(times.shape[0], -1)
        return mixture.quantile(q, zero), mixture.mean_residual(zero), mark_logp.exp()
