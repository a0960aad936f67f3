"""Heads: per-target encodings [B, m, D] -> a predictive distribution over the targets' y.

* ``GaussianHead``: an independent Gaussian per target and output dim (mean, std).
* ``JointHead``: a joint Gaussian over a block of targets, one m x m covariance per output dim
  (it also reads the targets' inputs, for the smooth part of its covariance).
* ``NextEventHead``: the next event of a stream: a log-normal mixture over its waiting time and
  a categorical over its mark (``model.waiting_time``).

The regression heads keep their tensor names of the checkpoints they were first trained in (``head.0.weight``,
``joint_head.mean.0.weight``, ...): the fingerprints hash those names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import FeedForward, SelfAttention
from model.waiting_time import LogNormalMixture


def head_layers(d_model: int, d_out: int) -> list[nn.Module]:
    """LayerNorm, Linear, GELU, Linear: the layout of both heads' mean MLPs."""
    return [nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_out)]


class GaussianHead(nn.Sequential):
    """Encodings [B, m, D] -> mean, std [B, m, dy]; std >= min_std keeps the likelihood finite.

    A Sequential of ``head_layers`` whose last layer outputs the mean and the std's raw value.
    """

    def __init__(self, d_model: int, dim_y: int, min_std: float) -> None:
        super().__init__(*head_layers(d_model, 2 * dim_y))
        self.dim_y = dim_y
        self.min_std = min_std

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # The head stays float32 under bf16 autocast (training): a bf16 mean has 3 significant
        # digits, coarser than the noise the likelihood scores it against.
        with torch.autocast(z.device.type, enabled=False):
            mean, raw = super().forward(z.float()).chunk(2, dim=-1)
        std = self.min_std + F.softplus(raw)
        return mean, std

    def mean_state_dict(self) -> dict[str, Tensor]:
        """The weights of a ``head_layers(d_model, dim_y)`` MLP that computes this head's mean alone
        (the last layer's first dim_y outputs), to start another head's mean from this one."""
        last = f"{len(self) - 1}."
        return {k: v[: self.dim_y] if k.startswith(last) else v for k, v in self.state_dict().items()}


