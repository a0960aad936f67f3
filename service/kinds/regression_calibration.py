"""Calibration of regression sessions: Gaussian predictive distributions scored by their z-scores.

Each held-out point (``service.calibration`` says which states score which points) gives
z = (y - mean) / std per output value, its log density and its PIT. The sums over a session's
points (``Aggregates``, one set for interpolation and one for forecast: ``Scores``) are constant
size. The verdict is ``miscalibrated`` when either set fails a test, ``insufficient_data`` below
``MIN_POINTS``. Five tests, each at ``ALPHA / 5`` (Bonferroni), so that a session whose intervals
are within the tolerances is flagged with probability at most ``ALPHA`` per check:
  * interpolation set: the clipped variance of z above what std ``VARIANCE_TOLERANCE`` too small
    allows (one-sided), and the coverage of the 50% and 95% intervals outside what std off by
    ``STD_FACTOR`` either way allows (two-sided; exact binomial tails at the band's edges);
  * forecast set: the coverage of the 50% and 95% intervals below what std ``STD_FACTOR`` too small
    allows (one-sided: one-step-ahead intervals start from states of a few points, or the prior, and
    are legitimately wide; too-wide intervals are the interpolation set's to judge).
The tests, their power and false-alarm rates are in docs/SERVICE.md ("Calibration").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from statistics import NormalDist

import torch
from torch import Tensor

from service.calibration import ALPHA, MIN_POINTS, Status, binomial_cdf

LEVELS = (0.5, 0.9, 0.95)  # central predictive intervals whose coverage is counted
PIT_BINS = 10
STD_FACTOR = 1.5
TESTED_LEVELS = (0.5, 0.95)
# The variance test: mean of min(z^2, Z_CLIP^2) against its value for a Gaussian forecast whose
# std is VARIANCE_TOLERANCE times too small, one-sided. Clipping keeps a few heavy-tailed outliers
# from deciding it; one-sided because over-confidence is the harm to catch (intervals that are too
# wide are caught by the coverage test).
Z_CLIP = 3.0
VARIANCE_TOLERANCE = 1.15
TESTS = 5  # variance + 2 coverage levels (interpolation), 2 coverage levels (forecast)

# Scoring is most of a fold's cost (85% for the tiled default: it predicts every point of the batch
# from five states), and a hot session folds several times a second. Past FULL_SCORING_POINTS scored
# points a session's verdict has what power it needs, so only every SCORED_BATCH_EVERY-th fold batch
# is scored, picked by fold epoch: independent of the data, the sums stay an unbiased sample.
FULL_SCORING_POINTS = 2048
SCORED_BATCH_EVERY = 4

_NORMAL = NormalDist()
_HALF_WIDTHS = tuple(_NORMAL.inv_cdf((1 + level) / 2) for level in LEVELS)  # 0.674, 1.645, 1.960
VARIANCE_Z = _NORMAL.inv_cdf(1 - ALPHA / TESTS)  # 3.54, one-sided (in the Wilson-Hilferty quantile)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def scores_batch(scored_points: int, fold_epoch: int) -> bool:
    """Whether the fold batch after ``fold_epoch`` folds, of a session with ``scored_points``
    interpolation-scored points, is scored (see ``FULL_SCORING_POINTS``)."""
    return scored_points < FULL_SCORING_POINTS or fold_epoch % SCORED_BATCH_EVERY == 0


def clipped_square_moments(std_ratio: float, clip: float = Z_CLIP) -> tuple[float, float]:
    """Mean and variance of min(z^2, clip^2) for z ~ N(0, std_ratio^2) (closed form)."""
    a = clip / std_ratio
    inside = 2 * _NORMAL.cdf(a) - 1
    density = _NORMAL.pdf(a)
    m1 = inside - 2 * a * density + a * a * (1 - inside)  # E[min(g^2, a^2)], g ~ N(0, 1)
    m2 = 3 * inside - 2 * density * (a**3 + 3 * a) + a**4 * (1 - inside)
    return std_ratio**2 * m1, std_ratio**4 * (m2 - m1 * m1)


def variance_threshold(values: int) -> float:
    """The largest mean clipped z^2 over ``values`` scores that the variance test accepts.

    The sum of the clipped squares is right-skewed (a clipped chi-square), so a normal quantile would
    reject far more often than it says (8e-4 instead of 2e-4 at 50 values). It is taken as a gamma
    matched to the sum's mean and variance, whose quantile is Wilson-Hilferty's cube-root normal one.
    """
    mean, variance = clipped_square_moments(VARIANCE_TOLERANCE)
    shape = values * mean * mean / variance  # of the matched gamma; its mean is values * mean
    return mean * (1 - 1 / (9 * shape) + VARIANCE_Z * math.sqrt(1 / (9 * shape))) ** 3


def tolerated_coverage(level: float) -> tuple[float, float]:
    """Coverage of the central ``level`` interval when the true std is the predicted one times 1/f .. f."""
    half_width = _NORMAL.inv_cdf((1 + level) / 2)
    return 2 * _NORMAL.cdf(half_width / STD_FACTOR) - 1, 2 * _NORMAL.cdf(half_width * STD_FACTOR) - 1


@dataclass(frozen=True)
class Aggregates:
    """Running sums over a session's scored points; adding two gives the sums over both."""

    points: int = 0
    values: int = 0
    log_density: float = 0.0
    z_sum: float = 0.0
    z_square_sum: float = 0.0
    z_clipped_square_sum: float = 0.0  # of min(z^2, Z_CLIP^2)
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
            z_clipped_square_sum=float(z.square().clamp_max(Z_CLIP**2).sum()),
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

    def verdict(self, interpolation: bool = True) -> tuple[Status, list[str]]:
        """The status and, when miscalibrated, why: the tests of the interpolation set, or (False)
        those of the forecast set (see the module docstring)."""
        if self.points < MIN_POINTS:
            return "insufficient_data", []
        reasons = []
        clipped = self.z_clipped_square_sum / self.values
        confidence = 1 - ALPHA / TESTS
        if interpolation and clipped > variance_threshold(self.values):
            reasons.append(
                f"the standardised residuals are too large: mean min(z^2, {Z_CLIP:g}^2) is {clipped:.2f} over "
                f"{self.values} values, above {variance_threshold(self.values):.2f}, the most that standard deviations "
                f"{VARIANCE_TOLERANCE}x too small would give at {confidence:.2%} confidence: "
                "the intervals are too narrow"
            )
        # Coverage: exact binomial tails at the band's edges, each side at ALPHA / TESTS / 2 (both
        # sides tested) or ALPHA / TESTS (the forecast set: only too few covered).
        side_alpha = ALPHA / TESTS / (2 if interpolation else 1)
        for level in TESTED_LEVELS:
            covered = self.covered[LEVELS.index(level)]
            allowed_low, allowed_high = tolerated_coverage(level)
            too_few = binomial_cdf(covered, self.values, allowed_low)  # P(this few or fewer) at the low edge
            too_many = 1 - binomial_cdf(covered - 1, self.values, allowed_high) if interpolation else 1.0
            if too_few < side_alpha or too_many < side_alpha:
                which, chance = ("few", too_few) if too_few < side_alpha else ("many", too_many)
                reasons.append(
                    f"the central {level:.0%} intervals covered {covered / self.values:.1%} of {self.values} values; "
                    f"standard deviations off by less than {STD_FACTOR}x would cover {allowed_low:.1%}-"
                    f"{allowed_high:.1%}, and cover this {which} with probability {chance:.1e}"
                )
        return ("miscalibrated" if reasons else "ok"), reasons

    def report(self, interpolation: bool = True) -> dict[str, object]:
        """The figures of this set of scores (the fields of the wire's ``ScoreReport``)."""
        status, reasons = self.verdict(interpolation)
        coverage = self.coverage()
        z_mean = self.z_sum / self.values if self.values else None
        return {
            "status": status,
            "reasons": reasons,
            "scored_points": self.points,
            "mean_log_density": self.log_density / self.points if self.points else None,
            "standardised_residual_mean": z_mean,
            "standardised_residual_variance": self.z_square_sum / self.values - z_mean**2 if self.values else None,
            "coverage": {f"{level:g}": c for level, c in zip(LEVELS, coverage, strict=True)} if coverage else {},
            "pit_histogram": list(self.pit),
        }


