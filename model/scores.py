"""Per-task scores summarised as every evaluation reports them: the mean, its standard error over
tasks and the number of tasks."""

from __future__ import annotations

import math

import torch


def summarise(values: torch.Tensor) -> dict[str, float]:
    v = values.double()
    return {"ll": v.mean().item(), "se": (v.std() / math.sqrt(len(v))).item(), "num_tasks": len(v)}
