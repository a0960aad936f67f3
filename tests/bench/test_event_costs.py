"""``python -m bench.event_costs --quick`` runs end to end: every field, a state of one size at every
history size, and the report's section. Timings are never asserted (bench/RESULTS.md has them)."""

from __future__ import annotations

import json

from bench.event_costs import main
from bench.report import event_costs_section, replace_section


def test_quick_event_costs_write_every_field_and_a_constant_state(tmp_path):
    out = tmp_path / "event_costs.json"
    main(["--quick", "--checkpoint", str(tmp_path / "absent.safetensors"), "--out", str(out), "--note", "Shared."])
    result = json.loads(out.read_text())
    assert result["weights"].startswith("random init") and result["torch_threads"] == 1
    rows = result["cmhp"]
    assert [r["n"] for r in rows] == [10, 300, 1000, 10_000]  # the transformer's N joins the sizes
    assert len({r["state_bytes"] for r in rows}) == 1 and rows[0]["state_bytes"] > 0
    for r in rows:
        assert 0 < r["update_median_us"] < r["step_median_us"] <= r["step_p90_us"]
        assert r["repeats"] == result["rounds"] * result["per_round"]
    thp = result["transformer"]
    assert thp["n"] == 300 and thp["repeats"] == result["rounds"] and thp["step_median_ms"] > 0
    assert thp["config"]["d_model"] == result["config"]["d_model"] == 64
    assert thp["config"]["n_layers"] == result["config"]["n_blocks"] == 3
    at = next(r for r in rows if r["n"] == 300)
    assert abs(result["transformer_over_cmhp"] - thp["step_median_ms"] * 1e3 / at["step_median_us"]) < 1e-6
    assert len(result["transformer_over_cmhp_by_round"]) == result["rounds"]
    assert result["acceptance"]["state_bytes_constant"] is True
    section = "\n".join(event_costs_section(result, "python -m bench.event_costs --quick"))
    assert section.startswith("## 10. Event model") and "quick mode: N = 10^6 not run" in section
    assert "quick mode: N = 10^4 not run" in section and "**FAIL**" in section  # quick mode never passes
    assert " Shared. " in section


def test_one_section_is_replaced_or_appended_and_the_rest_kept(tmp_path):
    report = tmp_path / "RESULTS.md"
    report.write_text("# R\n\n## 9. Nine\n\nkeep\n\n## 10. Old\n\nstale\n\n## 11. Eleven\n\nkeep too\n")
    replace_section(report, ["## 10. New", "", "fresh", ""])
    assert report.read_text() == "# R\n\n## 9. Nine\n\nkeep\n\n## 10. New\n\nfresh\n\n## 11. Eleven\n\nkeep too\n"
    report.write_text("# R\n\n## 9. Nine\n\nkeep\n")
    replace_section(report, ["## 10. New", "", "fresh", ""])
    assert report.read_text() == "# R\n\n## 9. Nine\n\nkeep\n\n## 10. New\n\nfresh\n"
