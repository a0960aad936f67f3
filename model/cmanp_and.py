"""CMANP-AND: joint (not-diagonal) Gaussian predictions over blocks of targets, autoregressively.

A CMANP plus a joint head (docs/MODEL.md). For a block of up to ``block_size`` (b_Q)
targets, the decoder's per-target encodings give:

* a mean per target, from an MLP;
* a covariance per output dimension, from a small transformer over the block's encodings,
  projected to P features per target: Sigma = A A^T / P + diag(min_cov_var + softplus(d)).
  The diagonal term keeps Sigma positive-definite by construction.

More targets than one block are handled autoregressively: predict block 1 jointly, fold its
values (the true values when scoring, sampled values when sampling) into a *copy* of the
accumulators with the exact update, then predict block 2, and so on. The caller's state is never
modified, and memory is constant in both the context size N and the number of targets M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cmanp import CMANP, CMANPConfig, FeedForward, SelfAttention
from model.state import CMANPState, merge_accumulators

# Sample paths are drawn in groups of at most this many per task, so peak memory is bounded.
SAMPLE_GROUP = 256


@dataclass(frozen=True)
class CMANPANDConfig(CMANPConfig):
    block_size: int = 50  # b_Q: targets per joint block
    cov_features: int = 20  # P: rank of the low-rank part of a block's covariance
    cov_layers: int = 2  # transformer layers over a block's target encodings
    min_cov_var: float = 1e-6  # floor of the diagonal term (the base head's min_std squared)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("block_size", "cov_features", "cov_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.min_cov_var > 0:
            raise ValueError(f"min_cov_var must be > 0, got {self.min_cov_var}")

    def base(self) -> CMANPConfig:
        """The config of the CMANP this model extends."""
        return CMANPConfig.from_dict({k: v for k, v in self.to_dict().items() if k in CMANPConfig.__dataclass_fields__})


class JointHead(nn.Module):
    """Per-target encodings of one block [B, m, D] -> mean [B, m, dy], covariance [B, dy, m, m] (float64)."""

    def __init__(self, cfg: CMANPANDConfig) -> None:
        super().__init__()
        D, dy, P = cfg.d_model, cfg.dim_y, cfg.cov_features
        self.cfg = cfg
        self.mean = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.GELU(), nn.Linear(D, dy))
        self.cov_in = nn.Linear(D, D)
        self.cov_layers = nn.ModuleList(
            nn.Sequential(SelfAttention(D, cfg.n_heads), FeedForward(D, cfg.ff_width)) for _ in range(cfg.cov_layers)
        )
        self.cov_out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, dy * (P + 1)))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        P = self.cfg.cov_features
        h = self.cov_in(z)
        for layer in self.cov_layers:
            h = layer(h)
        out = self.cov_out(h).unflatten(-1, (self.cfg.dim_y, P + 1)).transpose(1, 2)  # [B, dy, m, P+1]
        factors = out[..., :P].double() / math.sqrt(P)
        diag = self.cfg.min_cov_var + F.softplus(out[..., P].double())
        cov = factors @ factors.mT + torch.diag_embed(diag)
        return self.mean(z), cov


def gaussian_log_prob(mean: Tensor, cov: Tensor, y: Tensor) -> Tensor:
    """log N(y; mean, cov) per task, summed over targets and output dims (float64 [B]).

    mean, y [B, m, dy]; cov [B, dy, m, m] (one m x m matrix per output dim).
    """
    chol = torch.linalg.cholesky(cov)
    resid = (y.double() - mean.double()).transpose(1, 2).unsqueeze(-1)  # [B, dy, m, 1]
    white = torch.linalg.solve_triangular(chol, resid, upper=False)
    log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [B, dy]
    m = y.shape[1]
    return (-0.5 * (white.square().sum((-2, -1)) + log_det + m * math.log(2 * math.pi))).sum(-1)


class CMANPAND(CMANP):
    """A CMANP whose joint head predicts full Gaussians over blocks of targets."""

    architecture = "cmanp-and"
    cfg: CMANPANDConfig

    def __init__(self, cfg: CMANPANDConfig) -> None:
        super().__init__(cfg)
        self.joint_head = JointHead(cfg)

    def init_joint_mean_from_base(self) -> None:
        """Start the joint mean MLP from the marginal head's mean (same layer shapes), so training
        the joint head on a trained CMANP begins at the marginal model's mean."""
        dy = self.cfg.dim_y
        src, dst = self.head, self.joint_head.mean
        with torch.no_grad():
            for i in (0, 1):
                dst[i].load_state_dict(src[i].state_dict())
            dst[3].weight.copy_(src[3].weight[:dy])
            dst[3].bias.copy_(src[3].bias[:dy])

    def base_parameters(self) -> list[nn.Parameter]:
        """The parameters shared with a plain CMANP (everything but the joint head)."""
        joint = {id(p) for p in self.joint_head.parameters()}
        return [p for p in self.parameters() if id(p) not in joint]

    # ---- blockwise core, on accumulators ---------------------------------------------------------
    def _block_size(self, block_size: int | None) -> int:
        block = self.cfg.block_size if block_size is None else block_size
        if not 1 <= block <= self.cfg.block_size:
            raise ValueError(f"block_size must be in 1..{self.cfg.block_size} (the model's b_Q), got {block}")
        return block

    def _joint_block(self, log_norm: Tensor, value_sum: Tensor, xb: Tensor) -> tuple[Tensor, Tensor]:
        return self.joint_head(self._target_encodings(self._derive(log_norm, value_sum), xb))

    def _fold(self, log_norm: Tensor, value_sum: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The exact update of accumulators with points (x, y); returns new tensors."""
        return merge_accumulators(log_norm, value_sum, *self._accumulate(x, y.to(x.dtype)))

    def _joint_log_prob(self, log_norm: Tensor, value_sum: Tensor, xq: Tensor, yq: Tensor, block: int) -> Tensor:
        total = torch.zeros(xq.shape[0], dtype=torch.float64, device=xq.device)
        for start in range(0, xq.shape[1], block):
            xb, yb = xq[:, start : start + block], yq[:, start : start + block]
            total = total + gaussian_log_prob(*self._joint_block(log_norm, value_sum, xb), yb)
            if start + block < xq.shape[1]:
                log_norm, value_sum = self._fold(log_norm, value_sum, xb, yb)
        return total

    def _sample_group(
        self, log_norm: Tensor, value_sum: Tensor, xq: Tensor, paths: int, block: int, generator: torch.Generator | None
    ) -> Tensor:
        """``paths`` joint sample paths per task -> [paths, B, m, dy]."""
        B, m = xq.shape[:2]
        copies = 1  # the first block is shared by every path; later blocks need one state per path
        draws = []
        for start in range(0, m, block):
            xb = xq[:, start : start + block].repeat(copies, 1, 1)
            mean, cov = self._joint_block(log_norm, value_sum, xb)  # [copies*B, ...]
            chol = torch.linalg.cholesky(cov)
            n = paths // copies
            eps = torch.randn((n, *cov.shape[:-1], 1), generator=generator, dtype=cov.dtype, device=cov.device)
            y = mean.double() + (chol @ eps).squeeze(-1).transpose(-2, -1)  # [n, copies*B, mb, dy]
            y = y.reshape(paths * B, -1, self.cfg.dim_y).float()
            draws.append(y)
            if start + block < m:
                if copies == 1:
                    copies = paths
                    log_norm, value_sum = log_norm.repeat(paths, 1, 1, 1), value_sum.repeat(paths, 1, 1, 1, 1)
                    xb = xb.repeat(paths, 1, 1)
                log_norm, value_sum = self._fold(log_norm, value_sum, xb, y)
        return torch.cat(draws, dim=1).unflatten(0, (paths, B))

    # ---- public API ------------------------------------------------------------------------------
    def joint_predict(self, state: CMANPState, xq: Tensor) -> tuple[Tensor, Tensor]:
        """Joint Gaussian over one block of m <= block_size targets xq [B, m, dx]:
        mean [B, m, dy] (float32) and covariance [B, dy, m, m] (float64, one matrix per output dim)."""
        self._check_state(state)
        xq = self._as_points(xq, self.cfg.dim_x, "xq", state.batch_size)
        if xq.shape[1] > self.cfg.block_size:
            raise ValueError(
                f"{xq.shape[1]} targets exceed the joint block size {self.cfg.block_size}; use sample() for more"
            )
        return self.joint_head(self._target_encodings(self.latents(state), xq))  # latents cached per state

    def joint_log_prob(self, state: CMANPState, xq: Tensor, yq: Tensor, block_size: int | None = None) -> Tensor:
        """Autoregressive joint log-density of yq [B, M, dy] at xq [B, M, dx], summed over targets (float64 [B]).

        Blocks of ``block_size`` targets; each block's true values are folded into a copy of the state.
        """
        self._check_state(state)
        xq = self._as_points(xq, self.cfg.dim_x, "xq", state.batch_size)
        yq = self._as_points(yq, self.cfg.dim_y, "yq", state.batch_size)
        if xq.shape[1] != yq.shape[1]:
            raise ValueError(f"xq has {xq.shape[1]} points but yq has {yq.shape[1]}")
        return self._joint_log_prob(state.log_norm, state.value_sum, xq, yq, self._block_size(block_size))

    def sample(
        self,
        state: CMANPState,
        xq: Tensor,
        num_samples: int,
        block_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Joint sample paths [S, B, m, dy] at xq [B, m, dx], any m; each block's sampled values are
        folded into a per-path copy of the state. ``state`` is not modified."""
        self._check_state(state)
        xq = self._as_points(xq, self.cfg.dim_x, "xq", state.batch_size)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        block = self._block_size(block_size)
        groups = [
            self._sample_group(
                state.log_norm, state.value_sum, xq, min(SAMPLE_GROUP, num_samples - s), block, generator
            )
            for s in range(0, num_samples, SAMPLE_GROUP)
        ]
        return torch.cat(groups, dim=0)

    # ---- training --------------------------------------------------------------------------------
    def log_likelihood(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Per-task joint target log-likelihood per target [B] (autoregressive over blocks of b_Q)."""
        total = self._joint_log_prob(*self._context_accumulators(xc, yc), xt, yt, self.cfg.block_size)
        return (total / xt.shape[1]).float()
