"""The event evaluation: its model figure is the model's likelihood by two other paths, its oracle
figure is the brute-force conditional likelihood, its fit sees the history only, and the CLI
dispatches event checkpoints and fills the card."""

import json

import numpy as np
import pytest
import torch
from scipy import integrate

from model import save_checkpoint
from model.data.events import EventBatch
from model.data.hawkes import HawkesParams
from model.evaluate import main
from model.evaluate_events import (
    DEFAULT_DATA,
    EVAL_SEED,
    acceptance,
    heldout_sequences,
    mle_scores,
    model_scores,
    oracle_scores,
    source_of,
)
from model.hawkes_mle import HawkesFit
from model.train import HELDOUT_SEED
from tests.model.conftest import small_cmhp

HISTORY, PREDICTED = 12, 6


@pytest.fixture(scope="module")
def batch() -> EventBatch:
    return heldout_sequences(source_of(DEFAULT_DATA), 3, HISTORY + PREDICTED, seed=5)


def test_heldout_sequences_have_the_requested_length_and_a_seed_of_their_own(batch):
    assert (batch.lengths == HISTORY + PREDICTED).all() and batch.params.mu.shape == (3, 3)
    again = heldout_sequences(source_of(DEFAULT_DATA), 3, HISTORY + PREDICTED, seed=5)
    assert torch.equal(again.times, batch.times) and torch.equal(again.params.alpha, batch.params.alpha)
    assert EVAL_SEED not in (HELDOUT_SEED, 1)  # model.train's held-out set and its stream (seed 0 + 1)
    prior = source_of(DEFAULT_DATA).prior
    assert batch.params.mu.min() >= prior.mu_range[0] and batch.params.beta.max() <= prior.beta_range[1]


def test_the_model_figure_is_the_one_pass_likelihood_and_the_event_by_event_stream(batch):
    net = small_cmhp(seed=3)
    scores = model_scores(net, batch, HISTORY, PREDICTED, batch_size=2)  # two sub-batches
    n = HISTORY + PREDICTED
    scored = torch.zeros(batch.batch_size, n, dtype=torch.bool)
    scored[:, HISTORY:] = True
    one_pass = EventBatch(batch.times[:, :n], batch.marks[:, :n], batch.lengths.clamp_max(n), scored=scored)
    with torch.no_grad():
        per_event, _ = net.event_log_likelihoods(one_pass)
    np.testing.assert_allclose(scores.log_lik, per_event[:, HISTORY:].double().numpy(), atol=2e-4)
    # Event by event from the empty state, one sequence at a time.
    for i in range(batch.batch_size):
        t, k = batch.sequence(i)
        state = net.empty_state(1)
        with torch.no_grad():
            for j in range(n):
                if j >= HISTORY:
                    forecast = net.next_event(state)
                    ll = net.log_prob_next(state, t[j : j + 1], k[j : j + 1])
                    assert float(ll) == pytest.approx(scores.log_lik[i, j - HISTORY], abs=1e-4)
                    assert float(t[j - 1] + forecast.mean) == pytest.approx(scores.time[i, j - HISTORY], rel=1e-5)
                    assert int(forecast.mark_probs.argmax()) == scores.mark[i, j - HISTORY]
                state = net.update(state, t[None, j : j + 1], k[None, j : j + 1])


def brute_force_conditional(params: HawkesParams, t: np.ndarray, k: np.ndarray, i: int) -> float:
    """log lambda_{k_i}(t_i) by the O(N) sum over all earlier events, minus the integral of the total
    intensity over (t_{i-1}, t_i] by quadrature."""
    mu, alpha, beta = params.mu[0].numpy(), params.alpha[0].numpy(), float(params.beta[0])

    def intensity(s: float) -> np.ndarray:
        past = t[:i][t[:i] < s]
        return mu + alpha[:, k[: len(past)]] @ (beta * np.exp(-beta * (s - past)))

    gap = integrate.quad(lambda s: intensity(s).sum(), t[i - 1] if i else 0.0, t[i], epsabs=1e-12)[0]
    return float(np.log(intensity(t[i])[k[i]]) - gap)


