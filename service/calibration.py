"""Prequential calibration: every context point is scored by the session's state before it.

A streaming session gets an honest, free test of its predictive distributions: each point
arrives before the model has seen it. Scoring it against the state as it was before the point
was folded in is prequential evaluation, held out by construction.

Which state scores which point. Number a session's points 0, 1, 2, ... in the order the session
acknowledged them (the log order). Point i is scored against the state of the first b(i) points,
where b(i) <= i is the largest of
- the first point of the fold batch that holds i (folds commit the log in batches of about
  ``FOLD_THRESHOLD_POINTS``, and the states in between are never built), and
- the largest power of two <= i (0 for point 0).
So each fold batch is scored against the state before that batch, cut further at the powers of
two. Without the cuts, the first batch (256 points by default) would be judged by the empty
state, the model's prior, which cannot know the session's scale. The doubling blocks (as in
block-wise prequential coding) cost one more model call per doubling, log2(N) calls in a
session's whole life; past the first fold, scoring costs one predict of the batch per fold.

Where the numbers live. The fold computes the scores from the same snapshot it folds, and the
commit script adds them to the session's record in the same atomic step that checks the fold
epoch: a dropped or retried fold counts nothing, a committed one counts once. ``GET
/v1/sessions/{id}`` adds the scores of the still unfolded log, computed the same way against the
committed state without writing anything. That is exactly what the next fold will commit, so
the report covers every point posted and does not change when the fold happens.

The aggregates (constant size), in the model's units (after the session's transforms), pooled
over output dimensions (each output of a point is one scored value; the log density of a point
is the sum over its outputs). With z = (y - mean) / std:
- scored points and values; the sum of log predictive densities;
- the sum of z and of z^2 (a calibrated model gives mean 0 and variance 1);
- coverage counts of the central 50%, 90% and 95% intervals: |z| <= Phi^-1((1 + p) / 2);
- a 10-bin histogram of PIT = Phi(z) (flat for a calibrated model);
- out-of-range points (``service.training_range``), counted whether or not scoring is on.

The verdict (``status``):
- ``insufficient_data`` below ``MIN_POINTS`` (50) scored points;
- ``miscalibrated`` when the 99.9% Wilson score interval of the coverage of the central 50% or
  95% interval lies entirely outside the coverage a Gaussian forecast would have if its standard
  deviations were off by less than a factor ``STD_FACTOR`` (1.5) either way: 50% intervals
  covering 34.7%-68.8% of points, 95% intervals covering 80.9%-99.7%;
- ``ok`` otherwise.
The test asks whether the miscalibration is large, not merely detectable: with enough points any
imperfect model differs from nominal coverage. For a perfectly calibrated forecaster (PITs iid
uniform) each check would cross a bound of the exact nominal band with probability below 0.1%,
and the tolerance band makes false alarms rarer still.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Literal

import torch
from torch import Tensor

from service.schemas import CalibrationReport

LEVELS = (0.5, 0.9, 0.95)  # central predictive intervals whose coverage is counted
PIT_BINS = 10
MIN_POINTS = 50
CONFIDENCE = 0.999  # of the Wilson interval in the verdict
STD_FACTOR = 1.5
TESTED_LEVELS = (0.5, 0.95)

_NORMAL = NormalDist()
_HALF_WIDTHS = tuple(_NORMAL.inv_cdf((1 + level) / 2) for level in LEVELS)  # 0.674, 1.645, 1.960
_WILSON_Z = _NORMAL.inv_cdf((1 + CONFIDENCE) / 2)  # 3.29
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

Status = Literal["ok", "insufficient_data", "miscalibrated"]


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


def tolerated_coverage(level: float) -> tuple[float, float]:
    """Coverage of the central ``level`` interval when the true std is the predicted one times 1/f .. f."""
    half_width = _NORMAL.inv_cdf((1 + level) / 2)
    return 2 * _NORMAL.cdf(half_width / STD_FACTOR) - 1, 2 * _NORMAL.cdf(half_width * STD_FACTOR) - 1


def wilson_interval(successes: int, trials: int, z: float = _WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Aggregates:
    """Running sums over a session's scored points; adding two gives the sums over both."""

    points: int = 0
    values: int = 0
    log_density: float = 0.0
    z_sum: float = 0.0
    z_square_sum: float = 0.0
    covered: tuple[int, ...] = (0,) * len(LEVELS)
    pit: tuple[int, ...] = (0,) * PIT_BINS
    out_of_range: int = 0

    @classmethod
    def of_scores(cls, y: Tensor, mean: Tensor, variance: Tensor) -> Aggregates:
        """Score points y [n, dim_y] against predictive means and variances of the same shape."""
        y, mean, variance = (t.double() for t in (y, mean, variance))
        z = (y - mean) / variance.sqrt()
        log_density = -0.5 * z.square() - 0.5 * variance.log() - _LOG_SQRT_2PI
        pit_bins = (torch.special.ndtr(z) * PIT_BINS).long().clamp_(0, PIT_BINS - 1)
        return cls(
            points=y.shape[0],
            values=y.numel(),
            log_density=float(log_density.sum()),
            z_sum=float(z.sum()),
            z_square_sum=float(z.square().sum()),
            covered=tuple(int((z.abs() <= h).sum()) for h in _HALF_WIDTHS),
            pit=tuple(torch.bincount(pit_bins.flatten(), minlength=PIT_BINS).tolist()),
        )

    def __add__(self, other: Aggregates) -> Aggregates:
        def add(a: int | float | tuple, b: int | float | tuple) -> int | float | tuple:
            return tuple(u + v for u, v in zip(a, b, strict=True)) if isinstance(a, tuple) else a + b

        return Aggregates(**{f.name: add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    # ---- as the store's sums: flat names -> numbers ----------------------------------------------
    def to_sums(self) -> dict[str, float]:
        """Flat, non-zero sums for the session record (the fold commit adds them atomically)."""
        sums: dict[str, float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            items = enumerate(value) if isinstance(value, tuple) else [(None, value)]
            sums |= {f.name if i is None else f"{f.name}_{i}": float(v) for i, v in items if v}
        return sums

    @classmethod
    def from_sums(cls, sums: Mapping[str, float]) -> Aggregates:
        """Inverse of ``to_sums``; missing names are zero."""
        values: dict[str, object] = {}
        for f in fields(cls):
            default = f.default
            if isinstance(default, tuple):
                values[f.name] = tuple(int(sums.get(f"{f.name}_{i}", 0)) for i in range(len(default)))
            else:
                values[f.name] = type(default)(sums.get(f.name, 0))
        return cls(**values)  # type: ignore[arg-type]

    # ---- what the numbers say ----------------------------------------------------------------------
    def coverage(self) -> tuple[float, ...] | None:
        return tuple(c / self.values for c in self.covered) if self.values else None

    def verdict(self) -> tuple[Status, list[str]]:
        """The status and, when miscalibrated, why (see the module docstring for the test)."""
        if self.points < MIN_POINTS:
            return "insufficient_data", []
        reasons = []
        for level in TESTED_LEVELS:
            covered = self.covered[LEVELS.index(level)]
            low, high = wilson_interval(covered, self.values)
            allowed_low, allowed_high = tolerated_coverage(level)
            if high < allowed_low or low > allowed_high:
                reasons.append(
                    f"the central {level:.0%} intervals covered {covered / self.values:.1%} of {self.values} values "
                    f"({CONFIDENCE:.1%} interval {low:.1%}-{high:.1%}); standard deviations off by less than "
                    f"{STD_FACTOR}x would cover {allowed_low:.1%}-{allowed_high:.1%}"
                )
        return ("miscalibrated" if reasons else "ok"), reasons

    def report(self, enabled: bool) -> CalibrationReport:
        status, reasons = self.verdict()
        coverage = self.coverage()
        z_mean = self.z_sum / self.values if self.values else None
        return CalibrationReport(
            enabled=enabled,
            status=status,
            reasons=reasons,
            scored_points=self.points,
            mean_log_density=self.log_density / self.points if self.points else None,
            standardised_residual_mean=z_mean,
            standardised_residual_variance=self.z_square_sum / self.values - z_mean**2 if self.values else None,
            coverage={f"{level:g}": c for level, c in zip(LEVELS, coverage, strict=True)} if coverage else {},
            pit_histogram=list(self.pit),
        )
