"""Suite-wide collection order: test files that hold a ``slow`` test run first.

``make test`` runs two xdist workers that take whole files in collection order (``--dist loadfile``),
so a long file collected last leaves one worker idle while the other finishes it (about a minute
of the suite's wall time, measured). Started first, the long files overlap the many short ones.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its own order