def test_the_oracle_figure_is_the_brute_force_conditional_likelihood(batch):
    scores = oracle_scores(batch, HISTORY, PREDICTED)
    for i in range(batch.batch_size):
        t, k = (x.numpy() for x in batch.sequence(i))
        expected = [brute_force_conditional(batch.params.sequence(i), t, k, j) for j in range(HISTORY, len(t))]
        np.testing.assert_allclose(scores.log_lik[i], expected, rtol=1e-7, atol=1e-7)


def test_the_fit_sees_only_the_history_and_is_scored_as_the_oracle(batch):
    """A fit that returns the true parameters gives the oracle's figures; it is handed the first h
    events and the window [0, t_h], nothing after."""
    seen = []

    def true_fit(times, marks, num_marks, end, restarts, seed):
        seen.append((times.copy(), marks.copy(), end))
        i = next(j for j in range(batch.batch_size) if np.array_equal(batch.sequence(j)[0][: len(times)], times))
        return HawkesFit(batch.params.sequence(i), 0.0, True)

    mle, converged = mle_scores(batch, HISTORY, PREDICTED, workers=1, fit_fn=true_fit)
    oracle = oracle_scores(batch, HISTORY, PREDICTED)
    for field in ("log_lik", "time", "mark"):
        np.testing.assert_array_equal(getattr(mle, field), getattr(oracle, field))
    assert converged == 1.0 and len(seen) == batch.batch_size
    for i, (times, marks, end) in enumerate(seen):
        t, k = batch.sequence(i)
        assert np.array_equal(times, t[:HISTORY].numpy()) and np.array_equal(marks, k[:HISTORY].numpy())
        assert end == float(t[HISTORY - 1])


def test_acceptance_compares_in_the_right_direction():
    def run(minus_mle: float, minus_oracle: float) -> dict:
        return {"model_minus_mle": {"ll": minus_mle}, "model_minus_oracle": {"ll": minus_oracle}}

    good = {"10": run(0.3, -0.5), "50": run(0.01, -0.2), "200": run(-0.1, -0.09)}
    assert all(acceptance(good).values()) and len(acceptance(good)) == 3
    bad = {"10": run(-0.01, -0.5), "50": run(0.2, -0.2), "200": run(0.0, -0.11)}
    assert acceptance(bad) == {"above_mle_at_10": False, "above_mle_at_50": True, "within_0.1_of_oracle_at_200": False}


def test_the_evaluate_cli_dispatches_an_event_checkpoint_and_fills_its_card(tmp_path):
    net = small_cmhp(seed=4)
    data = {**DEFAULT_DATA, "num_events": [10, 300], "mu_range": [0.2, 0.3]}  # a recorded training prior
    ckpt, card = tmp_path / "e.safetensors", tmp_path / "e.json"
    save_checkpoint(net, ckpt, info={"data": data})
    card.write_text(json.dumps({"fingerprint": "older weights", "events_ll": {"10": 0.0}}))
    args = ["--checkpoint", str(ckpt), "--history-sizes", "8,3", "--num-predicted", "4", "--num-sequences", "5"]
    args += ["--workers", "1", "--restarts", "1", "--card-json", str(card), "--out", str(tmp_path / "r.json")]
    result = main(args)
    assert set(result["history"]) == {"3", "8"} and result["data"] == data and result["seed"] == EVAL_SEED
    # The figures are those of the recorded prior's sequences, seed EVAL_SEED.
    batch = heldout_sequences(source_of(data), 5, 12, EVAL_SEED)
    assert batch.params.mu.min() >= 0.2 and batch.params.mu.max() <= 0.3
    expected = model_scores(net, batch, 8, 4).log_lik.mean(1)
    assert result["history"]["8"]["model"]["ll"] == pytest.approx(expected.mean(), abs=1e-9)
    assert result["history"]["8"]["model"]["se"] == pytest.approx(expected.std(ddof=1) / 5**0.5, abs=1e-9)
    written = json.loads(card.read_text())
    assert written["fingerprint"] == net.fingerprint and set(written["events_ll"]) == {"3", "8"}
    assert written["events_ll"]["8"] == round(result["history"]["8"]["model"]["ll"], 4)
    assert written["events_eval"]["num_sequences"] == 5