SUMS_PREFIX = "cv_"  # the interpolation scores' sums; the forecast ones keep the original names


@dataclass(frozen=True)
class Scores:
    """Both score sets of a session (or of a fold batch); adding two gives the scores over both."""

    interpolation: Aggregates = Aggregates()
    forecast: Aggregates = Aggregates()  # also holds the out-of-range count

    @property
    def out_of_range(self) -> int:
        return self.forecast.out_of_range

    def __add__(self, other: Scores) -> Scores:
        return Scores(self.interpolation + other.interpolation, self.forecast + other.forecast)

    def to_sums(self) -> dict[str, float]:
        prefixed = {SUMS_PREFIX + k: v for k, v in self.interpolation.to_sums().items()}
        return self.forecast.to_sums() | prefixed

    @classmethod
    def from_sums(cls, sums: Mapping[str, float]) -> Scores:
        prefixed = {k.removeprefix(SUMS_PREFIX): v for k, v in sums.items() if k.startswith(SUMS_PREFIX)}
        return cls(Aggregates.from_sums(prefixed), Aggregates.from_sums(sums))

    def verdict(self) -> tuple[Status, list[str]]:
        """Miscalibrated when either set is (with the reasons of both), ok when both are."""
        # The forecast set skips the variance test and the too-wide tests: its first points are scored
        # by states of one or two points (or the prior), whose spread is legitimately off.
        (head, head_reasons), (forecast, forecast_reasons) = (
            self.interpolation.verdict(),
            self.forecast.verdict(interpolation=False),
        )
        statuses = {head, forecast}
        status: Status = (
            "miscalibrated" if "miscalibrated" in statuses else "ok" if statuses == {"ok"} else "insufficient_data"
        )
        return status, [f"interpolation: {r}" for r in head_reasons] + [f"forecast: {r}" for r in forecast_reasons]

    def report(self, enabled: bool) -> dict[str, object]:
        """The session's report (the fields of the wire's ``CalibrationReport``): the interpolation
        scores' figures, the forecast ones beside them, and the verdict of both."""
        status, reasons = self.verdict()
        return self.interpolation.report() | {
            "status": status,
            "reasons": reasons,
            "enabled": enabled,
            "forecast": self.forecast.report(interpolation=False),
        }
