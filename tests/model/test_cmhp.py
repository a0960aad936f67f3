"""The event model (CMHP): its state is exact in any order and at any absolute time, its one-pass
training likelihood is the streaming one, its forecasts are coherent densities, bad input is
refused, and it round-trips through a checkpoint."""

import math
import struct
import zlib

import pytest
import torch

from model import CMHP, CMHPConfig, CMHPState, load_checkpoint, save_checkpoint
from model.checkpoint import read_metadata
from model.data.events import EventBatch
from model.data.hawkes import HawkesPrior, HawkesSource, simulate_hawkes
from tests.model.conftest import SMALL_EVENTS, SMALL_SPECTRUM, small_cmhp

TOL = 1e-4


@pytest.fixture(scope="module", params=[SMALL_EVENTS, SMALL_SPECTRUM], ids=["cmab", "cmab+spectrum"])
def net(request: pytest.FixtureRequest) -> CMHP:
    return small_cmhp(cfg=request.param)


def hawkes_events(n: int = 60, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Times [batch, n] (float64) and marks [batch, n] of simulated Hawkes sequences."""
    g = torch.Generator().manual_seed(seed)
    params = HawkesPrior().sample(batch, g)
    b = simulate_hawkes(params, 100 * n / params.stationary_rate().sum(-1), n, g)  # stops at n events
    assert (b.lengths == n).all()
    return b.times, b.marks


def forecast(net: CMHP, state: CMHPState, now: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the model predicts at ``now`` [B]: quantiles, mean, marks, and log-densities."""
    with torch.no_grad():
        nxt = net.next_event(state, now, quantiles=(0.1, 0.5, 0.9))
        cand = now.unsqueeze(1) + torch.tensor([0.01, 0.3, 1.0, 4.0], dtype=torch.float64)
        marks = torch.tensor([0, 1, 2, 1]).expand(state.batch_size, -1)
        return {
            "quantiles": nxt.quantiles,
            "mean": nxt.mean,
            "mark_probs": nxt.mark_probs.double(),
            "log_prob": net.log_prob_next(state, cand, marks, now),
        }


def assert_same_forecasts(a: dict, b: dict, relative: bool = False) -> None:
    for key in a:
        scale = a[key].abs().clamp_min(1.0) if relative else 1.0
        err = ((a[key] - b[key]).abs() / scale).max().item()
        assert err <= TOL, f"{key}: |delta| {err:.2e}"


def reference(net: CMHP, t: torch.Tensor, k: torch.Tensor) -> tuple[CMHPState, dict]:
    state = net.condition(t, k)
    return state, forecast(net, state, t[:, -1] + 0.25)


# ---- exactness ---------------------------------------------------------------------------------
def test_event_by_event_gives_the_forecasts_of_all_at_once(net):
    t, k = hawkes_events()
    _, expected = reference(net, t, k)
    state = net.empty_state(2)
    for i in range(t.shape[1]):
        state = net.update(state, t[:, i : i + 1], k[:, i : i + 1])
    assert_same_forecasts(forecast(net, state, t[:, -1] + 0.25), expected)


def test_random_chunks_give_the_forecasts_of_all_at_once(net):
    t, k = hawkes_events(seed=1)
    _, expected = reference(net, t, k)
    g = torch.Generator().manual_seed(2)
    state, i = net.empty_state(2), 0
    while i < t.shape[1]:
        step = int(torch.randint(1, 12, (), generator=g))
        state = net.update(state, t[:, i : i + step], k[:, i : i + step])
        i += step
    assert_same_forecasts(forecast(net, state, t[:, -1] + 0.25), expected)


def test_shuffled_order_gives_the_forecasts_of_all_at_once(net):
    """The history is a set: late events (before the latest one) fold in exactly."""
    t, k = hawkes_events(seed=3)
    _, expected = reference(net, t, k)
    order = torch.randperm(t.shape[1], generator=torch.Generator().manual_seed(4))
    state = net.empty_state(2)
    for i in order.tolist():
        state = net.update(state, t[:, i : i + 1], k[:, i : i + 1])
    assert_same_forecasts(forecast(net, state, t[:, -1] + 0.25), expected)
    # Shuffled chunks, each sorted within itself.
    state = net.empty_state(2)
    for chunk in order.split(7):
        idx = chunk.sort().values
        state = net.update(state, t[:, idx], k[:, idx])
    assert_same_forecasts(forecast(net, state, t[:, -1] + 0.25), expected)


def test_merging_the_states_of_a_random_partition_gives_the_forecasts_of_all_at_once(net):
    t, k = hawkes_events(seed=5)
    _, expected = reference(net, t, k)
    g = torch.Generator().manual_seed(6)
    part = torch.randint(0, 4, (t.shape[1],), generator=g)
    states = [net.empty_state(2)]  # the empty state is the identity of merge
    for p in range(4):
        idx = (part == p).nonzero().squeeze(-1)
        if len(idx):
            states.append(net.condition(t[:, idx], k[:, idx]))
    merged = states[0]
    for j in torch.randperm(len(states) - 1, generator=g).tolist():
        merged = net.merge(states[j + 1], merged)
    assert torch.equal(merged.num_events, torch.full((2,), t.shape[1]))
    assert_same_forecasts(forecast(net, merged, t[:, -1] + 0.25), expected)


def test_events_a_million_time_units_later_give_the_same_forecasts(net):
    t, k = hawkes_events(seed=7)
    _, expected = reference(net, t, k)
    shifted = t + 1e6
    state = net.empty_state(2)
    for i in range(0, t.shape[1], 5):
        state = net.update(state, shifted[:, i : i + 5], k[:, i : i + 5])
    assert state.acc.log_norm.dtype == torch.float32
    assert_same_forecasts(forecast(net, state, shifted[:, -1] + 0.25), expected, relative=True)


def test_a_long_quiet_gap_keeps_the_state_finite(net):
    t = torch.tensor([[0.0, 0.5, 1.0, 1e7, 1e7 + 0.5]], dtype=torch.float64)
    k = torch.tensor([[0, 1, 2, 0, 1]])
    state = net.condition(t, k)
    assert torch.isfinite(state.acc.log_norm).all() and torch.isfinite(state.acc.value_sum).all()
    assert state.spectrum is None or torch.isfinite(state.spectrum).all()
    # Events 10^7 units ago have decayed out at every rate: the forecast is that of the recent two.
    recent = net.condition(t[:, 3:] - 1e7, k[:, 3:])
    min_rate = net.rates().min().item()
    if min_rate * 1e7 > 200:
        assert_same_forecasts(forecast(net, state, t[:, -1] + 0.1), forecast(net, recent, t[:, -1] - 1e7 + 0.1))


def test_the_state_size_does_not_grow_with_the_history(net):
    sizes = {len(net.condition(*hawkes_events(n, batch=1)).to_bytes()) for n in (1, 20, 80)}
    assert len(sizes) == 1


# ---- the training pass ---------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_the_one_pass_likelihood_scores_each_event_against_the_state_before_it(net, chunk_size):
    batch = HawkesSource(num_events=(15, 30)).sample_batch(3, torch.Generator().manual_seed(8))
    assert len(set(batch.lengths.tolist())) > 1  # padding is exercised
    with torch.no_grad():
        per_event, survival = net.event_log_likelihoods(batch, chunk_size)
        for i in range(3):
            t, k = batch.sequence(i)
            state = net.empty_state(1)
            for j in range(len(t)):
                now = 0.0 if j == 0 else None  # the first event waits from the window's start
                lp = net.log_prob_next(state, t[j : j + 1], k[j : j + 1], now)
                assert abs(lp.item() - per_event[i, j].item()) < TOL
                state = net.update(state, t[j : j + 1].view(1, 1), k[j : j + 1].view(1, 1))
            # The quiet end, log P(no event in (t_n, end]): conditioning on it moves any later
            # event's log-density by exactly minus that.
            end, later, mark = float(batch.end[i]), torch.tensor([float(batch.end[i]) + 1.0]), torch.tensor([0])
            quiet = net.log_prob_next(state, later, mark) - net.log_prob_next(state, later, mark, now=end)
            assert abs(quiet.item() - survival[i].item()) < TOL
            full = per_event[i, : len(t)].sum() + survival[i]
            ll = net.log_likelihood(batch, chunk_size)[i] * len(t)
            assert abs(full.item() - ll.item()) < 1e-3
    assert (per_event[~batch.mask] == 0).all()


def test_a_scored_subset_reads_the_same_densities_and_weights_them_to_the_full_loss(net):
    """Training scores a random subset of events per sequence (``EventBatch.scored``): each read
    density is the full pass's, and averaged over many subsets the loss is the full loss."""
    batch = HawkesSource(num_events=(20, 40)).sample_batch(3, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        full, survival = net.event_log_likelihoods(batch)
        sub = batch.with_scored(5, g)
        assert (sub.scored.sum(1) == torch.clamp(batch.lengths, max=5)).all() and not sub.scored[~batch.mask].any()
        part, part_survival = net.event_log_likelihoods(sub)
        assert torch.allclose(part[sub.scored], full[sub.scored], atol=TOL)
        assert (part[~sub.scored] == 0).all() and torch.allclose(part_survival, survival, atol=TOL)
        losses = torch.stack([net.loss(batch.with_scored(5, g)) for _ in range(400)])
        # The unbiased estimate's mean, within 4 standard errors of the full loss.
        assert abs(losses.mean() - net.loss(batch)) < 4 * losses.std() / 20


def test_the_survival_term_is_the_probability_of_a_quiet_window_end(net):
    t, k = hawkes_events(n=10, batch=1, seed=9)
    batch = EventBatch(t, k, torch.tensor([10]), end=t[:, -1] + 2.0)
    with torch.no_grad():
        _, survival = net.event_log_likelihoods(batch)
        state = net.condition(t, k)
        # log P(no event in (t_n, t_n + 2]) = log(1 - CDF(2)); the CDF from the density, numerically.
        grid = t[:, -1:] + torch.logspace(-8, math.log10(2.0), 20001, dtype=torch.float64).unsqueeze(0)
        density = sum(
            net.log_prob_next(state, grid, torch.full_like(grid, m, dtype=torch.long)).exp() for m in range(3)
        )
        cdf = torch.trapezoid(density, grid - t[:, -1:])
    assert survival.item() == pytest.approx(math.log(1 - cdf.item()), abs=1e-3)


def test_a_few_adam_steps_lower_the_loss():
    """A smoke test of the training interface: the loss falls on a fixed batch, gradients reach the decay rates."""
    net = small_cmhp(seed=1).train()
    batch = HawkesSource(num_events=(20, 40)).sample_batch(6, torch.Generator().manual_seed(10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = net.loss(batch, chunk_size=16)
        opt.zero_grad()
        loss.backward()
        assert net.log_rate.grad is not None and net.log_rate.grad.abs().sum() > 0
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


# ---- forecasts ---------------------------------------------------------------------------------
def test_forecasts_after_a_quiet_time_are_coherent_densities(net):
    """Conditioned on no event until ``now``: the density over (now, inf) and marks integrates to 1,
    its quantiles are where the integral reaches each level, and its mean is the integral of s f(s)."""
    t, k = hawkes_events(n=20, batch=1, seed=11)
    state = net.condition(t, k)
    now = t[:, -1] + 0.7
    with torch.no_grad():
        nxt = net.next_event(state, now, quantiles=(0.25, 0.5, 0.75))
        s = torch.logspace(-9, 4, 60001, dtype=torch.float64).unsqueeze(0)
        density = sum(
            net.log_prob_next(state, now + s, torch.full_like(s, m, dtype=torch.long), now).exp() for m in range(3)
        )
    cdf = torch.cumulative_trapezoid(density, s)
    assert cdf[0, -1].item() == pytest.approx(1.0, abs=2e-3)
    for q, wait in zip((0.25, 0.5, 0.75), nxt.quantiles[0].tolist(), strict=True):
        i = int(torch.searchsorted(s[0, 1:], torch.tensor(wait, dtype=torch.float64)))
        assert cdf[0, i].item() == pytest.approx(q, abs=2e-3)
    mean = torch.trapezoid(density * s, s).item()
    assert nxt.mean.item() == pytest.approx(mean, rel=1e-2)
    assert nxt.mark_probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_an_empty_history_forecasts_the_prior_from_now(net):
    empty = net.empty_state(1)
    a = net.next_event(empty, 0.0)
    b = net.next_event(empty, 123.0)
    assert torch.allclose(a.quantiles, b.quantiles) and torch.equal(b.now, torch.tensor([123.0], dtype=torch.float64))


def test_samples_are_seeded_sorted_inside_the_horizon_and_leave_the_state_alone(net):
    t, k = hawkes_events(n=20, batch=2, seed=12)
    state = net.condition(t, k)
    blob = state.to_bytes()
    now = t[:, -1] + 0.1
    a = net.sample(state, horizon=3.0, num_samples=5, now=now, generator=torch.Generator().manual_seed(0))
    b = net.sample(state, horizon=3.0, num_samples=5, now=now, generator=torch.Generator().manual_seed(0))
    assert state.to_bytes() == blob
    assert torch.equal(a.counts, b.counts) and torch.equal(a.marks, b.marks)
    assert torch.equal(a.times.nan_to_num(-1), b.times.nan_to_num(-1))
    assert a.times.shape[:2] == (2, 5) and a.counts.shape == (2, 5)
    for i in range(2):
        for j in range(5):
            n = int(a.counts[i, j])
            ts = a.times[i, j, :n]
            assert (ts > now[i]).all() and (ts <= now[i] + 3.0).all() and (ts.diff() >= 0).all()
            assert ((a.marks[i, j, :n] >= 0) & (a.marks[i, j, :n] < 3)).all() and (a.marks[i, j, n:] == -1).all()


def test_the_first_sampled_wait_follows_the_forecast(net):
    t, k = hawkes_events(n=20, batch=1, seed=13)
    state = net.condition(t, k)
    now = t[:, -1] + 0.2
    median = net.next_event(state, now, quantiles=(0.5,)).quantiles[0, 0].item()
    draws = net.sample(
        state, horizon=1e4, num_samples=400, now=now, generator=torch.Generator().manual_seed(1), max_events=1
    )
    first = draws.times[0, :, 0] - now
    below = (first <= median).double().mean().item()
    assert abs(below - 0.5) < 0.1  # binomial sd 0.025


def test_the_waiting_time_cdf_integrates_the_density_and_hits_the_quantiles(net):
    t, k = hawkes_events(n=20, batch=2, seed=14)
    state = net.condition(t, k)
    now = t[:, -1] + torch.tensor([0.0, 0.6], dtype=torch.float64)
    s = torch.logspace(-9, 4, 60001, dtype=torch.float64).expand(2, -1)
    with torch.no_grad():
        density = sum(
            net.log_prob_next(state, now.unsqueeze(1) + s, torch.full_like(s, m, dtype=torch.long), now).exp()
            for m in range(3)
        )
        checked = torch.tensor([100, 30000, 50000])
        cdf = net.waiting_time_cdf(state, now.unsqueeze(1) + s[:, checked], now)
        nxt = net.next_event(state, now, quantiles=(0.1, 0.5, 0.9))
        at_quantiles = net.waiting_time_cdf(state, now.unsqueeze(1) + nxt.quantiles, now)
        at_now = net.waiting_time_cdf(state, now, now)
    integral = torch.cumulative_trapezoid(density, s)[:, checked - 1]
    torch.testing.assert_close(cdf, integral, rtol=0, atol=2e-3)
    torch.testing.assert_close(
        at_quantiles, torch.tensor([[0.1, 0.5, 0.9]] * 2, dtype=torch.float64), rtol=0, atol=1e-6
    )
    assert at_now.abs().max().item() < 1e-9
    with pytest.raises(ValueError, match="before now"):
        net.waiting_time_cdf(state, now - 0.1, now)


def test_a_batch_of_concatenated_states_forecasts_as_each_state_alone(net):
    t, k = hawkes_events(n=10, batch=2, seed=15)
    a, b = net.condition(t[:1], k[:1]), net.condition(t[1:, :4], k[1:, :4])
    both = CMHPState.concat([a, b])
    assert CMHPState.concat([a]) is a and both.batch_size == 2
    alone = [forecast(net, s, s.last_time + 0.3) for s in (a, b)]
    assert_same_forecasts(
        forecast(net, both, both.last_time + 0.3), {key: torch.cat([f[key] for f in alone]) for key in alone[0]}
    )


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("t", "k", "match"),
    [
        ([[1.0, 0.5]], [[0, 1]], "sorted"),
        ([[0.5, math.nan]], [[0, 1]], "NaN or Inf"),
        ([[0.5, math.inf]], [[0, 1]], "NaN or Inf"),
        ([[0.5, 1.0]], [[0, 3]], "unknown mark 3"),
        ([[0.5, 1.0]], [[-1, 0]], "unknown mark -1"),
        ([[0.5, 1.0]], [[0.5, 1.0]], "integer marks"),
        ([0.5, 1.0], [0, 1], r"shape \[batch, events\]"),
        ([[0.5, 1.0]], [[0]], "shape"),
        (torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.long), "no events"),
    ],
)
def test_bad_events_are_refused(net, t, k, match):
    with pytest.raises(ValueError, match=match):
        net.update(net.empty_state(1), t, k)
    with pytest.raises(ValueError, match=match):
        net.condition(t, k)


def test_a_query_before_the_last_event_is_refused(net):
    state = net.condition(torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="before the last event at 2.0"):
        net.next_event(state, 1.5)
    with pytest.raises(ValueError, match="before the last event"):
        net.log_prob_next(state, torch.tensor([3.0]), torch.tensor([0]), now=1.0)
    with pytest.raises(ValueError, match="before now"):
        net.log_prob_next(state, torch.tensor([2.5]), torch.tensor([0]), now=2.7)
    with pytest.raises(ValueError, match="before the last event"):
        net.sample(state, horizon=1.0, now=0.0)


def test_bad_queries_and_states_are_refused(net):
    state = net.condition(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="quantiles"):
        net.next_event(state, quantiles=(0.5, 1.0))
    with pytest.raises(ValueError, match="unknown mark"):
        net.log_prob_next(state, torch.tensor([2.0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="now must be a number"):
        net.next_event(state, torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="horizon"):
        net.sample(state, horizon=0.0)
    with pytest.raises(ValueError, match="must be a CMHPState"):
        net.next_event(state.acc)
    with pytest.raises(ValueError, match="built by model"):
        small_cmhp(seed=5).next_event(state)
    with pytest.raises(ValueError, match="batch size"):
        net.update(state, torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.long))


def test_a_bad_training_batch_is_refused(net):
    unsorted = EventBatch.from_sequences([(torch.tensor([1.0, 0.5]), torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match="sorted"):
        net.loss(unsorted)
    early_end = EventBatch.from_sequences([(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))], end=[0.8])
    with pytest.raises(ValueError, match="end is before its last event"):
        net.loss(early_end)


# ---- identity and persistence ---------------------------------------------------------------------
def test_a_checkpoint_round_trips(net, tmp_path):
    path = tmp_path / "cmhp.safetensors"
    fingerprint = save_checkpoint(net, path, info={"step": 0})
    assert read_metadata(path)["architecture"] == "cmhp"
    loaded = load_checkpoint(path)
    assert isinstance(loaded, CMHP) and loaded.cfg == net.cfg and loaded.fingerprint == fingerprint
    t, k = hawkes_events(n=15, batch=2, seed=14)
    a, b = net.condition(t, k), loaded.condition(t, k)
    assert a.to_bytes() == b.to_bytes()
    assert_same_forecasts(forecast(net, a, t[:, -1] + 0.5), forecast(loaded, b, t[:, -1] + 0.5))


def test_a_state_blob_round_trips_and_corruption_is_refused(net):
    t, k = hawkes_events(n=15, batch=2, seed=15)
    state = net.condition(t, k)
    blob = state.to_bytes()
    back = net.state_from_bytes(blob)
    assert torch.equal(back.last_time, state.last_time) and back.to_bytes() == blob
    assert_same_forecasts(forecast(net, back, t[:, -1] + 0.5), forecast(net, state, t[:, -1] + 0.5))
    empty = net.state_from_bytes(net.empty_state(1).to_bytes())
    assert empty.last_time.item() == -math.inf
    corrupted = bytearray(blob)
    corrupted[20] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        net.state_from_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match="bad magic"):
        net.state_from_bytes(b"X" * len(blob))
    with pytest.raises(ValueError, match="belongs to model"):
        small_cmhp(seed=6, cfg=net.cfg).state_from_bytes(blob)


def test_a_state_without_a_spectrum_keeps_the_format_older_builds_read(net):
    blob = net.condition(*hawkes_events(n=10, batch=1, seed=16)).to_bytes()
    (fmt,) = struct.unpack_from("<H", blob, 8)
    assert fmt == (1 if net.spectrum is None else 2)


def test_spectral_sums_that_do_not_fit_the_model_are_refused():
    net = small_cmhp(cfg=SMALL_SPECTRUM)
    t, k = hawkes_events(n=10, batch=1, seed=17)
    state = net.condition(t, k)
    with pytest.raises(ValueError, match="spectral sums of shape None"):
        net.next_event(CMHPState(state.acc, state.last_time))
    with pytest.raises(ValueError, match="spectral sums of shape"):
        net.update(CMHPState(state.acc, state.last_time, state.spectrum[..., :-1]), t[:, :1], k[:, :1])

    def tampered(blob: bytes, offset: int, value: float) -> bytes:
        body = bytearray(blob[:-4])
        struct.pack_into("<f", body, offset, value)
        return bytes(body) + struct.pack("<I", zlib.crc32(body))

    blob = state.to_bytes()
    diagonal = 8 + 2 + 4 + 4 + 8 + 4 * 2 * net.spectrum.width  # header, width, last_time, Re S, Im S
    with pytest.raises(ValueError, match="negative"):
        net.state_from_bytes(tampered(blob, diagonal, -1.0))
    empty = net.empty_state(1).to_bytes()
    with pytest.raises(ValueError, match="without events"):
        net.state_from_bytes(tampered(empty, diagonal, 1.0))
    with pytest.raises(ValueError, match="spectral sums per stream"):  # read before the model's fingerprint
        small_cmhp(cfg=SMALL_EVENTS).state_from_bytes(blob)


def test_spectrum_options_without_a_spectrum_are_refused():
    with pytest.raises(ValueError, match="spectrum_per_band"):
        CMHPConfig(spectrum_per_band=4)
    assert (
        "spectrum_bands" not in CMHPConfig().to_dict() and CMHPConfig(spectrum_bands=2).to_dict()["spectrum_bands"] == 2
    )
