"""The real-data sets (development and held-out), their protocol, the fitted GP and the scores of bench.real_data."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from bench.baselines.fitted_gp import KERNELS, by_evidence, fit, fit_both
from bench.real_data import gaussian_scores, pooled, y_transform_for
from model.data.real_series import (
    HELD_OUT_SERIES,
    SERIES,
    WINDOW,
    load_series,
    real_windows,
    split_window,
    window_starts,
)


@pytest.fixture(scope="module")
def windows():
    return real_windows()


def test_the_set_has_at_least_8_series_from_at_least_2_packages(windows):
    assert len({(w.package, w.name) for w in windows}) >= 8
    assert len({w.package for w in windows}) >= 2
    assert len({(w.package, w.name) for w in windows}) == len(SERIES)  # every listed series gave a window


def test_the_held_out_set_loads_and_shares_no_series_with_the_development_set():
    held_out = real_windows("held-out")
    names = {(w.package, w.name) for w in held_out}
    assert len(names) == len(HELD_OUT_SERIES) >= 8  # every listed series gave a window
    assert not names & {(p, name) for p, name, _, _ in SERIES}
    assert all(len(w.x_context) >= 20 and np.all(np.diff(w.x_context) >= 0) for w in held_out)


def test_window_rule():
    assert window_starts(98) == [0]  # shorter than a window: the whole series
    assert window_starts(120) == [0]
    assert window_starts(239) == [0]
    assert window_starts(289) == [0, 169]  # first and last 120 points
    assert window_starts(7980) == [0, 2620, 5240, 7860]  # at most 4, spread evenly
    for n in range(121, 2000, 7):
        starts = window_starts(n)
        assert len(starts) == min(4, n // WINDOW)
        assert all(b - a >= WINDOW for a, b in zip(starts, starts[1:], strict=False))  # no overlap
        assert starts[-1] + WINDOW <= n


def test_each_window_is_its_points_split_into_disjoint_halves_in_time_order(windows):
    by_series = {(p, name): (xc, yc) for p, name, xc, yc in SERIES}
    for w in windows:
        x, y = load_series(w.package, w.name, *by_series[(w.package, w.name)])
        length = min(len(x), WINDOW)
        x, y = x[w.start : w.start + length], y[w.start : w.start + length]
        assert len(w.x_context) == length // 2 and w.n == length
        # The two halves hold exactly the window's (x, y) pairs, repeated x values included.
        pairs = Counter(zip(np.r_[w.x_context, w.x_target], np.r_[w.y_context, w.y_target], strict=True))
        assert pairs == Counter(zip(x, y, strict=True)), w.key
        assert np.all(np.diff(w.x_context) >= 0) and np.all(np.diff(w.x_target) >= 0)
        assert (w.x_low, w.x_high) == (x.min(), x.max())


def test_split_is_a_random_half_by_position_and_disjoint():
    x = np.arange(120.0) + 0.5
    w = split_window("pkg", "name", 0, x, -x)
    assert not set(w.x_context) & set(w.x_target)
    assert sorted([*w.x_context, *w.x_target]) == list(x)
    assert list(w.x_context) == sorted(w.x_context)  # streamed in time order
    assert not np.array_equal(w.x_context, x[:60]) and not np.array_equal(w.x_context, x[::2])  # not a fixed pattern
    other = split_window("pkg", "name", 120, x, -x)  # another window gets its own seed
    assert not np.array_equal(w.x_context, other.x_context)


def test_windows_are_deterministic(windows):
    again = real_windows()
    assert [w.key for w in again] == [w.key for w in windows]
    for a, b in zip(windows, again, strict=True):
        for field in ("x_context", "y_context", "x_target", "y_target"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    lynx = next(w for w in windows if w.name == "lynx")
    assert lynx.x_context[:3].tolist() == [1821.0, 1823.0, 1827.0]  # pinned: a changed rule shows up here


def _numpy_posterior(fitted, x_train, y_train, x_test):
    """The noisy-target posterior and log marginal likelihood from the fitted hyperparameters, in plain numpy."""
    h = fitted.hyperparameters()
    a, b = fitted.scaled(x_train), fitted.scaled(x_test)

    def k(u, v):
        r = np.sqrt(((u[:, None] - v[None, :]) ** 2).sum(-1)) / h["length_scale"]
        if fitted.kernel == "rbf":
            return h["amplitude"] * np.exp(-0.5 * r**2)
        s = math.sqrt(5.0) * r
        return h["amplitude"] * (1 + s + s**2 / 3) * np.exp(-s)

    mu, sd = y_train.mean(), y_train.std()
    z = (y_train - mu) / sd
    cov = k(a, a) + (h["noise"] + fitted.model.alpha) * np.eye(len(a))
    chol = np.linalg.cholesky(cov)
    weights = np.linalg.solve(cov, z)
    cross = k(b, a)
    mean = mu + sd * cross @ weights
    var = sd**2 * (h["amplitude"] + h["noise"] - np.einsum("ij,ji->i", cross, np.linalg.solve(cov, cross.T)))
    lml = -0.5 * z @ weights - np.log(np.diag(chol)).sum() - 0.5 * len(a) * math.log(2 * math.pi)
    return mean, var, lml


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fitted_gp_predicts_the_numpy_posterior_of_its_hyperparameters(kernel, dim):
    """On a series (x [n]) and on an image's pixels (x [n, 2], each dimension with its own span)."""
    rng = np.random.default_rng(5)
    low, high = np.array([10.0, 0.0])[:dim], np.array([30.0, 27.0])[:dim]
    x = rng.uniform(low, high, (40, dim))
    y = 50.0 + 8.0 * np.sin(x.sum(1) / 2.0) + rng.normal(0.0, 2.0, 40)
    x_test = rng.uniform(low - 1.0, high + 1.0, (25, dim))
    if dim == 1:
        x, x_test, low, high = x[:, 0], x_test[:, 0], float(low[0]), float(high[0])
    fitted = fit(kernel, x, y, low, high)
    np.testing.assert_allclose(fitted.scaled(x), 4.0 * (x.reshape(40, dim) - low) / (high - low) - 2.0, atol=1e-12)
    mean, var = fitted.predict(x_test)
    want_mean, want_var, want_lml = _numpy_posterior(fitted, x, y, x_test)
    np.testing.assert_allclose(mean, want_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-6, atol=1e-9)
    assert fitted.log_marginal_likelihood == pytest.approx(want_lml, abs=1e-6)
    assert var.min() > 0.9 * fitted.hyperparameters()["noise"] * y.std() ** 2  # the noise is in the variance


