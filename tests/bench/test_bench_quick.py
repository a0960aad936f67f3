"""``python -m bench --quick`` runs the benchmarks end to end and writes the expected fields.

Timings are never asserted: this keeps the harness from rotting, the numbers live in bench/RESULTS.md.
Two benchmarks are left to their own tests, which run the same code in-process: ``event_costs``
(tests/bench/test_event_costs.py runs its ``main``) and ``calibration_monitor_rbf`` (the paper model's
monitor rates, tests/bench/test_calibration_monitor.py); here they would add ~20 s to the suite.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import commands

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench" / "out" / "quick"
OWN_TESTS = ("event_costs", "calibration_monitor_rbf")


@pytest.mark.slow
def test_quick_bench_writes_every_result():
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make bench-setup; .ci/run installs it)")
    shutil.rmtree(OUT, ignore_errors=True)
    only = ",".join(n for n in commands(OUT, quick=True) if n not in OWN_TESTS)
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--jobs", "3", "--only", only], cwd=REPO, check=True, timeout=900
    )

    def load(name: str):
        return json.loads((OUT / f"{name}.json").read_text())

    costs = load("model_costs")
    assert [r["n"] for r in costs["update"]] == [10, 100, 1000, 10_000]
    assert len({r["state_bytes"] for r in costs["update"]}) == 1  # constant state size
    assert all(r["update_median_us"] > 0 for r in costs["update"])
    assert {"m", "fresh_median_ms", "cached_median_ms"} <= set(costs["predict"][0])
    assert {"n", "chunk_size", "points_per_s"} <= set(costs["conditioning"][0])

    peers = load("peers")
    for row in peers["rows"]:
        for key in ("ours", "tnp", "gp"):
            assert row[f"{key}_add_s"] > 0 and row[f"{key}_add_predict_s"] > 0
        assert row["gp_memory_bytes"] > row["n"] ** 2 * 8  # the factor: O(N^2) float64
        assert -10 < row["gp_ll"] < 10 and -10 < row["ours_ll"] < 10

    memory = load("constant_memory")
    assert [r["n"] for r in memory] == [1000, 10_000]

    train = load("train_throughput")["rows"]
    assert any(r["config"].startswith("paper") and r["batch_size"] == 16 and r["tasks_per_s"] > 0 for r in train)

    service = load("service_load")
    assert service["redis_bytes_per_session_memory_usage"] > 0
    names = [s["scenario"] for s in service["scenarios"]]
    assert names == [
        "context_spread",
        "context_hot",
        "predict_spread",
        "predict_hot",
        "events_spread",
        "forecast_spread",
    ]
    assert service["events_model"] == "cmhp-hawkes-exp"
    for scenario in service["scenarios"]:
        assert set(scenario["cpu_cores"]) == {"api", "redis", "wrk", "other"}
        for load_ in scenario["loads"]:
            assert load_["requests"] > 0 and load_["error_count"] == 0
            assert load_["latency_ms"]["p50"] <= load_["latency_ms"]["p99"]

    calibration = load("calibration_cost")
    assert {"on", "off"} == set(calibration["median_posts_per_s"]) and calibration["throughput_ratio_on_over_off"] > 0

    for name, which in (("real_data", "development"), ("real_data_held_out", "held-out")):
        real = load(name)
        assert real["set"] == which and len(real["windows"]) == len(real["series"]) == 3
        for row in real["series"]:
            assert row["statuses"] and 0 <= row["model"]["coverage_95"] <= 1 and math.isfinite(row["ll_gap"])

    monitor = load("calibration_monitor")["sizes"]["100"]
    assert monitor["sessions"] == 64 and 0 <= monitor["alarms_when_fine"] <= monitor["fine"] <= 64
    wait = load("replication_wait")["results"]
    for path in ("store", "http"):
        assert set(wait[path]) == {"no WAIT", "WAIT 1 replica"}
        assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in wait[path].values())

    capacity = load("capacity")
    assert capacity["sessions"] == 2_000 and set(capacity["by_kind"]) == {"new", "small", "medium", "large"}
    assert capacity["by_kind"]["new"]["mean_bytes"] < capacity["by_kind"]["large"]["mean_bytes"]
    assert capacity["by_kind"]["large"]["mean_bytes"] > capacity["state_bytes"]  # folded: a stored blob

    runs = load("runs")
    names = [
        "model_costs", "constant_memory", "peers", "train_throughput", "service_load", "calibration_cost", "real_data",
        "real_data_held_out", "calibration_monitor", "replication_wait", "capacity",
    ]  # fmt: skip
    assert [r["name"] for r in runs] == names
    report = (OUT / "RESULTS.md").read_text()
    headings = (
        "## Machine", "## Commands", "## 1. Model", "## 2. Against peers", "## 3. Service under load", "## 5.", "## 6.",
        "## 7.",
        "## 8.", "## 9.",
    )  # fmt: skip
    for heading in headings:
        assert heading in report
    assert "### The held-out set" in report.split("## 6.")[1].split("## 7.")[0]
    assert "Not run." in report.split("## 10. Event model")[1]  # left to its own test, and the report says so
    assert (OUT / "peers.png").stat().st_size > 0
