"""Training data sources, named by a config's ``"data"`` section (``{"kind": "broad", ...}``).

A source gives the training loop (``model.train``) batches of one type: ``sample_batch`` for
training steps and ``heldout_batch`` for the fixed held-out set. The loop only moves a batch to
the device and hands it to the model's ``loss`` and ``heldout_score``, so a family with another
batch type (event sequences, images) is a new module here, one entry in ``SOURCES`` and a model
that reads its batches; the loop does not change.

The regression sources (``gp``, ``broad``) wrap a task sampler in the context-size curriculum of
``model.data.regression``; ``build_sampler`` gives the bare sampler to evaluations and benches.
The image source (``images``, ``model.data.images``) draws regression tasks on pixels of MNIST
digits (``"dataset": "mnist"``), from the training split only, through the same curriculum.
The event source (``hawkes``, ``model.data.hawkes``) draws ``EventBatch`` es of padded sequences,
with the true parameters when simulated from a Hawkes process (for the oracle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from model.data.tasks import TaskBatch, TaskSampler

__all__ = [
    "DEFAULT_DATA",
    "SOURCES",
    "Batch",
    "TaskBatch",
    "TaskSampler",
    "TrainingSource",
    "build_sampler",
    "build_source",
]


class Batch(Protocol):
    def to(self, device: torch.device | str) -> Batch: ...


class TrainingSource(Protocol):
    def sample_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """One training batch; every random draw comes from ``generator`` (so ``--resume`` is exact)."""
        ...

    def heldout_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """One batch of the held-out set (the loop draws a fixed number from a fixed seed)."""
        ...


class ModelDims(Protocol):
    """What a source may read from the model's config."""

    dim_x: int
    x_range: tuple[float, float]


def _regression(sampler: Callable[..., TaskSampler]) -> Callable[..., TrainingSource]:
    def build(cfg: ModelDims, **options: Any) -> TrainingSource:
        from model.data.regression import ContextCurriculum, RegressionSource

        curriculum, options = ContextCurriculum.split(options)
        return RegressionSource(sampler(cfg.dim_x, tuple(cfg.x_range), **options), curriculum)

    return build


def _gp(dim_x: int, x_range: tuple[float, float], **options: Any) -> TaskSampler:
    from model.data.gp import GPSampler

    return GPSampler(dim_x=dim_x, x_range=x_range, **options)


def _broad(dim_x: int, x_range: tuple[float, float], **options: Any) -> TaskSampler:
    from model.data.broad import BroadPrior

    return BroadPrior(
        dim_x=dim_x, x_range=x_range, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    )


def _images(cfg: ModelDims, **options: Any) -> TrainingSource:
    """Image completion (``model.data.images``): pixel coordinates in [-1, 1]^2 are the model's x."""
    from model.data.images import X_RANGE, training_source

    if cfg.dim_x != 2 or tuple(cfg.x_range) != X_RANGE:
        raise ValueError(f"image tasks need a model with dim_x 2 and x_range {list(X_RANGE)}")
    return training_source(**options)


def _hawkes(cfg: object, **options: Any) -> TrainingSource:
    """Event sequences; the model's config does not shape them (times and marks are the data)."""
    from model.data.hawkes import build_source as build_event_source

    return build_event_source(**options)


# kind -> builder(model config, **the spec's other options) -> TrainingSource
SOURCES: dict[str, Callable[..., TrainingSource]] = {
    "gp": _regression(_gp),
    "broad": _regression(_broad),
    "images": _images,
    "hawkes": _hawkes,
}
DEFAULT_DATA: dict[str, Any] = {"kind": "gp", "kernel": "rbf"}


def build_source(spec: dict[str, Any], cfg: ModelDims) -> TrainingSource:
    """The training source a config's ``"data"`` section names, for a model of config ``cfg``."""
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in SOURCES:
        raise ValueError(f"unknown data source {kind!r}; choose from {sorted(SOURCES)}")
    return SOURCES[kind](cfg, **options)


def build_sampler(spec: dict[str, Any], dim_x: int, x_range: tuple[float, float]) -> TaskSampler:
    """The bare task sampler of a regression spec (tasks of any sizes, for evaluations and benches)."""
    from model.data.regression import RegressionSource

    source = build_source(spec, _Dims(dim_x, tuple(x_range)))
    if not isinstance(source, RegressionSource):
        raise ValueError(f"data source {spec.get('kind')!r} does not draw regression tasks")
    return source.sampler


@dataclass(frozen=True)
class _Dims:
    dim_x: int
    x_range: tuple[float, float]
