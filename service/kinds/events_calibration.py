"""Calibration of event sessions: each event scored by the forecast made at the event before it.

A session's first event is not scored (its wait has no start). Every later event i is scored by
the state of the events before it, read at the previous event (``service.kinds.events``):

- its waiting time's PIT ``u_i = F_i(wait_i)``, the model's conditional CDF at the observed wait
  (``CMHP.waiting_time_cdf``), and the compensator increment ``Lambda_i = -log(1 - u_i)``;
- its log-likelihood ``log f_i(wait_i) + log p_i(k_i)``, and the mark probabilities ``p_i``.

When the model's forecasts are right, the prequential PITs ``u_i`` are independent and uniform
(each is the conditional CDF of the next value given everything before it: Rosenblatt's
transform, the time-rescaling theorem of point processes), so the ``Lambda_i`` are independent
Exp(1); and the mark residuals ``1{k_i = j} - p_ij`` are martingale differences. Three tests:

1. **smooth** (``SMOOTH_LEVEL``): Neyman's smooth test of the PITs, the sum of squares of three
   components, chi-square with 3 degrees of freedom. With ``c_i = u_i - 1/2``:
   - *location* ``sum c_i / sqrt(sum c_i^2)``: events sooner (negative) or later than forecast;
   - *dispersion* ``(sum c_i^2 - n/12) / sqrt(n/180)``: waits more regular than forecast (PITs
     heaped in the middle) or burstier (at both ends);
   - *serial* ``sum c_i c_(i-1) / sqrt(sum c_i^2 c_(i-1)^2)`` over consecutive events: a stream more
     regular than any Hawkes process (a short wait, then a long one) makes it negative; forecasts
     that lag behind a stream's changes of pace, positive.
   Under calibration the signs of the ``c_i`` are fair coins independent of their sizes, so the
   location and serial components are divided by their standard deviations *given the sizes*:
   then a large dispersion does not inflate them, and the three are nearly independent. (Divided
   by their unconditional ones, the chi-square's size at 50 events was twice its level.) Misfit
   that moves all three a little (a self-correcting stream's) is pooled; five separate tests, one
   per kind, each had to see it alone: on streams not used to choose this design, 56 of 80
   self-correcting streams were flagged by 200 events, and 73 of 80 with it (issue 18;
   ``checkpoints/HISTORY.md``, session 21).
2. **shape** (``SHAPE_LEVEL``): Pearson's chi-square of the 10-bin PIT histogram against flat, 9
   degrees of freedom: other departures from uniform (a regular stream's missing short waits).
3. **marks** (``MARKS_LEVEL``): with ``O_j`` the events of mark j, ``E_j = sum_i p_ij`` and
   ``V = sum_i (diag p_i - p_i p_i^T)``, ``(O - E)^T V^+ (O - E)`` is chi-square with rank(V)
   degrees of freedom (martingale central limit theorem). It is order-free: a PIT of a mark would
   depend on an arbitrary order of the marks.

The levels (0.04%, 0.02%, 0.02%) add up to 0.08%, and the rest of ``ALPHA`` covers what their
chi-square approximations lose at few events: a calibrated session's measured false-alarm rate
per check is about ``ALPHA`` at 50 events and below it from 100, as simulated in
``bench.event_monitor`` (the components are uncorrelated and dependent only at order
1/sqrt(n)). Pairs for the serial component are taken within a fold's events (the pair across two
folds is left out: the sums stay additive and the test stays exact, one pair poorer per fold).
Sums written before the serial component took its conditional scale (named ``serial``,
``serial_norm``) are ignored: the component then sees the later folds only.

The mean log-likelihood is reported, not tested: its expected value depends on the model's own
entropy at each step, which has no closed form. The sums are constant size (counts, sums, a
10-bin PIT histogram, M + M^2 mark sums) and add up exactly across folds (``Fold.sums``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from service.calibration import ALPHA, MIN_POINTS, Status

SMOOTH_LEVEL = 0.4 * ALPHA
SHAPE_LEVEL = 0.2 * ALPHA
MARKS_LEVEL = 0.2 * ALPHA
NOTABLE = 2.0  # a smooth test's component this far from 0 (in standard deviations) is named in its reasons
PIT_BINS = 10
PIT_MAX = 1 - 1e-16  # u is clipped here, so a wait the model deemed impossible adds 36.8 to sum Lambda, not inf
_VECTORS = ("pit", "observed", "expected", "covariance")  # tuple fields, summed element by element


def _f64(value: float) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float64)


def _chi_square_p_value(statistic: float, degrees: int) -> float:
    """P(chi-square with ``degrees`` degrees of freedom >= statistic)."""
    return float(torch.special.gammaincc(_f64(degrees / 2), _f64(statistic / 2)))


@dataclass(frozen=True)
class EventScores:
    """Running sums over a session's scored events; adding two gives the sums over both."""

    events: int = 0
    log_likelihood: float = 0.0  # of the wait and the mark
    mark_log_likelihood: float = 0.0
    compensator: float = 0.0  # sum Lambda_i
    pit_sum: float = 0.0
    pit_dispersion: float = 0.0  # sum (u_i - 1/2)^2
    pit: tuple[int, ...] = (0,) * PIT_BINS
    observed: tuple[float, ...] = ()  # per mark: events
    expected: tuple[float, ...] = ()  # per mark: sum of its forecast probabilities
    covariance: tuple[float, ...] = ()  # M x M, row-major: sum of diag(p) - p p^T
    # Over the pairs of consecutive events (in one fold) with c_i = u_i - 1/2:
    pair_product: float = 0.0  # sum c_i c_(i-1)
    pair_previous: float = 0.0  # sum c_(i-1)^2
    pair_variance: float = 0.0  # sum c_i^2 c_(i-1)^2

    @classmethod
    def of_scores(cls, pit: Tensor, log_likelihood: Tensor, mark_probs: Tensor, marks: Tensor) -> EventScores:
        """Score events: PITs of their waits [n], log-likelihoods [n], forecast mark probabilities [n, M]
        and observed marks [n]."""
        pit, probs = pit.double().clamp(0, PIT_MAX), mark_probs.double()
        centred = pit - 0.5
        bins = (pit * PIT_BINS).long().clamp_(0, PIT_BINS - 1)
        onehot = torch.nn.functional.one_hot(marks.long(), probs.shape[-1]).double()
        covariance = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
        return cls(
            events=len(pit),
            log_likelihood=float(log_likelihood.double().sum()),
            mark_log_likelihood=float(probs.gather(-1, marks.long().unsqueeze(-1)).log().sum()),
            compensator=float(-torch.log1p(-pit).sum()),
            pit_sum=float(pit.sum()),
            pit_dispersion=float(centred.square().sum()),
            pit=tuple(torch.bincount(bins, minlength=PIT_BINS).tolist()),
            observed=tuple(onehot.sum(0).tolist()),
            expected=tuple(probs.sum(0).tolist()),
            covariance=tuple(covariance.sum(0).flatten().tolist()),
            pair_product=float((centred[1:] * centred[:-1]).sum()),
            pair_previous=float(centred[:-1].square().sum()),
            pair_variance=float((centred[1:] * centred[:-1]).square().sum()),
        )

    def __add__(self, other: EventScores) -> EventScores:
        def add(a: float | tuple, b: float | tuple) -> float | tuple:
            if not isinstance(a, tuple):
                return a + b
            return tuple(u + v for u, v in zip(a, b, strict=True)) if a and b else a or b

        return EventScores(**{f.name: add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    # ---- as the store's sums: flat names -> numbers ----------------------------------------------
    def to_sums(self) -> dict[str, float]:
        """Flat sums for the session record (the fold commit adds them atomically). Scalars and PIT
        bins that are zero are left out; the mark sums are all written, so their count gives M."""
        sums = {name: float(getattr(self, name)) for name in self._scalars() if getattr(self, name)}
        for name in _VECTORS:
            values = getattr(self, name)
            sums |= {f"{name}_{i}": float(v) for i, v in enumerate(values) if v or name != "pit"}
        return sums

    @classmethod
    def from_sums(cls, sums: Mapping[str, float]) -> EventScores:
        """Inverse of ``to_sums``; missing names are zero."""
        marks = sum(1 for name in sums if name.startswith("expected_"))
        lengths = {"pit": PIT_BINS, "observed": marks, "expected": marks, "covariance": marks * marks}
        values: dict[str, object] = {name: type(getattr(cls, name))(sums.get(name, 0)) for name in cls._scalars()}
        for name, length in lengths.items():
            values[name] = tuple(sums.get(f"{name}_{i}", 0) for i in range(length))
        values["pit"] = tuple(int(v) for v in values["pit"])  # type: ignore[union-attr]
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def _scalars(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in _VECTORS]

    # ---- what the numbers say ----------------------------------------------------------------------
    def smooth_components(self) -> dict[str, float]:
        """The smooth test's components (each about standard normal under calibration; module docstring)."""
        n, c_sum = self.events, self.pit_sum - self.events / 2
        return {
            "location": c_sum / math.sqrt(self.pit_dispersion) if self.pit_dispersion > 0 else 0.0,
            "dispersion": (self.pit_dispersion - n / 12) / math.sqrt(n / 180) if n else 0.0,
            "serial": self.pair_product / math.sqrt(self.pair_variance) if self.pair_variance > 0 else 0.0,
        }

    def p_values(self) -> dict[str, float]:
        """The p-values of the smooth test, of the PIT histogram and of the marks."""
        smooth = sum(z * z for z in self.smooth_components().values())
        expected = self.events / PIT_BINS
        shape = sum((count - expected) ** 2 for count in self.pit) / expected if self.events else 0.0
        return {
            "smooth": _chi_square_p_value(smooth, 3),
            "shape": _chi_square_p_value(shape, PIT_BINS - 1),
            "marks": self._marks_p_value(),
        }

    def serial_correlation(self) -> float | None:
        """The lag-1 autocorrelation of the centred PITs (their regression on the previous one)."""
        return self.pair_product / self.pair_previous if self.pair_previous > 0 else None

    def _marks_p_value(self) -> float:
        m = len(self.observed)
        residual = np.subtract(self.observed, self.expected)
        covariance = np.asarray(self.covariance).reshape(m, m)
        rank = int(np.linalg.matrix_rank(covariance, tol=1e-9 * max(1.0, self.events)))
        if rank == 0:
            return 1.0
        statistic = float(residual @ np.linalg.pinv(covariance, rcond=1e-9, hermitian=True) @ residual)
        return _chi_square_p_value(statistic, rank)

    def verdict(self) -> tuple[Status, list[str]]:
        """The status and, when miscalibrated, why (see the module docstring for the tests)."""
        if self.events < MIN_POINTS:
            return "insufficient_data", []
        p, n, reasons = self.p_values(), self.events, []
        if p["smooth"] < SMOOTH_LEVEL:
            reasons += self._smooth_reasons(p["smooth"])
        if p["shape"] < SHAPE_LEVEL:
            reasons.append(
                f"the waits' PITs are not uniform: histogram {list(self.pit)} over {n} events, where calibrated "
                f"forecasts give {n / PIT_BINS:g} per bin (chi-square p = {p['shape']:.1e} < {SHAPE_LEVEL:.1e})"
            )
        if p["marks"] < MARKS_LEVEL:
            counts = ", ".join(f"{o:.0f} vs {e:.1f}" for o, e in zip(self.observed, self.expected, strict=True))
            reasons.append(
                f"marks do not follow their forecast probabilities: observed vs expected events per mark {counts} "
                f"(chi-square p = {p['marks']:.1e} < {MARKS_LEVEL:.1e})"
            )
        return ("miscalibrated" if reasons else "ok"), reasons

    def _smooth_reasons(self, p: float) -> list[str]:
        """One reason per notable component of a failed smooth test, the largest first (at SMOOTH_LEVEL
        one always is: three squares past the threshold, 18.2, cannot all be below 4; the largest
        component stands in should the level ever allow that)."""
        n, z = self.events, self.smooth_components()
        chi_square = sum(v * v for v in z.values())
        joint = f"smooth test of the PITs: chi-square {chi_square:.1f} on 3 df, p = {p:.1e} < {SMOOTH_LEVEL:.1e}"
        said = {
            "location": lambda v: (
                f"events come {'sooner' if v < 0 else 'later'} than forecast: the waits' mean PIT over {n} events is "
                f"{self.pit_sum / n:.3f} and their mean compensator {self.compensator / n:.3f}, where calibrated "
                f"forecasts give 1/2 and 1"
            ),
            "dispersion": lambda v: (
                f"waits are {'more regular' if v < 0 else 'burstier'} than forecast: the mean (PIT - 1/2)^2 over {n} "
                f"events is {self.pit_dispersion / n:.4f}, where calibrated forecasts give 1/12 = 0.0833"
            ),
            "serial": lambda v: (
                "consecutive waits are not independent given their forecasts: "
                + (
                    "a short wait tends to follow a long one and a long wait a short one (the stream is more "
                    "regular than its forecasts)"
                    if v < 0
                    else "short waits follow short ones and long waits long ones (the forecasts lag behind the "
                    "stream's changes of pace)"
                )
                + f"; the PITs' lag-1 correlation over {n} events is {self.serial_correlation() or 0.0:+.3f}, where "
                "calibrated forecasts give 0"
            ),
        }
        ranked = sorted(z, key=lambda k: -abs(z[k]))
        notable = [name for name in ranked if abs(z[name]) >= NOTABLE] or ranked[:1]
        return [f"{said[name](z[name])} ({name} z = {z[name]:+.1f}; {joint})" for name in notable]

    def report(self, enabled: bool) -> dict[str, object]:
        """The session's report (the fields of the wire's ``EventCalibrationReport``)."""
        status, reasons = self.verdict()
        n = self.events
        return {
            "enabled": enabled,
            "status": status,
            "reasons": reasons,
            "scored_events": n,
            "mean_log_likelihood": self.log_likelihood / n if n else None,
            "mean_mark_log_likelihood": self.mark_log_likelihood / n if n else None,
            "mean_compensator": self.compensator / n if n else None,
            "pit_mean": self.pit_sum / n if n else None,
            "pit_variance": self.pit_dispersion / n - (self.pit_sum / n - 0.5) ** 2 if n else None,
            "pit_histogram": list(self.pit),
            "pit_serial_correlation": self.serial_correlation(),
            "mark_observed": [round(v) for v in self.observed],
            "mark_expected": list(self.expected),
        }
