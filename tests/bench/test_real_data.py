"""The real-data development set and its protocol."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from model.data.real_series import SERIES, WINDOW, load_series, real_windows, split_window, window_starts


@pytest.fixture(scope="module")
def windows():
    return real_windows()


def test_the_set_has_at_least_8_series_from_at_least_2_packages(windows):
    assert len({(w.package, w.name) for w in windows}) >= 8
    assert len({w.package for w in windows}) >= 2
    assert len({(w.package, w.name) for w in windows}) == len(SERIES)  # every listed series gave a window


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
