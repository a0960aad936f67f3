"""Model-card sidecars (model/card.py): figures of other weights are dropped, the recipe is kept."""

from __future__ import annotations

import json
from pathlib import Path

from model.card import read_card, write_card


def test_a_new_fingerprint_drops_old_figures_but_keeps_how_the_model_is_served(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    tiling = {"levels": [1, 3], "min_points": 15.0, "overlap": 0.25, "blend": 0.1}
    write_card(
        path, {"fingerprint": "old", "rbf_ll": 1.0, "y_range": [-5, 5], "y_transform_default": "auto", "tiling": tiling}
    )
    card = read_card(path, "new")
    assert card == {"fingerprint": "new", "y_range": [-5, 5], "y_transform_default": "auto", "tiling": tiling}
    assert read_card(path, "old")["rbf_ll"] == 1.0  # the same weights keep their figures
    assert json.loads(path.read_text())["rbf_ll"] == 1.0  # reading never writes
