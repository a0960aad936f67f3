"""A regression training source: a task sampler (``gp``, ``broad``) plus its context-size curriculum.

The paper's protocol has N in 3..46 context points. Sessions grow past 46 points and start empty,
so some training batches have N log-uniform in [47, long_context_max] and some have no context
at all (the prior an empty session returns). The curriculum is a property of the regression
data, not of the training loop, so it lives here and is set in the config's ``"data"`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from model.data.tasks import TaskBatch, TaskSampler

CURRICULUM_MAX_TARGETS = 49  # targets of an empty- or long-context batch: M ~ U{3..49}, as in the protocol


@dataclass(frozen=True)
class ContextCurriculum:
    long_context_prob: float = 0.15  # share of batches with N log-uniform in [47, long_context_max]
    long_context_max: int = 1000
    empty_context_prob: float = 0.02  # share of batches with N = 0

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[ContextCurriculum, dict[str, Any]]:
        """The curriculum named in a data spec's options, and the options left for the sampler."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names}), {
            k: v for k, v in options.items() if k not in names
        }


def _curriculum_targets(generator: torch.Generator) -> int:
    return int(torch.randint(3, CURRICULUM_MAX_TARGETS + 1, (), generator=generator))


class RegressionSource:
    """``sample_batch`` draws from the curriculum; ``heldout_batch`` from the paper's protocol."""

    def __init__(self, sampler: TaskSampler, curriculum: ContextCurriculum) -> None:
        self.sampler, self.curriculum = sampler, curriculum

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """One training batch (all tasks share N and M)."""
        c, g = self.curriculum, generator
        u = float(torch.rand((), generator=g))
        if u < c.empty_context_prob:
            return self.sampler.sample(batch_size, 0, _curriculum_targets(g), g)
        if u < c.empty_context_prob + c.long_context_prob:
            lo, hi = math.log(47), math.log(c.long_context_max)
            nc = int(math.exp(lo + (hi - lo) * float(torch.rand((), generator=g))))
            return self.sampler.sample(batch_size, nc, _curriculum_targets(g), g)
        return self.sampler.sample_protocol(batch_size, g)

    def heldout_batch(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """One batch of the paper's protocol, for the held-out score that picks the best weights."""
        return self.sampler.sample_protocol(batch_size, generator)
