"""Acceptance 3: every kind of bad input raises a ValueError that says what is wrong."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.state import CMANPState
from tests.model.conftest import random_points, small_model


@pytest.fixture(scope="module")
def state(small):
    x, y = random_points(20, small.cfg, batch=2)
    with torch.no_grad():
        return small.condition(x, y)


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


def test_empty_state_predicts_the_prior_and_round_trips(small):
    empty = small.empty_state(3)
    with torch.no_grad():
        mean, var = small.predict(empty, torch.linspace(-2, 2, 7).view(1, 7, 1).expand(3, 7, 1))
    assert torch.isfinite(mean).all() and (var > 0).all() and torch.isfinite(var).all()
    assert torch.allclose(mean[0], mean[1])  # no data: the same prior for every session
    again = small.state_from_bytes(empty.to_bytes())
    assert again.num_points.tolist() == [0, 0, 0] and torch.isneginf(again.log_norm).all()


def test_bytes_round_trip_is_exact(small, state):
    again = small.state_from_bytes(state.to_bytes())
    assert torch.equal(again.log_norm, state.log_norm) and torch.equal(again.value_sum, state.value_sum)
    assert torch.equal(again.num_points, state.num_points) and again.version == state.version


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b"", "truncated"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + (2).to_bytes(2, "little") + b[10:], "format version 2"),
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "checksum"),
        (lambda b: b + b"\0", "truncated or corrupted"),
    ],
)
def test_state_from_bytes_rejects_damaged_blobs(small, state, mutate, match):
    with pytest.raises(ValueError, match=match):
        small.state_from_bytes(mutate(state.to_bytes()))


def test_state_from_bytes_rejects_foreign_and_non_bytes(small, state):
    other = small_model(seed=1)
    with pytest.raises(ValueError, match="belongs to model"):
        other.state_from_bytes(state.to_bytes())
    with pytest.raises(ValueError, match="must be bytes"):
        small.state_from_bytes("a string")


def test_state_from_bytes_rejects_inconsistent_values(small, state):
    """A well-formed blob (valid checksum) whose numbers are impossible is still refused."""
    bad = CMANPState(state.log_norm.clone(), state.value_sum.clone(), state.num_points.clone(), state.fingerprint)
    bad.value_sum[0, 0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite value sums"):
        small.state_from_bytes(bad.to_bytes())
    empty_claim = CMANPState(state.log_norm, state.value_sum, torch.tensor([0, 20]), state.fingerprint)
    with pytest.raises(ValueError, match="non-finite log normalisers|claims an empty context"):
        small.state_from_bytes(empty_claim.to_bytes())
    negative = CMANPState(state.log_norm, state.value_sum, torch.tensor([-1, 20]), state.fingerprint)
    with pytest.raises(ValueError, match="negative point count"):
        small.state_from_bytes(negative.to_bytes())


# Every reason a damaged blob can be refused for; each says what is wrong with it.
DAMAGE = "truncated|corrupted|bad magic|format version|dtype code|belongs to model|has dims|batch size 0"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_truncation_or_bit_flips_are_rejected(small, state, data):
    blob = bytearray(state.to_bytes())
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for pos in data.draw(st.lists(st.integers(0, 8 * len(blob) - 1), min_size=1, max_size=8, unique=True)):
            blob[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(ValueError, match=DAMAGE):
        small.state_from_bytes(bytes(blob))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.integers(0, 64), junk=st.binary(min_size=0, max_size=256), keep_size=st.booleans())
def test_random_bytes_in_place_of_a_state_are_rejected(small, state, prefix, junk, keep_size):
    """A valid header followed by junk (of the right total size, or not), or junk alone, never loads."""
    blob = state.to_bytes()
    damaged = blob[:prefix] + junk
    if keep_size:
        damaged = (damaged + blob[len(damaged) :])[: len(blob)]
    if damaged == blob:
        return
    with pytest.raises(ValueError, match=DAMAGE):
        small.state_from_bytes(damaged)
