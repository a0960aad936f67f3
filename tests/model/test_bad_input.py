"""Bad input to the session API (update, condition, predict, merge) raises a ValueError that says
what is wrong, and a failed update leaves the state as it was. Damaged state blobs: test_state.py."""

import math

import pytest
import torch

from tests.model.conftest import small_model


def one(batch=2, k=3, dx=1, dy=1):
    return torch.zeros(batch, k, dx), torch.zeros(batch, k, dy)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (torch.zeros(3, 1), torch.zeros(3, 1), r"shape \[batch, points, 1\]"),
        (torch.zeros(2, 3, 2), torch.zeros(2, 3, 1), "features per point"),
        (torch.zeros(2, 3, 1), torch.zeros(2, 3, 4), "features per point"),
        (torch.zeros(2, 3, 1), torch.zeros(2, 4, 1), "x has 3 points but y has 4"),
        (torch.zeros(5, 3, 1), torch.zeros(5, 3, 1), "batch size 5, expected 2"),
        (torch.zeros(2, 3, 1), torch.zeros(1, 3, 1), "batch size 1, expected 2"),
        (torch.zeros(2, 0, 1), torch.zeros(2, 0, 1), "no points"),
        (torch.tensor([[[math.nan]]]).expand(2, 1, 1), torch.zeros(2, 1, 1), "NaN or Inf"),
        (torch.zeros(2, 1, 1), torch.tensor([[[math.inf]]]).expand(2, 1, 1), "NaN or Inf"),
        (torch.zeros(2, 1, 1, dtype=torch.bool), torch.zeros(2, 1, 1), "numeric"),
    ],
)
def test_update_rejects(small, state, x, y, match):
    before = state.to_bytes()
    with pytest.raises(ValueError, match=match):
        small.update(state, x, y)
    assert state.to_bytes() == before  # a failed update changes nothing


def test_condition_rejects_mismatched_batches_and_bad_chunk(small):
    with pytest.raises(ValueError, match="batch size"):
        small.condition(torch.zeros(2, 3, 1), torch.zeros(3, 3, 1))
    with pytest.raises(ValueError, match="chunk_size"):
        small.condition(*one(), chunk_size=0)


def test_predict_rejects(small, state):
    with pytest.raises(ValueError, match="NaN or Inf"):
        small.predict(state, torch.full((2, 4, 1), math.nan))
    with pytest.raises(ValueError, match="batch size 1, expected 2"):
        small.predict(state, torch.zeros(1, 4, 1))
    with pytest.raises(ValueError, match="features per point"):
        small.predict(state, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="no points"):
        small.predict(state, torch.zeros(2, 0, 1))


def test_merge_rejects_other_models_and_batch_sizes(small, state):
    other = small_model(seed=1)
    with pytest.raises(ValueError, match="built by model"):
        small.merge(state, other.empty_state(2))
    with pytest.raises(ValueError, match="batch sizes 2 and 1"):
        small.merge(state, small.empty_state(1))
    with pytest.raises(ValueError, match="CMANPState"):
        small.merge(state, "not a state")
    with pytest.raises(ValueError, match="batch_size"):
        small.empty_state(0)
