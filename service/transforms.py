"""Per-dimension affine maps between the user's units and the model's, and request points -> model inputs.

A session stores ``model = (user - shift) / scale`` for x and for y. Predictions go back with
``mean_user = mean * scale_y + shift_y`` and ``var_user = var * scale_y**2``. Bounds ``[low, high]``
for x are mapped onto the model's training range ``x_range``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import UnprocessableError
from service.text import plural

# Largest magnitude accepted in the model's units. The models are trained on O(1) values; far
# beyond that their activations overflow float32 (NaN predictions, or a state that no longer
# loads). A million is far outside any meaningful input and far inside the overflow.
MAX_MODEL_VALUE = 1e6


@dataclass(frozen=True)
class AffineMap:
    shift: np.ndarray  # float64 [dim]
    scale: np.ndarray  # float64 [dim], > 0

    @classmethod
    def identity(cls, dim: int) -> AffineMap:
        return cls(np.zeros(dim), np.ones(dim))

    @classmethod
    def from_lists(cls, shift: Sequence[float], scale: Sequence[float]) -> AffineMap:
        return cls(np.asarray(shift, dtype=np.float64), np.asarray(scale, dtype=np.float64))

    def to_model(self, user: np.ndarray) -> np.ndarray:
        return (user - self.shift) / self.scale

    def mean_to_user(self, mean: np.ndarray) -> np.ndarray:
        return mean * self.scale + self.shift

    def variance_to_user(self, variance: np.ndarray) -> np.ndarray:
        return variance * self.scale**2

    def covariance_to_user(self, covariance: np.ndarray) -> np.ndarray:
        """[dim, m, m]: one covariance matrix per output dimension."""
        return covariance * (self.scale**2)[:, None, None]


def _per_dim(value: float | list[float], dim: int, name: str) -> np.ndarray:
    if isinstance(value, float):
        return np.full(dim, value)
    if len(value) != dim:
        raise UnprocessableError(f"{name} has {plural(len(value), 'value')}, the model has {plural(dim, 'dimension')}")
    return np.asarray(value, dtype=np.float64)


def affine_map(shift: float | list[float], scale: float | list[float], dim: int, name: str) -> AffineMap:
    """The map ``(user - shift) / scale`` of a ``dim``-dimensional quantity ``name``; a number applies
    to every dimension, a list gives one per dimension (422 if its length is not ``dim``)."""
    return AffineMap(_per_dim(shift, dim, f"{name}.shift"), _per_dim(scale, dim, f"{name}.scale"))


def bounds_map(
    low: float | list[float], high: float | list[float], dim: int, x_range: tuple[float, float]
) -> AffineMap:
    """The x map that takes user-unit bounds [low, high] (per dimension) onto the model's ``x_range``."""
    lows, highs = _per_dim(low, dim, "x_transform.low"), _per_dim(high, dim, "x_transform.high")
    if not np.all(highs > lows):
        raise UnprocessableError("x_transform bounds need high > low in every dimension")
    model_low, model_high = x_range
    scale = (highs - lows) / (model_high - model_low)
    return AffineMap(lows - model_low * scale, scale)


# Raw y of an auto-scaled session is stored as float32 before it is scaled: keep it far from
# float32's overflow, so that sums of squares for the scale stay finite.
MAX_RAW_VALUE = 1e30


def auto_y_map(y: np.ndarray) -> AffineMap:
    """The auto y map of points y [n, dim] (user units): their mean and standard deviation.

    With fewer than two distinct values there is no spread to measure: the scale is then |mean|
    (1 for a mean of 0), a guess that keeps the model's prior band as wide as the data's magnitude.
    """
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return AffineMap(np.zeros(y.shape[1]), np.ones(y.shape[1]))
    shift, spread = y.mean(axis=0), y.std(axis=0)
    fallback = np.where(np.abs(shift) > 0, np.abs(shift), 1.0)
    scale = np.where(spread > 1e-12 * np.maximum(1.0, np.abs(shift)), spread, fallback)
    return AffineMap(shift, scale)


def raw_points(points: list[list[float]], dim: int, name: str) -> np.ndarray:
    """Validated y rows of an auto-scaled session, user units, float32 [n, dim]."""
    if len(points[0]) != dim:
        raise UnprocessableError(f"{name} has {len(points[0])} features per point, the session's model expects {dim}")
    out = np.asarray(points, dtype=np.float64)
    if not (np.abs(out) <= MAX_RAW_VALUE).all():
        raise UnprocessableError(f"{name} has values beyond ±{MAX_RAW_VALUE:g}: rescale them before posting")
    return out.astype(np.float32)


def model_points(points: list[list[float]], transform: AffineMap, name: str) -> np.ndarray:
    """Validated request rows (user units) -> float32 [n, dim] in model units; 422 if they do not fit."""
    dim = len(transform.shift)
    if len(points[0]) != dim:
        raise UnprocessableError(
            f"{name} has {plural(len(points[0]), 'feature')} per point, the session's model expects {dim}"
        )
    with np.errstate(over="ignore"):
        out = transform.to_model(np.asarray(points, dtype=np.float64)).astype(np.float32)
    if not (np.abs(out) <= MAX_MODEL_VALUE).all():  # also false for inf
        raise UnprocessableError(
            f"{name} has values too large for the model: beyond ±{MAX_MODEL_VALUE:g} in its units after the "
            "session's transform (choose a transform that maps your data near the model's range)"
        )
    return out
