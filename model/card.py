"""A checkpoint's model-card sidecar ``<stem>.json``: the headline numbers ``GET /v1/models`` serves.

Evaluations of every model family merge their figures into it through ``read_card`` and
``write_card``, so the rule about stale numbers lives in one place: figures recorded for other
weights (another fingerprint) are dropped, while facts about the data and the recipe are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

# Keys that describe the training data, the session defaults and how the weights are served (the
# tiling, model.tiled), not the figures of one set of weights.
RECIPE_KEYS = ("y_range", "y_transform_default", "tiling")


def read_card(path: Path, fingerprint: str) -> dict:
    """The card at ``path`` (empty if absent) for the weights ``fingerprint``: another fingerprint's
    figures are dropped, ``RECIPE_KEYS`` kept; ``fingerprint`` is set."""
    card = json.loads(path.read_text()) if path.exists() else {}
    if card.get("fingerprint") not in (None, fingerprint):
        card = {k: v for k, v in card.items() if k in RECIPE_KEYS}
    card["fingerprint"] = fingerprint
    return card


def write_card(path: Path, card: dict) -> None:
    """Write the card with sorted keys (stable diffs)."""
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