class JointHead(nn.Module):
    """Encodings of one block [B, m, D] and its inputs [B, m, dx] -> mean [B, m, dy], covariance
    [B, dy, m, m] (float64).

    The mean comes from an MLP; the covariance per output dim from a small transformer over the
    block's encodings, projected per target to P features a_i, a diagonal value d_i and, with a
    kernel bank (``cov_kernels`` K > 0), an amplitude s_i:

        Sigma_ij = a_i . a_j / P  +  delta_ij (min_cov_var + d_i)  +  s_i s_j sum_k w_k exp(-|x_i - x_j|^2 / 2 l_k^2)

    with per-block weights w_k >= 0 (from the mean of the block's encodings) over K length-scales
    l_k, geometric over ``kernel_scales`` (model units of x). Every term is positive semi-definite
    (the last is a Schur product of s s^T with a sum of RBF kernels) and the floor makes Sigma
    positive-definite. With ``kernel_rank`` r > 0 the amplitude s_i becomes an r-vector u_ik per
    kernel, and the last term sum_k w_k (u_ik . u_jk / r) exp(...): still a sum of Schur products of
    positive semi-definite matrices, but a target's weight on each length-scale is its own, and two
    targets on either side of a context point can be decorrelated (orthogonal u's), as in a GP
    posterior; r = 1 with u_ik = s_i is the shared-amplitude form. Why the bank: a low-rank part
    alone must build a smooth covariance from finitely many features, and what it misses lands in
    the diagonal, so its sample paths jitter; the bank is smooth in x by construction and full-rank,
    and leaves the features the context's corrections (measurements: checkpoints/HISTORY.md,
    cmanp-and-gp-rbf run 2).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_width: int,
        dim_y: int,
        cov_features: int,
        cov_layers: int,
        min_cov_var: float,
        cov_kernels: int,
        kernel_scales: tuple[float, float],
        kernel_rank: int,
    ) -> None:
        super().__init__()
        D = d_model
        self.dim_y, self.cov_features, self.min_cov_var = dim_y, cov_features, min_cov_var
        self.cov_kernels, self.kernel_rank = cov_kernels, kernel_rank
        self.mean = nn.Sequential(*head_layers(D, dim_y))
        self.cov_in = nn.Linear(D, D)
        self.cov_layers = nn.ModuleList(
            nn.Sequential(SelfAttention(D, heads), FeedForward(D, ff_width)) for _ in range(cov_layers)
        )
        # Per target and output dim: P features, the diagonal value and, with a bank, the amplitude
        # (or, with kernel_rank r, r weights per kernel).
        bank_outputs = cov_kernels * kernel_rank if kernel_rank else int(cov_kernels > 0)
        self.cov_out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, dim_y * (cov_features + 1 + bank_outputs)))
        if cov_kernels:
            scales = torch.logspace(math.log10(kernel_scales[0]), math.log10(kernel_scales[1]), cov_kernels)
            # A constant of the config, not a weight: kept out of the state dict (and the fingerprint's tensors).
            self.register_buffer("length_scales", scales.double(), persistent=False)
            self.kernel_weights = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, dim_y * cov_kernels))

    def init_mean_from(self, head: GaussianHead) -> None:
        """Start the mean MLP from a GaussianHead's mean (same layout), so that training this head
        on a trained marginal model begins at the marginal model's mean."""
        self.mean.load_state_dict(head.mean_state_dict())

    def forward(self, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        P, K = self.cov_features, self.cov_kernels
        h = self.cov_in(z)
        for layer in self.cov_layers:
            h = layer(h)
        out = self.cov_out(h).unflatten(-1, (self.dim_y, -1)).transpose(1, 2)  # [B, dy, m, P+1 (+1)]
        factors = out[..., :P].double() / math.sqrt(P)
        diag = self.min_cov_var + F.softplus(out[..., P].double())
        cov = factors @ factors.mT + torch.diag_embed(diag)
        if K:
            if self.kernel_rank:
                u = out[..., P + 1 :].double().unflatten(-1, (K, self.kernel_rank))  # [B, dy, m, K, r]
            else:  # one amplitude per target, shared by the kernels
                u = F.softplus(out[..., P + 1].double())[..., None, None].expand(-1, -1, -1, K, 1)
            weights = F.softplus(self.kernel_weights(h.mean(1)).double()).unflatten(-1, (self.dim_y, K))  # [B, dy, K]
            sq_dist = torch.cdist(x.double(), x.double()).square().unsqueeze(1)  # [B, 1, m, m]
            bank = torch.exp(-sq_dist / (2 * self.length_scales.square().view(-1, 1, 1)))  # [B, K, m, m]
            modulation = torch.einsum("bdikr,bdjkr->bdkij", u, u) / u.shape[-1]  # [B, dy, K, m, m]
            cov = cov + torch.einsum("bdk,bdkij,bkij->bdij", weights, modulation, bank)
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


class NextEventHead(nn.Sequential):
    """Encoding of the next-event query [B, D] -> waiting-time mixture [B, C] and mark log-probabilities [B, M].

    A Sequential of ``head_layers`` whose last layer outputs, per component, a mixture logit, a
    log-time location and a raw scale, then one logit per mark. Marks are independent of the wait
    given the history (as in intensity-free models), so both parts stay closed-form.
    """

    def __init__(self, d_model: int, components: int, num_marks: int, min_log_std: float) -> None:
        super().__init__(*head_layers(d_model, 3 * components + num_marks))
        self.components, self.num_marks, self.min_log_std = components, num_marks, min_log_std

    def forward(self, z: Tensor) -> tuple[LogNormalMixture, Tensor]:
        with torch.autocast(z.device.type, enabled=False):  # likelihood terms stay float32
            out = super().forward(z.float())
        C = self.components
        logits, loc, raw_scale, marks = out.split([C, C, C, self.num_marks], dim=-1)
        mixture = LogNormalMixture(logits.log_softmax(-1), loc, self.min_log_std + F.softplus(raw_scale))
        return mixture, marks.log_softmax(-1)
