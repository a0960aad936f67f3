"""Regression tasks: the batch a regression sampler draws and the sampler's interface.

A batch carries context and target points and, for GP priors, the true covariance and noise, so
the exact-GP oracle (``model.gp_oracle``) can score the same tasks as the model.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


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