def test_evidence_picks_the_higher_marginal_likelihood():
    rng = np.random.default_rng(6)
    x = np.sort(rng.uniform(0.0, 1.0, 30))
    fits = fit_both(x, np.abs(x - 0.5) + rng.normal(0.0, 0.02, 30), 0.0, 1.0)  # a kink: Matérn's evidence wins
    assert by_evidence(fits).log_marginal_likelihood == max(f.log_marginal_likelihood for f in fits.values())
    assert by_evidence(fits).kernel == "matern52"


def test_a_noise_free_fit_is_reported_on_its_bound():
    x = np.linspace(0.0, 1.0, 30)
    fitted = fit("rbf", x, np.sin(3 * x), 0.0, 1.0)
    assert "noise" in fitted.at_bounds()
    rng = np.random.default_rng(7)
    assert fit("rbf", x, np.sin(3 * x) + rng.normal(0, 0.1, 30), 0.0, 1.0).at_bounds() == []


def test_fitted_gp_covers_95_percent_of_gp_draws():
    rng = np.random.default_rng(8)
    covered = total = 0
    for _ in range(15):
        x = np.sort(rng.uniform(0.0, 100.0, 120))
        cov = 4.0 * np.exp(-0.5 * ((x[:, None] - x[None, :]) / 12.0) ** 2) + 1.0 * np.eye(120)  # noise: 1/5 of y
        y = 3.0 + np.linalg.cholesky(cov + 1e-9 * np.eye(120)) @ rng.standard_normal(120)
        context = rng.permutation(120)[:60]
        target = np.setdiff1d(np.arange(120), context)
        fitted = fit("rbf", x[context], y[context], x.min(), x.max())
        scores = gaussian_scores(y[target], *fitted.predict(x[target]))
        covered, total = covered + scores["covered_95"], total + scores["n"]
    assert 0.92 <= covered / total <= 0.98, covered / total


def test_gaussian_scores_by_hand():
    s = gaussian_scores(np.array([0.0, 2.0, 1.0]), np.zeros(3), np.array([1.0, 1.0, 4.0]))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    want_ll = (-half_log_2pi - (half_log_2pi + 2.0) - (half_log_2pi + 0.5 * math.log(4.0) + 0.125)) / 3
    assert s["ll"] == pytest.approx(want_ll, abs=1e-12)
    assert s["rmse"] == pytest.approx(math.sqrt(5.0 / 3.0), abs=1e-12)
    assert s["coverage_95"] == pytest.approx(2 / 3)  # 2 lies outside 0 +- 1.96; 1 is inside 0 +- 3.92
    both = pooled([s, gaussian_scores(np.array([3.0]), np.zeros(1), np.ones(1))])
    assert both["n"] == 4 and both["coverage_95"] == pytest.approx(0.5)
    assert both["rmse"] == pytest.approx(math.sqrt(14.0 / 4.0), abs=1e-12)


def test_y_transform_modes(windows):
    w = windows[0]
    t = y_transform_for(w, "context")
    assert t == {"shift": pytest.approx(w.y_context.mean()), "scale": pytest.approx(w.y_context.std())}
    assert t["scale"] != pytest.approx(w.y_target.std())  # from the context only
    assert y_transform_for(w, "auto") == "auto"
    with pytest.raises(ValueError):
        y_transform_for(w, "targets")
