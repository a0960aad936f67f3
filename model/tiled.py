"""Tiled sessions: one trained 1-D CMANP run on a pyramid of zoomed tiles of the x range.

Why: a CMANP reads its whole context through a fixed set of latents, so what it can resolve
across its x range is bounded. Measured on the broad prior, the shipped general model falls
further behind the exact GP as a session grows (0.4 nats per point at N = 50, 0.9 at N = 1,000),
and on real windows of 60 readings it blurs fine detail (monthly cycles, sharp bends) that a
fitted GP resolves. Zooming in fixes that without retraining: cut the x range into k tiles, map
each tile (plus an overlap into its neighbours) onto the model's full x range, and keep one state
per tile. A stretched draw from a broad prior is still a draw from it (its length-scales and
periods grow by the zoom), so each tile is an in-prior task with fewer points over more room.

Zooming costs where data are sparse: a tile that holds 3 points knows less than the whole range
does. So the state keeps a pyramid of levels (``levels``: 1 and 3 tiles for the shipped default),
and a query reads the finest level whose tiles around it hold enough points: a level takes over
from the coarser ones as its local point count rises from ``min_points`` to ``full_points``. The count
is the tiles' own ``num_points``, a function of the set of points, so predictions still do not
depend on the order or chunking of updates, and states still merge exactly (tile by tile).

Within a level, neighbouring tiles' predictions are blended over a ramp (``blend``, a share of a
tile's width) so the predictive mean has no jumps at tile edges. A query's predictive is the
mixture over (level, tile) with those weights, returned as its mean and variance (the moment-
matched Gaussian, the form every regression caller reads).

Costs: the state is ``sum(levels)`` CMANP states (4 for levels 1 and 3), a point is folded into
about 1 + 1.5 (len(levels) - 1) tiles, and a fresh predict derives the latents of the tiles that
carry weight at its queries (decoding each query at those tiles only); the model card has the
measured costs. 1-D inputs only.

The state is a ``CMANPState`` of batch ``B * T`` (T tiles per session, session-major, level by
level), owned by this wrapper's fingerprint (a hash of the inner model's and the tiling), so its
blob format, merge and concat are the plain model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from model.identity import check_owner, fingerprint_of
from model.neural_process import NeuralProcess
from model.state import CMANPState


@dataclass(frozen=True)
class TilingConfig:
    levels: tuple[int, ...] = (1, 2, 4, 8)  # tiles per level, coarse to fine; the first is 1
    min_points: float = 15.0  # a level starts to take over where its tiles hold this many points
    # ... and has taken over where they hold this many (None: twice ``min_points``). A short ramp
    # keeps short sessions on the coarse level (one tile to derive per predict) and still lets a
    # session of a few dozen points read its finest level alone.
    full_points: float | None = None
    overlap: float = 0.25  # each tile reaches this share of its width into each neighbour
    blend: float = 0.1  # half-width of the ramp between neighbouring tiles, a share of a tile's width

    def __post_init__(self) -> None:
        levels = tuple(int(k) for k in self.levels)
        object.__setattr__(self, "levels", levels)
        if not levels or levels[0] != 1 or any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError(f"levels must start at 1 and increase, got {levels}")
        if not (math.isfinite(self.min_points) and self.min_points > 0):
            raise ValueError(f"min_points must be finite and > 0, got {self.min_points}")
        if self.full_points is None:
            object.__setattr__(self, "full_points", 2.0 * self.min_points)
        elif not (math.isfinite(self.full_points) and self.full_points > self.min_points):
            raise ValueError(f"need a finite full_points > min_points, got {self.full_points} and {self.min_points}")
        if not 0 < self.blend <= self.overlap:
            # The ramp must stay inside the region both neighbours were conditioned on.
            raise ValueError(f"need 0 < blend <= overlap, got blend {self.blend}, overlap {self.overlap}")

    @property
    def num_tiles(self) -> int:
        return sum(self.levels)

    def to_dict(self) -> dict:
        """As a card writes it; ``full_points`` only where it is not the default (so a config from
        before the setting keeps its fingerprint)."""
        d = {**asdict(self), "levels": list(self.levels)}
        if self.full_points == 2.0 * self.min_points:
            del d["full_points"]
        return d


class TiledNP(nn.Module):
    """A regression session API (empty_state, update, condition, merge, predict) over a pyramid of
    zoomed tiles, each a state of the wrapped 1-D ``NeuralProcess``."""

    session_kind = "regression"
    can_sample = False
    joint_block_size = None

    def __init__(self, net: NeuralProcess, tiling: TilingConfig) -> None:
        super().__init__()
        if net.cfg.dim_x != 1:
            raise ValueError(f"tiling needs a model with 1-D inputs, this one has dim_x = {net.cfg.dim_x}")
        if net.joint_block_size is not None:
            raise ValueError("tiling mixes marginal predictions; a joint model's covariances would not survive it")
        self.net = net
        self.tiling = tiling
        self.cfg = net.cfg
        self.architecture = net.architecture
        self.info = getattr(net, "info", {})
        lo, hi = (float(v) for v in net.cfg.x_range)
        # Per tile (level by level): its core [core_lo, core_hi] and its reach [reach_lo, reach_hi],
        # the x interval mapped onto the model's range. Level 1 is the identity map.
        core_lo, core_hi, reach_lo, reach_hi, level = [], [], [], [], []
        for i, k in enumerate(tiling.levels):
            width = (hi - lo) / k
            reach = tiling.overlap * width if k > 1 else 0.0
            for j in range(k):
                core_lo.append(lo + j * width)
                core_hi.append(lo + (j + 1) * width)
                reach_lo.append(lo + j * width - reach)
                reach_hi.append(lo + (j + 1) * width + reach)
                level.append(i)
        for name, values in (
            ("core_lo", core_lo),
            ("core_hi", core_hi),
            ("reach_lo", reach_lo),
            ("reach_hi", reach_hi),
        ):
            self.register_buffer(name, torch.tensor(values), persistent=False)
        self.register_buffer("level", torch.tensor(level), persistent=False)
        self.register_buffer("first", torch.tensor([j == 0 for k in tiling.levels for j in range(k)]), persistent=False)
        self.register_buffer(
            "last", torch.tensor([j == k - 1 for k in tiling.levels for j in range(k)]), persistent=False
        )
        self.x_lo, self.x_hi = lo, hi
        self._fingerprint = fingerprint_of({"tiled": net.fingerprint, "tiling": tiling.to_dict()}, {})

    # ---- identity ---------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return self.net.device

    @property
    def num_tiles(self) -> int:
        return self.tiling.num_tiles

    def check_state(self, state: CMANPState, name: str = "state") -> int:
        """The number of sessions in a state this wrapper built; ValueError otherwise."""
        check_owner(state, CMANPState, self.fingerprint, name)
        if state.batch_size % self.num_tiles:
            raise ValueError(f"{name} has {state.batch_size} tiles, not a multiple of {self.num_tiles}")
        return state.batch_size // self.num_tiles

    # ---- geometry -----------------------------------------------------------------------------------
    def _zoom(self, x: Tensor) -> Tensor:
        """x [..., 1] in model units -> every tile's local x [..., T]: its reach mapped onto the range."""
        u = (x - self.reach_lo) / (self.reach_hi - self.reach_lo)
        return self.x_lo + (self.x_hi - self.x_lo) * u

    def _members(self, x: Tensor) -> Tensor:
        """[..., T] bool: the tiles a point at x [..., 1] belongs to. Edge tiles also take every point
        beyond the range, as the plain model would see them."""
        inside = (x >= self.reach_lo) & (x <= self.reach_hi)
        return inside | (self.first & (x < self.reach_lo)) | (self.last & (x > self.reach_hi))

    def _tile_weights(self, x: Tensor) -> Tensor:
        """[..., T]: each level's partition of unity over its tiles at x [..., 1] (trapezoids around
        the cores with ramps of half-width ``blend`` tiles; edge tiles hold everything beyond)."""
        width = self.core_hi - self.core_lo
        centre = (self.core_lo + self.core_hi) / 2
        ramp = self.tiling.blend * width
        w = ((0.5 * width + ramp - (x - centre).abs()) / (2 * ramp)).clamp(0, 1)
        w = torch.where((self.first & (x < centre)) | (self.last & (x > centre)), torch.ones_like(w), w)
        total = torch.zeros(*w.shape[:-1], len(self.tiling.levels), dtype=w.dtype, device=w.device)
        total = total.index_add(-1, self.level, w)
        return w / total.index_select(-1, self.level)

    def _mixture_weights(self, x: Tensor, num_points: Tensor) -> Tensor:
        """[B, m, T] weights of (level, tile) at queries x [B, m, 1], given tile counts [B, T]."""
        w = self._tile_weights(x)  # [B, m, T]
        n_levels = len(self.tiling.levels)
        counts = torch.zeros(*w.shape[:-1], n_levels, dtype=w.dtype, device=w.device)
        counts = counts.index_add(-1, self.level, w * num_points.unsqueeze(1).to(w.dtype))  # [B, m, levels]
        start, full = self.tiling.min_points, self.tiling.full_points
        take = ((counts - start) / (full - start)).clamp(0, 1)  # how far each level has taken over
        take[..., 0] = 1.0
        # pi_l = take_l * prod_{l' > l} (1 - take_l'): the finest adequate level wins, smoothly.
        keep = torch.flip(torch.cumprod(torch.flip(1 - take, [-1]), -1), [-1])  # prod_{l' >= l} (1 - take_l')
        after = torch.cat([keep[..., 1:], torch.ones_like(keep[..., :1])], -1)  # prod_{l' > l}
        level_weight = take * after  # [B, m, levels], sums to 1
        return w * level_weight.index_select(-1, self.level)

    # ---- the session API ----------------------------------------------------------------------------
    def empty_state(self, batch_size: int = 1) -> CMANPState:
        """Every tile's empty state, for ``batch_size`` sessions."""
        return self.net.encoder.empty(batch_size * self.num_tiles, self.fingerprint)

    def _checked_points(self, x: Tensor, y: Tensor, batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Points (x [B,k,1], y [B,k,dy]) checked by the plain model's rules, float32 on its device."""
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        return self.net.check_targets(x, y, batch if batch is not None else (x.shape[0] if x.ndim else 1))

    def update(self, state: CMANPState, x: Tensor, y: Tensor) -> CMANPState:
        """Fold k points (x [B,k,1], y [B,k,dy]) into the tiles they belong to; O(k) as the plain model."""
        B = self.check_state(state)
        x, y = self._checked_points(x, y, B)
        T = self.num_tiles
        members = self._members(x)  # [B, k, T]
        local = self._zoom(x)  # [B, k, T]
        log_norm, value_sum = state.log_norm.clone(), state.value_sum.clone()
        num_points = state.num_points.clone()
        # Tiles that receive the same number of points fold them in one batched update (a one-point
        # post is one call); the others are grouped by that number.
        sizes = members.sum(1).flatten()  # [B*T]
        touched = sizes > 0
        for size in sizes.unique().tolist():
            if size == 0:
                continue
            tiles = torch.nonzero(sizes == size).flatten()
            b, j = tiles // T, tiles % T
            pick = members[b, :, j]  # [G, k]
            order = torch.argsort((~pick).to(torch.int8), dim=1, stable=True)[:, :size]  # members first, in order
            zx = local[b.unsqueeze(1), order, j.unsqueeze(1)].unsqueeze(-1)  # [G, size, 1]
            zy = y[b.unsqueeze(1), order]  # [G, size, dy]
            sub = CMANPState(log_norm[tiles], value_sum[tiles], num_points[tiles], self.fingerprint)
            sub = self.net.encoder.update(sub, self.net.embed(zx, zy))
            log_norm[tiles], value_sum[tiles], num_points[tiles] = sub.log_norm, sub.value_sum, sub.num_points
        new = CMANPState(log_norm, value_sum, num_points, self.fingerprint, state.version + 1)
        cached = state.derived(self.fingerprint)
        if cached is not None and not torch.is_grad_enabled():
            # Tiles the points did not reach keep their accumulators, so their derived latents stay
            # valid: a predict after a one-point post re-derives one tile per level, not all of them.
            carried = cached.clone()
            carried[:, touched] = torch.nan
            new.keep_derived(self.fingerprint, carried)
        return new

    def condition(self, x: Tensor, y: Tensor, chunk_size: int | None = None) -> CMANPState:
        """Same as update(empty_state, x, y), ``chunk_size`` points at a time."""
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        x, y = self._checked_points(x, y)
        state = self.empty_state(x.shape[0])
        step = chunk_size or x.shape[1]
        for i in range(0, x.shape[1], step):
            state = self.update(state, x[:, i : i + step], y[:, i : i + step])
        return state

    def merge(self, a: CMANPState, b: CMANPState) -> CMANPState:
        """The state of the union of both point sets: tile by tile, exact."""
        self.check_state(a, "a")
        self.check_state(b, "b")
        return a.merge(b)

    def state_from_bytes(self, blob: bytes) -> CMANPState:
        """Parse and validate a blob from ``CMANPState.to_bytes`` made by this wrapper."""
        state = CMANPState.from_bytes(
            blob, fingerprint=self.fingerprint, dims=self.net.encoder.state_dims, device=self.device
        )
        self.check_state(state)
        return state

    def check_queries(self, xq: Tensor, batch: int) -> Tensor:
        return self.net.check_queries(xq, batch)

    def _latents(self, state: CMANPState, rows: Tensor) -> Tensor:
        """Derived latents [K, len(rows), L, D] of the state's tiles ``rows``. Derived tiles are cached on
        the state (NaN rows: not derived yet), so a tile is derived once per state, and ``update``
        carries the tiles it did not change over to the new state."""
        if torch.is_grad_enabled():  # never pin an autograd graph to a state object
            return self.net.encoder.derive_accumulators(state.log_norm[rows], state.value_sum[rows])
        cache = state.derived(self.fingerprint)
        if cache is None:
            K, _, L, _ = self.net.encoder.state_dims
            cache = torch.full((K, state.batch_size, L, self.cfg.d_model), torch.nan, device=self.device)
            state.keep_derived(self.fingerprint, cache)
        missing = rows[cache[0, rows, 0, 0].isnan()]
        if len(missing):
            cache[:, missing] = self.net.encoder.derive_accumulators(state.log_norm[missing], state.value_sum[missing])
        return cache[:, rows]

    def predict(self, state: CMANPState, xq: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance, each [B, m, dy], at queries xq [B, m, 1]: the moment-matched
        mixture over the pyramid's tiles (``_mixture_weights``)."""
        B = self.check_state(state)
        xq = self.check_queries(xq, B)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        T = self.num_tiles
        weights = self._mixture_weights(xq, state.num_points.view(B, T))  # [B, m, T]
        # Only tiles with weight somewhere are derived and decoded: a short session reads level 1
        # alone, a long one mostly its finest level, so a predict costs far less than T plain ones.
        used = torch.nonzero((weights > 0).flatten(0, 1).any(0)).flatten()  # [U]
        rows = (torch.arange(B, device=used.device).unsqueeze(1) * T + used).flatten()  # [B*U]
        latents = self._latents(state, rows)  # [K, B*U, L, D]
        U, m = len(used), xq.shape[1]
        step = chunk_size or m
        means, variances = [], []
        for i in range(0, m, step):
            w = weights[:, i : i + step, used]  # [B, m', U]
            local = self._zoom(xq[:, i : i + step])[..., used]  # [B, m', U]
            # Decode each tile only at the queries it weighs in on (at most two tiles per level read a
            # query): active queries first, padded to the busiest tile. Padding decodes some inactive
            # query again; its weight is 0, so whatever it gets is multiplied away.
            active = w > 0
            width = int(active.sum(1).max())
            pick = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :width]  # [B, width, U]
            picked = local.gather(1, pick).permute(0, 2, 1).reshape(B * U, width, 1)
            mean, std = self.net.head(self.net.target_encodings(latents, picked))  # [B*U, width, dy]
            dy = mean.shape[-1]
            index = pick.unsqueeze(-1).expand(-1, -1, -1, dy)  # [B, width, U, dy]
            tile_mean = torch.zeros(*w.shape, dy, device=w.device).scatter(
                1, index, mean.view(B, U, width, dy).transpose(1, 2)
            )  # [B, m', U, dy]
            tile_var = torch.ones_like(tile_mean).scatter(1, index, std.square().view(B, U, width, dy).transpose(1, 2))
            w = w.unsqueeze(-1)
            mix = (w * tile_mean).sum(2)  # [B, m', dy]
            means.append(mix)
            variances.append((w * (tile_var + (tile_mean - mix.unsqueeze(2)).square())).sum(2))
        return torch.cat(means, 1), torch.cat(variances, 1)


def tiling_of_card(path: str | Path) -> TilingConfig | None:
    """The ``"tiling"`` section of a checkpoint's model card sidecar (``<stem>.json``), if any."""
    card = Path(path).with_suffix(".json")
    if not card.is_file():
        return None
    section = json.loads(card.read_text()).get("tiling")
    return TilingConfig(**section) if section is not None else None


def load_served(path: str | Path) -> nn.Module:
    """The model as the service serves it: the checkpoint, tiled when its card says so."""
    from model.checkpoint import load_checkpoint  # model.checkpoint imports every family

    net = load_checkpoint(path)
    tiling = tiling_of_card(path)
    return TiledNP(net, tiling) if tiling is not None else net
