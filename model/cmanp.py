"""CMANP: the regression family's Constant Memory Attentive Neural Process (Feng et al., ICML 2024).

Its parts: an MLP on ``[x | y]`` per context point, the CMAB encoder (``model.cmab``), an MLP on
``x`` per query, the decoder (``model.decoder``) and a Gaussian head (``model.heads``), composed by
``model.neural_process.NeuralProcess``. The maths is in docs/MODEL.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model.blocks import mlp_layers
from model.cmab import CMABEncoder
from model.decoder import Decoder
from model.fourier_features import FourierFeatures
from model.heads import GaussianHead
from model.neural_process import NeuralProcess


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
    # sin/cos of x at this many periods, geometric over fourier_periods, beside x (model.fourier_features).
    fourier_features: int = 0
    fourier_periods: tuple[float, float] = (0.1, 8.0)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("dim_x", "dim_y", "d_model", "n_heads", "n_blocks", "n_latents", "ff_width", "embed_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "x_range", tuple(float(v) for v in self.x_range))
        object.__setattr__(self, "fourier_periods", tuple(float(v) for v in self.fourier_periods))
        _ = self.x_features  # raises on a bad ladder

    @property
    def x_features(self) -> FourierFeatures:
        return FourierFeatures(self.dim_x, self.fourier_features, self.fourier_periods)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["x_range"] = list(self.x_range)
        d["fourier_periods"] = list(self.fourier_periods)
        if not self.fourier_features:  # the paper's model: its config, and so its fingerprint, as before the option
            del d["fourier_features"], d["fourier_periods"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CMANPConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


class PairEmbedding(nn.Sequential):
    """The regression family's data embedding: an MLP on the pair ``[features(x) | y]`` of each point.

    A Sequential of the MLP's layers, so its tensors keep the names ``context_embed.0.weight``, ...
    """

    def __init__(self, features: FourierFeatures, dim_y: int, d_model: int, depth: int) -> None:
        super().__init__(*mlp_layers(features.dim_out + dim_y, d_model, depth))
        self.features = features  # a plain function, not a module: the layers stay the Sequential's only parts

    def pack(self, x: Tensor, y: Tensor) -> Tensor:
        """x [B, k, dx], y [B, k, dy] -> the embedding's input [B, k, features + dy]."""
        return torch.cat([self.features(x), y], dim=-1)


class QueryEmbedding(nn.Sequential):
    """The regression family's query embedding: an MLP on ``features(x)`` (names ``query_embed.0.weight``, ...)."""

    def __init__(self, features: FourierFeatures, d_model: int, depth: int) -> None:
        super().__init__(*mlp_layers(features.dim_out, d_model, depth))
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.features(x))


def regression_parts(cfg: CMANPConfig) -> dict[str, Any]:
    """The parts of a regression CMANP, as ``NeuralProcess`` keyword arguments.

    Built in this order on purpose: a seeded model draws its initial weights in the order of the
    checkpoints' original code, so ``torch.manual_seed(s); CMANP(cfg)`` keeps giving the same weights.
    """
    D = cfg.d_model
    return {
        "context_embed": PairEmbedding(cfg.x_features, cfg.dim_y, D, cfg.embed_depth),
        "encoder": CMABEncoder(D, cfg.n_heads, cfg.n_blocks, cfg.n_latents, cfg.ff_width),
        "query_embed": QueryEmbedding(cfg.x_features, D, cfg.embed_depth),
        "decoder": Decoder(cfg.n_blocks, D, cfg.n_heads, cfg.ff_width),
        "head": GaussianHead(D, cfg.dim_y, cfg.min_std),
    }


class CMANP(NeuralProcess):
    """CMANP with an exact, constant-memory streaming state: marginal Gaussian predictions."""

    architecture = "cmanp"
    cfg: CMANPConfig

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__(cfg, **regression_parts(cfg))
