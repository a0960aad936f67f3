"""The state of ``model/state.py``: its algebra and its binary format.

* Merging two summaries equals attention over the union of their points, computed directly in
  float64; the empty summary is the identity; the one-point merge equals the general one.
* ``tile`` and ``concat`` make batches of independent copies; a state's size does not grow with N.
* The blob has the layout the module documents, round-trips exactly, and every kind of damage
  (truncation, bit flips, foreign model, impossible values) is refused with a clear message.
"""

import math
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.state import CMANPState, add_point, merge_accumulators
from tests.model.conftest import random_points, small_model


def summary(scores: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log normaliser, normalised value sum) of points with scores [n] and values [n, Dh], in float64."""
    top = scores.max()
    w = np.exp(scores - top)
    return top + np.log(w.sum()), (w[:, None] * values).sum(0) / w.sum()


def test_merged_summaries_equal_attention_over_the_union():
    rng = np.random.default_rng(0)
    scores, values = rng.normal(0, 4, 30), rng.normal(0, 1, (30, 5))
    a, b = summary(scores[:12], values[:12]), summary(scores[12:], values[12:])
    c, o = merge_accumulators(*(torch.tensor(t) for t in (a[0], a[1], b[0], b[1])))
    want_c, want_o = summary(scores, values)
    np.testing.assert_allclose(c.numpy(), want_c, rtol=1e-12)
    np.testing.assert_allclose(o.numpy(), want_o, rtol=1e-10, atol=1e-12)


def test_the_empty_summary_is_the_identity_and_two_empties_stay_empty():
    c, o = torch.tensor([1.5, -math.inf]), torch.tensor([[0.3, -2.0], [0.0, 0.0]])
    empty_c, empty_o = torch.full((2,), -math.inf), torch.zeros(2, 2)
    got_c, got_o = merge_accumulators(c, o, empty_c, empty_o)
    assert torch.equal(got_c, c) and torch.equal(got_o, o)  # no NaN where both sides are empty


@pytest.mark.parametrize("empty", [False, True])
def test_add_point_equals_general_merge(empty):
    """The one-point merge gives what the general merge gives for a one-point summary (c = s,
    o = v), on a non-empty and on an empty (-inf, 0) side."""
    g = torch.Generator().manual_seed(13)
    c = torch.randn(2, 3, 4, 5, generator=g) * 5
    o = torch.randn(2, 3, 4, 5, 6, generator=g)
    if empty:
        c, o = torch.full_like(c, -torch.inf), torch.zeros_like(o)
    s = torch.randn(2, 3, 4, 5, generator=g) * 5
    v = torch.randn(2, 3, 4, 1, 6, generator=g)
    got_c, got_o = add_point(c, o, s, v)
    want_c, want_o = merge_accumulators(c, o, s, v.expand_as(o))
    torch.testing.assert_close(got_c, want_c)
    torch.testing.assert_close(got_o, want_o, rtol=1e-5, atol=1e-6)


def test_tile_makes_copy_major_independent_copies(state):
    tiled = state.tile(3)
    assert tiled.batch_size == 6 and tiled.version == state.version
    for copy in range(3):
        assert torch.equal(tiled.log_norm[2 * copy : 2 * copy + 2], state.log_norm)
        assert torch.equal(tiled.num_points[2 * copy : 2 * copy + 2], state.num_points)
    tiled.value_sum.zero_()
    assert state.value_sum.abs().sum() > 0  # the original is untouched


def test_concat_batches_sessions_in_order_and_refuses_other_models(small, state):
    x, y = random_points(5, small.cfg, seed=3)
    with torch.no_grad():
        other = small.condition(x, y)
    both = CMANPState.concat([state, other])
    assert both.batch_size == 3 and both.num_points.tolist() == [20, 20, 5]
    assert torch.equal(both.value_sum[2:], other.value_sum)
    foreign = small_model(seed=1).empty_state(1)
    with pytest.raises(ValueError, match="different models"):
        CMANPState.concat([state, foreign])
    with pytest.raises(ValueError, match="different models"):
        state.merge(foreign)


def test_concat_keeps_latents_the_states_model_derived_and_they_match_a_fresh_derivation(small):
    (xa, ya), (xb, yb) = random_points(7, small.cfg, seed=4), random_points(3, small.cfg, seed=5)
    xq = torch.linspace(-2, 2, 9).view(1, -1, 1).expand(2, -1, -1)
    with torch.no_grad():
        a, b = small.condition(xa, ya), small.condition(xb, yb)
        fresh = small.predict(CMANPState.concat([a, b]), xq)  # nothing cached yet: derived in the batch
        small.predict(a, xq[:1]), small.predict(b, xq[:1])  # each caches its own latents
        both = CMANPState.concat([a, b])
        assert both.derived(small.fingerprint) is not None
        reused = small.predict(both, xq)
        half = CMANPState.concat([a, small.condition(xb, yb)])  # one state without latents: none kept
        assert half.derived(small.fingerprint) is None
    for got, want in zip(reused, fresh, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_the_empty_state_predicts_the_prior_and_round_trips(small):
    empty = small.empty_state(3)
    with torch.no_grad():
        mean, var = small.predict(empty, torch.linspace(-2, 2, 7).view(1, 7, 1).expand(3, 7, 1))
    assert torch.isfinite(mean).all() and (var > 0).all() and torch.isfinite(var).all()
    assert torch.allclose(mean[0], mean[1])  # no data: the same prior for every session
    again = small.state_from_bytes(empty.to_bytes())
    assert again.num_points.tolist() == [0, 0, 0] and torch.isneginf(again.log_norm).all()


# The layout documented in model/state.py, written out here independently.
HEADER = struct.Struct("<8sHBB16sIHHIIQ")


def test_the_blob_has_the_documented_layout(small, state):
    blob = state.to_bytes()
    magic, fmt, dtype, _, fingerprint, B, K, H, L, Dh, version = HEADER.unpack_from(blob)
    assert (magic, fmt, dtype, fingerprint.hex()) == (b"CMANPST\0", 1, 1, small.fingerprint)
    assert (B, K, H, L, Dh, version) == (2, *state.dims, state.version)
    body = np.frombuffer(blob[HEADER.size : -4], dtype="<u1")
    assert len(body) == 8 * B + 4 * B * K * H * L * (1 + Dh)
    counts = np.frombuffer(blob, dtype="<i8", count=B, offset=HEADER.size)
    log_norm = np.frombuffer(blob, dtype="<f4", count=B * K * H * L, offset=HEADER.size + 8 * B)
    assert counts.tolist() == [20, 20] and np.array_equal(log_norm, state.log_norm.numpy().ravel())
    assert struct.unpack("<I", blob[-4:])[0] == zlib.crc32(blob[:-4])


@torch.no_grad()
def test_state_bytes_do_not_grow_with_points(net):
    x, y = random_points(100_000, net.cfg, seed=7)
    one = net.condition(x[:, :1], y[:, :1])
    many = net.condition(x, y, chunk_size=4096)
    assert many.num_points.item() == 100_000
    assert len(one.to_bytes()) == len(many.to_bytes())
    # And the size is what the format says: header + count + K*H*L*(Dh+1) float32 + crc.
    K, H, L, Dh = net.cfg.n_blocks, net.cfg.n_heads, net.cfg.n_latents, net.cfg.head_dim
    assert len(many.to_bytes()) == HEADER.size + 8 + 4 * K * H * L * (Dh + 1) + 4
    mean, var = net.predict(many, torch.zeros(1, 3, net.cfg.dim_x))
    assert torch.isfinite(mean).all() and (var > 0).all()


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
