"""``python -m bench.event_monitor --quick`` runs end to end with the shipped event model: every family
is judged and counted by test. The full figures are in the model card; the monitor's behaviour itself
is tested in tests/service/test_events_calibration.py."""

from __future__ import annotations

import json

from bench.event_monitor import FAMILIES, LEVELS, main
from tests.service.helpers import REPO


def test_quick_event_monitor_judges_every_family_and_counts_by_test(tmp_path):
    out = tmp_path / "event_monitor.json"
    main(["--quick", "--checkpoint", str(REPO / "checkpoints" / "cmhp-hawkes-exp.safetensors"), "--out", str(out)])
    result = json.loads(out.read_text())
    null = result["false_alarms"]
    assert null["sessions"] == 400 and sum(null["per_size"].values()) == null["flagged"] <= 10
    assert set(result["families"]) == set(FAMILIES)
    for name, f in result["families"].items():
        assert f["streams"] == 4 * len(FAMILIES[name][2]) and 0 <= f["flagged"] <= f["streams"]
        assert set(f["by_test"]) <= set(LEVELS) and max(f["by_test"].values(), default=0) <= f["flagged"]
    assert result["families"]["self-correcting"]["flagged"] >= 1  # 73 of 80 in the full run
