"""The decoder: target queries read every CMAB block's output latents, one block after the other.

Shapes: B = batch, m = targets, K = blocks, L = latents per block, D = d_model. It turns embedded
queries [B, m, D] and the encoder's latents [K, B, L, D] into per-target encodings [B, m, D], which
a head (``model.heads``) maps to a predictive distribution.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.blocks import CrossAttention, FeedForward


class DecoderLayer(nn.Module):
    """Queries read one block's output latents, then an FF."""

    def __init__(self, d_model: int, heads: int, ff_width: int) -> None:
        super().__init__()
        self.cross = CrossAttention(d_model, heads)
        self.ff = FeedForward(d_model, ff_width)

    def forward(self, z: Tensor, latents: Tensor) -> Tensor:
        return self.ff(self.cross(z, latents))


class Decoder(nn.ModuleList):
    """One DecoderLayer per block (a ModuleList, so its tensors are named ``0.cross...``, ``1.cross...``)."""

    def __init__(self, blocks: int, d_model: int, heads: int, ff_width: int) -> None:
        super().__init__(DecoderLayer(d_model, heads, ff_width) for _ in range(blocks))

    def forward(self, z: Tensor, latents: Tensor) -> Tensor:
        """Embedded queries z [B, m, D], latents [K, B, L, D] -> per-target encodings [B, m, D]."""
        for k, layer in enumerate(self):
            z = layer(z, latents[k])
        return z
