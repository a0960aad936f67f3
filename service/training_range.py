"""The range guard: the inputs and outputs a model was trained on, and the points that fall outside.

A model is trustworthy only near its training distribution. The x range is part of the model's
config (``x_range``, per x dimension); the y range is stated by the model card sidecar
(``"y_range": [low, high]`` in ``<stem>.json``), since it is a property of the training data, not
of the architecture. Both are in the model's units, after a session's transforms. Points outside
are still accepted; they are counted (``out_of_range_fraction``) and queries outside get warnings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.text import plural

# Slack for points mapped exactly onto a bound by an x_transform: rounding must not flag them.
RELATIVE_SLACK = 1e-6


@dataclass(frozen=True)
class TrainingRange:
    x: tuple[float, float]
    y: tuple[float, float] | None  # None: the model card does not state one, so y is not checked

    @staticmethod
    def _outside(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        """Per row of values [n, dim]: whether any dimension lies outside [low, high]."""
        low, high = bounds
        slack = RELATIVE_SLACK * (high - low)
        return ((values < low - slack) | (values > high + slack)).any(axis=1)

    def count_outside(self, x: np.ndarray, y: np.ndarray) -> int:
        """Context points (model units, [n, dim] each) whose x or y lies outside the training range."""
        outside = self._outside(x, self.x)
        if self.y is not None:
            outside |= self._outside(y, self.y)
        return int(outside.sum())

    def query_warnings(self, x: np.ndarray) -> list[str]:
        """Warnings for queries x [m, dim_x] (model units) outside the training input range."""
        outside = int(self._outside(x, self.x).sum())
        if not outside:
            return []
        low, high = self.x
        lie = "lies" if outside == 1 else "lie"
        return [
            f"{outside} of {plural(len(x), 'query point')} {lie} outside the model's training input range "
            f"[{low:g}, {high:g}] (after the session's x_transform); predictions there are extrapolations the "
            "model never saw"
        ]
