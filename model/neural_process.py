"""A streaming Neural Process composed of parts: data embedding + CMAB encoder + decoder + head.

Shapes: B = batch, N = context points, M = queries, dx / dy = x / y features per point; the
encoder's own shapes are in ``model.cmab``.

The parts, each given to the constructor:

* ``context_embed``: the model family's data embedding. ``pack(x, y)`` makes one tensor of a
  chunk of points ([x | y] for regression); calling it embeds packed points [B, n, F] -> [B, n, D].
* ``encoder``: the CMAB encoder and its exact state algebra (``model.cmab``).
* ``query_embed``: embeds queries [B, m, dx] -> [B, m, D].
* ``decoder``: queries read the encoder's latents -> per-target encodings (``model.decoder``).
* ``head``: encodings -> (mean, std) per target (``model.heads.GaussianHead``).

A family is a thin subclass that builds these parts from its config and names its
``architecture`` (the checkpoint field that picks the class on load). What a model can do beyond
marginal predictions is declared here (``joint_block_size``, ``can_sample``, ``session_kind``), so
that callers ask the model instead of testing its class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from model.cmab import CMABEncoder
from model.data.tasks import TaskBatch
from model.identity import FingerprintedModel, check_owner
from model.layout import keep_v1_layout, v1_order
from model.state import CMANPState


class ModelConfig(Protocol):
    """What the generic model reads from a family's config."""

    dim_x: int
    dim_y: int

    def to_dict(self) -> dict: ...


