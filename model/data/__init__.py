"""Training data sources, named by a config's ``"data"`` section.

A regression source is a sampler with ``sample(batch, num_context, num_target, generator)`` and
``sample_protocol(batch, generator)``; its batches carry ``xc, yc, xt, yt`` and, for GP priors, the
true covariance and noise so the exact-GP oracle can score the same tasks. An event source
(``"kind": "hawkes"``, ``model.data.hawkes``) has ``sample(batch, generator)`` and
``heldout(num_batches, batch, seed)`` and yields ``EventBatch`` es of padded sequences (with the
true parameters when simulated from a Hawkes process, for the oracle). Adding a source is a new
module here plus one entry in ``SOURCES``; the training loop does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from model.data.events import EventBatch


class TaskBatch(Protocol):
    xc: Tensor  # [B, N, dx]
    yc: Tensor  # [B, N, dy]
    xt: Tensor  # [B, M, dx]
    yt: Tensor  # [B, M, dy]

    def to(self, device: torch.device | str) -> TaskBatch: ...

    def covariance(self, x1: Tensor, x2: Tensor) -> Tensor: ...

    def noise_variance(self) -> Tensor: ...


class TaskSampler(Protocol):
    def sample(self, batch_size: int, num_context: int, num_target: int, generator: torch.Generator) -> TaskBatch: ...

    def sample_protocol(self, batch_size: int, generator: torch.Generator) -> TaskBatch: ...


class EventSampler(Protocol):
    def sample(self, batch_size: int, generator: torch.Generator) -> EventBatch: ...

    def heldout(self, num_batches: int, batch_size: int, seed: int = 12345) -> list[EventBatch]: ...


def _gp(dim_x: int, x_range: tuple[float, float], **options: Any) -> TaskSampler:
    from model.data.gp import GPSampler

    return GPSampler(dim_x=dim_x, x_range=x_range, **options)


def _broad(dim_x: int, x_range: tuple[float, float], **options: Any) -> TaskSampler:
    from model.data.broad import BroadPrior

    return BroadPrior(
        dim_x=dim_x, x_range=x_range, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    )


def _hawkes(*_: Any, **options: Any) -> EventSampler:
    """Event sequences (``model.data.hawkes``); the regression arguments (dim_x, x_range) do not apply."""
    from model.data.hawkes import build_source

    return build_source(**options)


SOURCES: dict[str, Callable[..., TaskSampler | EventSampler]] = {"gp": _gp, "broad": _broad, "hawkes": _hawkes}
DEFAULT_DATA: dict[str, Any] = {"kind": "gp", "kernel": "rbf"}


def build_sampler(spec: dict[str, Any], dim_x: int, x_range: tuple[float, float]) -> TaskSampler | EventSampler:
    """The sampler a config's ``"data"`` section names, e.g. ``{"kind": "broad"}``."""
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in SOURCES:
        raise ValueError(f"unknown data source {kind!r}; choose from {sorted(SOURCES)}")
    return SOURCES[kind](dim_x, tuple(x_range), **options)
