"""The classical reference on real data: an exact GP whose hyperparameters are fitted to the context (ML-II).

What a practitioner would do with a series or an image and scikit-learn: ``GaussianProcessRegressor`` with
``normalize_y=True`` (y standardised by the context's mean and std), hyperparameters maximising
the log marginal likelihood from several optimizer starts, for two kernels,

* ``rbf``: ConstantKernel * RBF + WhiteKernel,
* ``matern52``: ConstantKernel * Matern(nu=2.5) + WhiteKernel,

each fitted on the context only. x is first mapped affinely onto [-2, 2] by the window's span, as
the service's ``x_transform`` maps it for the model, so the length-scale bounds mean the same on
every series. Per window the kernel with the higher log marginal likelihood is the honest choice
(it looks at the context only); the kernel that does better on the targets is a stronger reference,
which peeks. Predictions are of the noisy targets: the variance includes the fitted white noise,
because ``predict`` evaluates the whole kernel's diagonal, WhiteKernel included.

Inputs of several dimensions (an image's pixel row and column: ``model.evaluate_images``) are
mapped per dimension by their own bounds and share one length-scale (an isotropic kernel).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Kernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

RESTARTS = 9  # optimizer starts besides the first, drawn log-uniformly within the bounds
# Bounds in the units the GP sees: x on [-2, 2] (span 4), y standardised by normalize_y.
AMPLITUDE_BOUNDS = (1e-4, 1e4)  # signal variance
LENGTH_BOUNDS = (1e-3, 1e3)
NOISE_BOUNDS = (1e-8, 1e2)  # noise variance
AT_BOUND_FACTOR = 1.01  # a fitted value within this factor of a bound counts as on it
KERNELS = ("rbf", "matern52")


def make_kernel(name: str) -> Kernel:
    """A fresh kernel of the family ``name`` with its starting values and bounds."""
    if name == "rbf":
        shape: Kernel = RBF(length_scale=1.0, length_scale_bounds=LENGTH_BOUNDS)
    elif name == "matern52":
        shape = Matern(length_scale=1.0, length_scale_bounds=LENGTH_BOUNDS, nu=2.5)
    else:
        raise ValueError(f"unknown kernel {name!r}; choose from {KERNELS}")
    return ConstantKernel(1.0, AMPLITUDE_BOUNDS) * shape + WhiteKernel(0.1, NOISE_BOUNDS)


@dataclass(frozen=True)
class GPFit:
    """One fitted kernel: the regressor, its log marginal likelihood, and its hyperparameters."""

    kernel: str
    model: GaussianProcessRegressor
    x_low: float | np.ndarray  # the span mapped onto [-2, 2]: a number, or one per input dimension
    x_high: float | np.ndarray
    log_marginal_likelihood: float

    def hyperparameters(self) -> dict[str, float]:
        """Signal variance, length-scale and noise variance, in the GP's units (x on [-2, 2], y standardised)."""
        product, white = self.model.kernel_.k1, self.model.kernel_.k2
        return {
            "amplitude": float(product.k1.constant_value),
            "length_scale": float(product.k2.length_scale),
            "noise": float(white.noise_level),
        }

    def at_bounds(self) -> list[str]:
        """The hyperparameters that sit on (within ``AT_BOUND_FACTOR`` of) a bound of their range."""
        values = self.hyperparameters()
        bounds = {"amplitude": AMPLITUDE_BOUNDS, "length_scale": LENGTH_BOUNDS, "noise": NOISE_BOUNDS}
        return [
            name
            for name, (low, high) in bounds.items()
            if values[name] <= low * AT_BOUND_FACTOR or values[name] >= high / AT_BOUND_FACTOR
        ]

    def scaled(self, x: np.ndarray) -> np.ndarray:
        """x [n] (one input) or [n, d] mapped onto [-2, 2] by the span of each dimension: [n, d]."""
        x = np.asarray(x, np.float64)
        x = x[:, None] if x.ndim == 1 else x
        low, high = np.asarray(self.x_low, np.float64), np.asarray(self.x_high, np.float64)
        return 4.0 * (x - low) / (high - low) - 2.0

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and variance of noisy observations at x, in the data's units."""
        with threadpool_limits(1):
            mean, std = self.model.predict(self.scaled(x), return_std=True)
        return mean, std**2


def fit(
    kernel: str,
    x: np.ndarray,
    y: np.ndarray,
    x_low: float | np.ndarray,
    x_high: float | np.ndarray,
    seed: int = 0,
    restarts: int = RESTARTS,
) -> GPFit:
    """Fit one kernel family to (x [n] or [n, d], y [n]) by ML-II, with ``restarts`` extra optimizer starts."""
    model = GaussianProcessRegressor(
        make_kernel(kernel), normalize_y=True, n_restarts_optimizer=restarts, random_state=seed
    )
    placeholder = GPFit(kernel, model, x_low, x_high, math.nan)
    # One BLAS thread: on 60 points, threads only contend (20x slower on a busy 2-core machine).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a start that stops early; the best start is kept
        model.fit(placeholder.scaled(x), np.asarray(y, np.float64))
    return GPFit(kernel, model, x_low, x_high, float(model.log_marginal_likelihood_value_))


def fit_both(x: np.ndarray, y: np.ndarray, x_low: float, x_high: float, seed: int = 0) -> dict[str, GPFit]:
    """Both kernel families fitted to the same context, by name."""
    return {name: fit(name, x, y, x_low, x_high, seed) for name in KERNELS}


def by_evidence(fits: dict[str, GPFit]) -> GPFit:
    """The fit with the higher log marginal likelihood: the choice made without looking at the targets."""
    return max(fits.values(), key=lambda f: f.log_marginal_likelihood)
