"""CMANP-AND: joint (not-diagonal) Gaussian predictions over blocks of targets, autoregressively.

The regression CMANP's parts plus a joint head (``model.heads.JointHead``, docs/MODEL.md). For a
block of up to ``block_size`` (b_Q) targets the joint head gives a mean per target and one
covariance per output dimension.

More targets than one block are handled autoregressively: predict block 1 jointly, fold its
values (the true values when scoring, sampled values when sampling) into a *copy* of the state
with the encoder's exact update, then predict block 2, and so on. The caller's state is never
modified, and memory is constant in both the context size N and the number of targets M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.cmanp import CMANPConfig, regression_parts
from model.data.tasks import TaskBatch
from model.heads import JointHead, gaussian_log_prob
from model.neural_process import NeuralProcess
from model.state import CMANPState

# Sample paths are drawn in groups of at most this many per task, so peak memory is bounded.
SAMPLE_GROUP = 256


@dataclass(frozen=True)
class CMANPANDConfig(CMANPConfig):
    block_size: int = 50  # b_Q: targets per joint block
    cov_features: int = 20  # P: rank of the low-rank part of a block's covariance
    cov_layers: int = 2  # transformer layers over a block's target encodings
    min_cov_var: float = 1e-6  # floor of the diagonal term (the base head's min_std squared)
    # K: RBF kernels at length-scales geometric over kernel_scales (x's model units) for a smooth
    # full-rank part of the covariance (model.heads.JointHead); 0 = the low-rank part and diagonal only.
    cov_kernels: int = 0
    kernel_scales: tuple[float, float] = (0.05, 4.0)
    # r: each target's weight on each kernel is an r-vector (a rank-r modulation of the bank, which can
    # cut correlations across a context point); 0 = one shared amplitude per target (model.heads.JointHead).
    kernel_rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("block_size", "cov_features", "cov_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.min_cov_var > 0:
            raise ValueError(f"min_cov_var must be > 0, got {self.min_cov_var}")
        if self.cov_kernels < 0:
            raise ValueError(f"cov_kernels must be >= 0, got {self.cov_kernels}")
        if self.kernel_rank < 0 or (self.kernel_rank and not self.cov_kernels):
            raise ValueError(f"kernel_rank must be >= 0, and 0 without a kernel bank, got {self.kernel_rank}")
        object.__setattr__(self, "kernel_scales", tuple(float(v) for v in self.kernel_scales))
        low, high = self.kernel_scales
        if not 0 < low <= high:
            raise ValueError(f"kernel_scales must be 0 < low <= high, got {self.kernel_scales}")

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["kernel_scales"] = list(self.kernel_scales)
        if not self.cov_kernels:  # a head without a bank: its config, and so its fingerprint, as before the option
            del d["cov_kernels"], d["kernel_scales"]
        if not self.kernel_rank:  # likewise for a bank with shared amplitudes
            del d["kernel_rank"]
        return d

    def base(self) -> CMANPConfig:
        """The config of the marginal CMANP whose parts this model shares."""
        return CMANPConfig.from_dict({k: v for k, v in self.to_dict().items() if k in CMANPConfig.__dataclass_fields__})


class CMANPAND(NeuralProcess):
    """The regression CMANP's parts plus a joint head over blocks of targets."""

    architecture = "cmanp-and"
    can_sample = True
    trains_in_bf16 = False  # a joint head (mean and covariance factors) in bf16: not validated
    cfg: CMANPANDConfig

    def __init__(self, cfg: CMANPANDConfig) -> None:
        super().__init__(cfg, **regression_parts(cfg))
        self.joint_head = JointHead(
            cfg.d_model,
            cfg.n_heads,
            cfg.ff_width,
            cfg.dim_y,
            cfg.cov_features,
            cfg.cov_layers,
            cfg.min_cov_var,
            cfg.cov_kernels,
            cfg.kernel_scales,
            cfg.kernel_rank,
        )

    @property
    def joint_block_size(self) -> int | None:
        return self.cfg.block_size

    def init_joint_mean_from_base(self) -> None:
        """Start the joint mean MLP from the marginal head's mean, so training the joint head on a
        trained CMANP begins at the marginal model's mean."""
        self.joint_head.init_mean_from(self.head)

    def base_parameters(self) -> list[nn.Parameter]:
        """The parameters shared with a plain CMANP (everything but the joint head)."""
        joint = {id(p) for p in self.joint_head.parameters()}
        return [p for p in self.parameters() if id(p) not in joint]

    # ---- blockwise core, on states -----------------------------------------------------------
    def _block_size(self, block_size: int | None) -> int:
        block = self.cfg.block_size if block_size is None else block_size
        if not 1 <= block <= self.cfg.block_size:
            raise ValueError(f"block_size must be in 1..{self.cfg.block_size} (the model's b_Q), got {block}")
        return block

    def _joint_block(self, latents: Tensor, xb: Tensor) -> tuple[Tensor, Tensor]:
        """Checked queries of one block xb [B, m, dx] -> mean [B, m, dy], covariance [B, dy, m, m]."""
        return self.joint_head(self.target_encodings(latents, xb), xb)

    def _fold(self, state: CMANPState, x: Tensor, y: Tensor) -> CMANPState:
        """A new state with checked points (x, y) folded in: the encoder's update, unchecked."""
        return self.encoder.update(state, self.embed(x, y.to(x.dtype)))

    def _joint_log_prob(self, state: CMANPState, latents: Tensor, xq: Tensor, yq: Tensor, block: int) -> Tensor:
        """Checked targets, the state and its latents -> the joint log-density, one block after the other."""
        total = torch.zeros(xq.shape[0], dtype=torch.float64, device=xq.device)
        for start in range(0, xq.shape[1], block):
            xb, yb = xq[:, start : start + block], yq[:, start : start + block]
            total = total + gaussian_log_prob(*self._joint_block(latents, xb), yb)
            if start + block < xq.shape[1]:
                state = self._fold(state, xb, yb)
                latents = self.encoder.derive(state)
        return total

    def _sample_group(
        self, state: CMANPState, xq: Tensor, paths: int, block: int, generator: torch.Generator | None
    ) -> Tensor:
        """``paths`` joint sample paths per task -> [paths, B, m, dy]."""
        B, m = xq.shape[:2]
        copies = 1  # the first block is shared by every path; later blocks need one state per path
        latents = self.latents(state)
        draws = []
        for start in range(0, m, block):
            xb = xq[:, start : start + block].repeat(copies, 1, 1)
            mean, cov = self._joint_block(latents, xb)  # [copies*B, ...]
            chol = torch.linalg.cholesky(cov)
            n = paths // copies
            eps = torch.randn((n, *cov.shape[:-1], 1), generator=generator, dtype=cov.dtype, device=cov.device)
            y = mean.double() + (chol @ eps).squeeze(-1).transpose(-2, -1)  # [n, copies*B, mb, dy]
            y = y.reshape(paths * B, -1, self.cfg.dim_y).float()
            draws.append(y)
            if start + block < m:
                if copies == 1:  # from here on, one state per path, copy-major like y
                    copies = paths
                    state = state.tile(paths)
                    xb = xb.repeat(paths, 1, 1)
                state = self._fold(state, xb, y)
                latents = self.encoder.derive(state)
        return torch.cat(draws, dim=1).unflatten(0, (paths, B))

    # ---- public API ------------------------------------------------------------------------------
    def joint_predict(self, state: CMANPState, xq: Tensor) -> tuple[Tensor, Tensor]:
        """Joint Gaussian over one block of m <= block_size targets xq [B, m, dx]:
        mean [B, m, dy] (float32) and covariance [B, dy, m, m] (float64, one matrix per output dim)."""
        self.check_state(state)
        xq = self.check_queries(xq, state.batch_size)
        if xq.shape[1] > self.cfg.block_size:
            raise ValueError(
                f"{xq.shape[1]} targets exceed the joint block size {self.cfg.block_size}; use sample() for more"
            )
        return self._joint_block(self.latents(state), xq)  # latents cached per state

    def joint_log_prob(self, state: CMANPState, xq: Tensor, yq: Tensor, block_size: int | None = None) -> Tensor:
        """Autoregressive joint log-density of yq [B, M, dy] at xq [B, M, dx], summed over targets (float64 [B]).

        Blocks of ``block_size`` targets; each block's true values are folded into a copy of the state.
        """
        self.check_state(state)
        xq, yq = self.check_targets(xq, yq, state.batch_size)
        return self._joint_log_prob(state, self.latents(state), xq, yq, self._block_size(block_size))

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
        self.check_state(state)
        xq = self.check_queries(xq, state.batch_size)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        block = self._block_size(block_size)
        groups = [
            self._sample_group(state, xq, min(SAMPLE_GROUP, num_samples - s), block, generator)
            for s in range(0, num_samples, SAMPLE_GROUP)
        ]
        return torch.cat(groups, dim=0)

    # ---- training --------------------------------------------------------------------------------
    def loss(self, batch: TaskBatch) -> Tensor:
        """Minus the joint target LL per target; when the shared encoder and decoder train too (an
        unfrozen base), minus the marginal head's target LL as well, so that the marginal
        predictions (``predict``) stay matched to the encodings they read."""
        loss = super().loss(batch)
        if any(p.requires_grad for p in self.head.parameters()):
            loss = loss - NeuralProcess.log_likelihood(self, batch.xc, batch.yc, batch.xt, batch.yt).mean()
        return loss

    def log_likelihood(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Per-task joint target log-likelihood per target [B] (autoregressive over blocks of b_Q)."""
        # A transient state of a training batch: no fingerprint (computing one would hash the weights).
        if xc.shape[1] == 0:
            context = self.encoder.empty(xc.shape[0], fingerprint="")
        else:
            context = self.encoder.chunk_state(self.embed(xc, yc), fingerprint="")
        total = self._joint_log_prob(context, self.encoder.derive(context), xt, yt, self.cfg.block_size)
        return (total / xt.shape[1]).float()
