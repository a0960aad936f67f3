"""The calibration monitor's error rates, measured with the shipped paper model on its own prior.

The full measurement (2,048 sessions per size, both shipped models) is `python -m bench.calibration_monitor`;
this is a small version of it that can fail: an alarm on a session whose intervals are fine on fresh data
from the same function, or too little power against intervals 1.5x or 2x too narrow.
"""

from __future__ import annotations

import torch

from bench.calibration_monitor import measure
from tests.service.helpers import REPO


def test_alarms_only_on_sessions_whose_intervals_are_too_narrow_and_most_of_those() -> None:
    torch.set_num_threads(1)
    checkpoint = str(REPO / "checkpoints" / "cmanp-gp-rbf.safetensors")
    result = measure(checkpoint, {"kind": "gp", "kernel": "rbf"}, sessions=128, batch=64, seed=99, sizes=(100,))
    at_100 = result["sizes"]["100"]
    # Most in-prior sessions are fine: the check below is about them. A false-alarm rate of 5% would
    # show in 100 of them with probability 0.994 (the monitor's measured rate is ~5e-4).
    assert at_100["fine"] >= 100
    assert at_100["alarms_when_fine"] == 0, at_100
    # Measured over 1,024 sessions: 49% at 1.5x and 98% at 2x (bench/RESULTS.md); over 128 sessions the
    # share at 1.5x has a standard error of 0.044, so 0.35 is 3 below.
    assert at_100["rates"]["flagged_at_1.5x"] >= 0.35, at_100
    assert at_100["rates"]["flagged_at_2x"] >= 0.9, at_100
