"""Initial weights for the point and query embeddings that keep the points apart.

Why: PyTorch's default ``nn.Linear`` init draws weights with variance 1 / (3 fan_in) and biases of
the same scale, so every layer of a GELU MLP shrinks the input-dependent part of its output by about
6x while the biases add a constant part. After the embeddings' four layers (and the affine-free
LayerNorm the encoder applies), two different points get nearly the same embedding: the spread of
the embeddings across points is ~10% of their norm (``embedding_spread``). The encoder's attention
then starts out unable to tell points apart, and the model must leave a long plateau before it can
condition on anything. With one input dimension the plateau is short; with two (pixel coordinates)
it is not: a small 2-D model on y = s sin(3 x1) stayed at the unconditional solution for 600 steps
from torch's init and learned the task within 150 steps from this one (checkpoints/HISTORY.md,
cmanp-mnist, session 15).

The fix is the standard variance-preserving (He) init: weights N(0, 2 / fan_in), zero biases, for
every linear layer of the model's ``context_embed`` and ``query_embed``. The rest of the model keeps
torch's init. It is a training choice (``TrainConfig.embed_init``), not part of the model's config:
a checkpoint's weights do not depend on how they started.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EmbedInit = Literal["torch", "variance_preserving"]
EMBED_INITS: tuple[EmbedInit, ...] = ("torch", "variance_preserving")


def init_embeddings(net: nn.Module, scheme: EmbedInit) -> None:
    """Re-initialise every linear layer of ``net.context_embed`` and ``net.query_embed`` by ``scheme``."""
    if scheme not in EMBED_INITS:
        raise ValueError(f"unknown embed_init {scheme!r}; choose from {EMBED_INITS}")
    if scheme == "torch":
        return
    for name in ("context_embed", "query_embed"):
        embedding = getattr(net, name, None)
        if not isinstance(embedding, nn.Module):
            raise ValueError(f"embed_init {scheme!r} needs a model with a {name} module")
        for layer in embedding.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)


@torch.no_grad()
def embedding_spread(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """How far apart the points (x [1, n, dx], y [1, n, dy]) are after the data embedding and the
    encoder's LayerNorm: the norm of their per-feature std over the norm of their mean embedding."""
    emb = F.layer_norm(net.embed(x, y)[0], (net.cfg.d_model,))
    return float(emb.std(0).norm() / emb.mean(0).norm())
