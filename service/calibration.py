"""Calibration of a session's predictions, from held-out scores of its own points: what every kind shares.

Every context point is scored (a kind may score only a sample of a long session's fold batches:
``service.kinds.regression_calibration.scores_batch``), each time by a state that does not contain it:
- **interpolation** (the headline): the points of a fold batch are split into ``FOLDS``
  interleaved shares (by arrival order); each share is scored by the state holding everything
  before the batch and the *other* shares. In a stream that arrives in time order, later points
  then surround each scored point, as they surround the inputs users ask about, so the verdict
  describes the intervals users get whatever the arrival order.
- **forecast** (prequential): each point by the state of the points before it (blocks cut at
  fold batches and powers of two, ``prequential_blocks``): one-step-ahead intervals.
The exact merge makes this cheap: each share's state is built once and merged with the rest.

What a score is depends on the kind of session (a Gaussian z-score for regression,
``service.kinds.regression_calibration``): each kind keeps its own constant-size sums
(``Calibration``), which are committed with the fold that scored them, exactly once
(``Fold.sums``). A verdict needs ``MIN_POINTS`` scored points, and flags a calibrated session with
about ``ALPHA`` per check: each kind splits it between its tests (in shares: Bonferroni). The
tests, their power and false-alarm rates are in docs/SERVICE.md ("Calibration").
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal, Protocol, Self

import torch

FOLDS = 4  # interleaved shares of a fold batch in interpolation scoring
MIN_POINTS = 50
ALPHA = 1e-3  # false-alarm probability of one check (one verdict) of a calibrated session

Status = Literal["ok", "insufficient_data", "miscalibrated"]


class Calibration(Protocol):
    """A kind's scores of a session (or of a fold batch): constant-size sums that add up exactly."""

    def __add__(self, other: Self) -> Self: ...

    def to_sums(self) -> dict[str, float]:
        """Flat sums for the session record (the fold commit adds them atomically)."""
        ...

    def report(self, enabled: bool) -> dict[str, object]:
        """What the session's record says about its calibration, as plain data (the wire edge
        validates it against its response schema); ``enabled``: whether this server scores points."""
        ...


def prequential_blocks(start: int, count: int) -> list[tuple[int, int]]:
    """Blocks [from, to) of a fold batch of ``count`` points whose first is point ``start``.

    Each block is scored against the state of every point before it (see the module docstring).
    """
    cuts = [0]
    power = 1
    while power < start + count:
        if power > start:
            cuts.append(power - start)
        power *= 2
    cuts.append(count)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


EXACT_TRIALS = 100_000  # above this, binomial tails by the normal approximation (with continuity correction)


def binomial_cdf(successes: int, trials: int, p: float) -> float:
    """P(X <= successes) for X ~ Binomial(trials, p), exact (a log-space sum of the probabilities)
    up to ``EXACT_TRIALS``: an interval by a normal approximation (Wilson's) rejects up to 5x more
    often than it says where the coverage sits near 0 or 1 at tens of points, as the 95% level does."""
    if successes < 0:
        return 0.0
    if successes >= trials:
        return 1.0
    if trials > EXACT_TRIALS:
        return NormalDist(trials * p, math.sqrt(trials * p * (1 - p))).cdf(successes + 0.5)
    k = torch.arange(successes + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(trials + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma(trials - k + 1)
        + k * math.log(p)
        + (trials - k) * math.log1p(-p)
    )
    return min(1.0, float(torch.logsumexp(log_pmf, 0).exp()))