class NeuralProcess(FingerprintedModel):
    """The session API (empty_state, update, condition, merge, predict) over composed parts."""

    architecture: ClassVar[str]  # recorded in checkpoints, so loading builds the right class
    session_kind: ClassVar[str] = "regression"  # the kind of session the service opens for it
    can_sample: ClassVar[bool] = False  # whether ``sample`` draws joint sample paths
    trains_in_bf16: ClassVar[bool] = True  # whether bf16 autocast training is validated for it

    def __init__(
        self,
        cfg: ModelConfig,
        context_embed: nn.Module,
        encoder: CMABEncoder,
        query_embed: nn.Module,
        decoder: nn.Module,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # Registration order (and model.layout's one exception) is parameter order, which an
        # optimiser's saved moments depend on: they are positional.
        self.context_embed = context_embed
        self.encoder = encoder
        self.query_embed = query_embed
        self.decoder = decoder
        self.head = head
        keep_v1_layout(self)  # the tensor names and order of every checkpoint so far

    @property
    def joint_block_size(self) -> int | None:
        """b_Q of a joint head (covariances over blocks of targets, ``joint_predict``); None: no joint head."""
        return None

    # ---- identity (fingerprint, train, load_state_dict and device come from FingerprintedModel) ----
    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """nn.Module's, in the v1 order of ``model.layout`` (``parameters()`` follows it)."""
        return v1_order(self, super().named_parameters(prefix, recurse, remove_duplicate), prefix)

    # ---- validation -------------------------------------------------------------------------
    def _as_points(self, t: Tensor, dim: int, name: str, batch: int | None = None, finite: bool = True) -> Tensor:
        """Check a [B, n, dim] numeric tensor (of finite numbers, if ``finite``) and move it to the
        model's device/dtype."""
        t = torch.as_tensor(t)
        if t.ndim != 3:
            raise ValueError(f"{name} must have shape [batch, points, {dim}], got {tuple(t.shape)}")
        if t.shape[-1] != dim:
            raise ValueError(f"{name} has {t.shape[-1]} features per point, the model expects {dim}")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"{name} has batch size {t.shape[0]}, expected {batch}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} has no points")
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
        t = t.to(self.device, torch.float32)
        if finite:
            _check_finite(t, name)
        return t

    def _context_points(self, x: Tensor, y: Tensor, batch: int | None = None) -> Tensor:
        """Checked context points (x [B,k,dx], y [B,k,dy]), packed by the data embedding [B, k, F]."""
        x = self._as_points(x, self.cfg.dim_x, "x", batch, finite=False)
        y = self._as_points(y, self.cfg.dim_y, "y", x.shape[0], finite=False)
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"x has {x.shape[1]} points but y has {y.shape[1]}")
        points = self.context_embed.pack(x, y)
        if not torch.isfinite(points).all():  # one pass over both; name the culprit only on failure
            _check_finite(x, "x")
            _check_finite(y, "y")
        return points

    def check_queries(self, xq: Tensor, batch: int) -> Tensor:
        """Queries xq [B, m, dx] checked (finite, batch B) and on the model's device, float32."""
        return self._as_points(xq, self.cfg.dim_x, "xq", batch)

    def check_targets(self, xq: Tensor, yq: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """Queries and their values (xq [B, m, dx], yq [B, m, dy]) checked like ``check_queries``."""
        xq = self.check_queries(xq, batch)
        yq = self._as_points(yq, self.cfg.dim_y, "yq", batch)
        if xq.shape[1] != yq.shape[1]:
            raise ValueError(f"xq has {xq.shape[1]} points but yq has {yq.shape[1]}")
        return xq, yq

    def check_state(self, state: CMANPState, name: str = "state") -> None:
        """Raise ValueError unless ``state`` is a CMANPState built by this model."""
        check_owner(state, CMANPState, self.fingerprint, name)

    # ---- state --------------------------------------------------------------------------------
    def embed(self, x: Tensor, y: Tensor) -> Tensor:
        """Data embeddings [B, k, D] of checked points (x [B,k,dx], y [B,k,dy]), for ``encoder.update``."""
        return self.context_embed(self.context_embed.pack(x, y))

    def empty_state(self, batch_size: int = 1) -> CMANPState:
        """The state of an empty context; predicting from it gives the model's prior."""
        return self.encoder.empty(batch_size, self.fingerprint)

    def update(self, state: CMANPState, x: Tensor, y: Tensor) -> CMANPState:
        """Fold k new points (x [B,k,dx], y [B,k,dy]) into the state; cost is O(k), not O(N)."""
        self.check_state(state)
        return self.encoder.update(state, self.context_embed(self._context_points(x, y, state.batch_size)))

    def condition(self, x: Tensor, y: Tensor, chunk_size: int | None = None) -> CMANPState:
        """Same as update(empty_state, x, y); with chunk_size, peak memory does not grow with N."""
        points = self._context_points(x, y)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        state = self.empty_state(points.shape[0])
        step = chunk_size or points.shape[1]
        for i in range(0, points.shape[1], step):
            state = self.encoder.update(state, self.context_embed(points[:, i : i + step]))
        return state

    def merge(self, a: CMANPState, b: CMANPState) -> CMANPState:
        """The state of the union of both point sets (exact; associative and commutative)."""
        self.check_state(a, "a")
        self.check_state(b, "b")
        return self.encoder.merge(a, b)

    def state_from_bytes(self, blob: bytes) -> CMANPState:
        """Parse and validate a blob from ``CMANPState.to_bytes`` made by this model."""
        return CMANPState.from_bytes(
            blob, fingerprint=self.fingerprint, dims=self.encoder.state_dims, device=self.device
        )

    # ---- derived latents and decoding ------------------------------------------------------------
    def latents(self, state: CMANPState) -> Tensor:
        """The encoder's latents [K, B, L, D] for a state, derived once per state object and cached."""
        self.check_state(state)
        grad = torch.is_grad_enabled()
        if not grad:
            cached = state.derived(self.fingerprint)
            if cached is not None:
                return cached
        latents = self.encoder.derive(state)
        if not grad:  # never pin an autograd graph to a state object
            state.keep_derived(self.fingerprint, latents)
        return latents

    def target_encodings(self, latents: Tensor, xq: Tensor) -> Tensor:
        """The decoder's per-target representation [B, m, D] of checked queries, before a head."""
        return self.decoder(self.query_embed(xq), latents)

    def predict(self, state: CMANPState, xq: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance, each [B, m, dy], at queries xq [B, m, dx]."""
        latents = self.latents(state)
        xq = self.check_queries(xq, state.batch_size)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        step = chunk_size or xq.shape[1]
        means, variances = [], []
        for i in range(0, xq.shape[1], step):
            mean, std = self.head(self.target_encodings(latents, xq[:, i : i + step]))
            means.append(mean)
            variances.append(std.square())
        return torch.cat(means, dim=1), torch.cat(variances, dim=1)

    # ---- training -----------------------------------------------------------------------------
    def forward(self, xc: Tensor, yc: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        """One differentiable pass: context [B,N,*] and targets [B,M,dx] -> mean, std [B,M,dy].

        The same function as ``predict(condition(xc, yc), xt)``, but the data cross-attention
        is one plain softmax over the whole context (no accumulators); N = 0 gives the prior.
        """
        if xc.shape[1] == 0:
            latents = self.encoder.prior(xc.shape[0])
        else:
            latents = self.encoder.encode(self.embed(xc, yc))
        return self.head(self.target_encodings(latents, xt))

    def loss(self, batch: TaskBatch) -> Tensor:
        """The training loss of a batch of tasks: minus the target log-likelihood, averaged over
        targets, then over tasks (``model.train`` minimises it)."""
        return -self.heldout_score(batch).mean()

    def beta_nll_loss(self, batch: TaskBatch, beta: float) -> Tensor:
        """The beta-NLL training loss (Seitzer et al., ICLR 2022): each target's Gaussian NLL weighted
        by its predictive variance to the power beta, the weight taken as a constant (no gradient).

        Why: under the plain NLL the mean's gradient at a target is (mean - y) / var, so targets the
        model is unsure of teach the mean least, and a model can settle at sharp stds on easy targets
        (an image's background) with a mean that ignores the context. beta = 1 gives the mean the
        squared error's gradient and still trains the std; beta = 0 is the plain NLL. Averaged like
        ``loss``: over targets, then tasks.
        """
        mean, std = self(batch.xc, batch.yc, batch.xt)
        nll = -torch.distributions.Normal(mean, std).log_prob(batch.yt)
        return (std.detach().pow(2 * beta) * nll).sum(-1).mean(-1).mean()

    def heldout_score(self, batch: TaskBatch) -> Tensor:
        """Per-task mean target log-likelihood [B] of a batch (``model.train`` keeps the weights
        whose mean over the held-out batches is highest)."""
        return self.log_likelihood(batch.xc, batch.yc, batch.xt, batch.yt)

    def log_likelihood(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Per-task mean target log-likelihood [B] (summed over output dims)."""
        mean, std = self(xc, yc, xt)
        return torch.distributions.Normal(mean, std).log_prob(yt).sum(-1).mean(-1)


def _check_finite(t: Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
