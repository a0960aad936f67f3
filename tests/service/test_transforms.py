"""Unit maps between the user's units and the model's, and the checks on points mapped into model units."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import UnprocessableError
from service.transforms import (
    MAX_MODEL_VALUE,
    MAX_RAW_VALUE,
    AffineMap,
    affine_map,
    auto_y_map,
    bounds_map,
    model_points,
    raw_points,
)


def test_a_number_applies_to_every_dimension_and_a_list_gives_one_per_dimension() -> None:
    t = affine_map(2.0, [1.0, 4.0], 2, "x_transform")
    assert t.shift.tolist() == [2.0, 2.0] and t.scale.tolist() == [1.0, 4.0]
    np.testing.assert_array_equal(t.to_model(np.array([[3.0, 10.0]])), [[1.0, 2.0]])


def test_a_list_of_the_wrong_length_is_refused_with_its_name() -> None:
    with pytest.raises(UnprocessableError, match="x_transform.scale has 3 values, the model has 2 dimensions"):
        affine_map(0.0, [1.0, 2.0, 3.0], 2, "x_transform")


def test_bounds_are_mapped_onto_the_model_s_training_range() -> None:
    t = bounds_map(0.0, [100.0, 10.0], 2, (-2.0, 2.0))
    user = np.array([[0.0, 0.0], [100.0, 10.0], [50.0, 5.0]])
    np.testing.assert_allclose(t.to_model(user), [[-2, -2], [2, 2], [0, 0]])


def test_bounds_need_high_above_low() -> None:
    with pytest.raises(UnprocessableError, match="high > low"):
        bounds_map([0.0, 1.0], [1.0, 1.0], 2, (-2.0, 2.0))


def test_predictions_go_back_to_user_units() -> None:
    t = AffineMap.from_lists([10.0], [2.0])
    assert t.mean_to_user(np.array([[1.0]])).tolist() == [[12.0]]
    assert t.variance_to_user(np.array([[1.0]])).tolist() == [[4.0]]
    assert t.covariance_to_user(np.ones((1, 2, 2))).tolist() == [[[4.0, 4.0], [4.0, 4.0]]]


def test_the_auto_map_is_the_points_mean_and_spread() -> None:
    t = auto_y_map(np.array([[1.0], [3.0]]))
    assert t.shift.tolist() == [2.0] and t.scale.tolist() == [1.0]


@pytest.mark.parametrize(("values", "scale"), [([[5.0], [5.0]], 5.0), ([[-4.0]], 4.0), ([[0.0]], 1.0)])
def test_without_spread_the_auto_scale_is_the_magnitude_of_the_mean(values: list, scale: float) -> None:
    assert auto_y_map(np.array(values)).scale.tolist() == [scale]


def test_points_beyond_the_model_s_range_after_the_map_are_refused() -> None:
    t = AffineMap.from_lists([0.0], [1e-3])
    assert model_points([[1.0]], t, "x").tolist() == [[1000.0]]
    with pytest.raises(UnprocessableError, match="too large for the model"):
        model_points([[MAX_MODEL_VALUE]], t, "x")


def test_points_with_the_wrong_number_of_features_are_refused() -> None:
    with pytest.raises(UnprocessableError, match="x has 2 features per point, the session's model expects 1"):
        model_points([[1.0, 2.0]], AffineMap.identity(1), "x")


def test_raw_points_are_kept_in_user_units_unless_they_are_beyond_float32_s_safe_range() -> None:
    assert raw_points([[1e20]], 1, "y").tolist() == [[np.float32(1e20)]]
    with pytest.raises(UnprocessableError, match="beyond"):
        raw_points([[MAX_RAW_VALUE * 10]], 1, "y")
