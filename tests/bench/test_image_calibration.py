"""``bench.image_calibration`` through the real service: its fresh-pixel scores equal the model's own batch
conditioning on the same pixels, computed here by hand, and the report it reads is the session's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.image_calibration import Z_95, image_session, summary
from bench.real_data import served
from model import load_checkpoint
from model.data.images import image_set
from service.client import CMANPClient
from tests.service.helpers import PIXELS, build_checkpoint, expected_prediction

CONTEXT = 60  # above the report's 50-point minimum, so it gives a verdict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("image-calibration")
    build_checkpoint(directory, "pixels", PIXELS, seed=5)
    return directory / "pixels.safetensors"


def by_hand(checkpoint: Path, dataset: str, index: int, seed: int) -> tuple[float, float]:
    """Fresh LL per pixel and 95% coverage of the model conditioned on the same pixels in one batch."""
    images = image_set(dataset, "heldout")
    side, y = images.side, images.values[index].double().numpy()
    coordinates = np.stack(np.divmod(np.arange(side * side), side), 1) * 2.0 / (side - 1) - 1.0
    order = np.random.default_rng([seed, index]).permutation(side * side)
    seen, unseen = order[:CONTEXT], order[CONTEXT:]
    mean, variance = expected_prediction(
        load_checkpoint(checkpoint), coordinates[seen], y[seen, None], coordinates[unseen]
    )
    z = (y[unseen] - mean[:, 0]) / np.sqrt(variance[:, 0])
    return float(np.mean(-0.5 * z**2 - 0.5 * np.log(2 * np.pi * variance[:, 0]))), float(np.mean(np.abs(z) <= Z_95))


def test_fresh_scores_equal_batch_conditioning_and_the_report_is_the_sessions(checkpoint: Path) -> None:
    with served(checkpoint, "pixels") as url, CMANPClient(url) as client:
        rows = {d: image_session(client, d, 3, CONTEXT, chunk=7, seed=11) for d in ("mnist", "faces")}
    for dataset, row in rows.items():
        ll, coverage = by_hand(checkpoint, dataset, 3, seed=11)
        assert row["fresh_log_likelihood"] == pytest.approx(ll, abs=2e-3), dataset  # float32 state, user units
        assert row["fresh_coverage_95"] == pytest.approx(coverage, abs=2.0 / 784), dataset
        assert row["status"] in ("ok", "miscalibrated") and row["reported_coverage_95"] is not None
    assert summary(list(rows.values()))["images"] == 2
