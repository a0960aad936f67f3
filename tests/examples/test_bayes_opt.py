"""Thompson sampling with the joint model's sample paths, judged over many seeded runs.

One seeded run of ten steps cannot tell an unlucky draw from an over-confident covariance, so this
runs ``examples/bayes_opt.py``'s search loop in-process (the model called directly, no HTTP) on
``SEEDS`` seeds, once with joint sample paths and once with independent draws from the per-point
marginals (the example's fallback), from the same random start per seed.

The bound: after ``STEPS`` Thompson steps, the joint paths' median simple regret is at most the
marginal draws'. Why it is not flaky: every draw comes from a fixed seed, on one torch thread, so a
given model gives the same 2 x 32 regrets on every run; the comparison is over 32 paired runs, not
one, so it changes only when the model's paths change. Measured with the shipped joint model (a
rank-4 modulated kernel bank): median regret 0.004 joint, 0.027 marginal (the best grid point is
0.004, its neighbour 0.027; the joint runs reach the best point in 17 of 32 seeds, the marginal ones
in 12, and 5 joint runs stay in the local minimum); with the previous head (a shared-amplitude
bank) both medians were 0.027, so the bound held with equality. It catches joint paths that explore
worse than independent noise, and no more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.neural_process import NeuralProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
from bayes_opt import F_MIN, X_HIGH, X_LOW, Y_TRANSFORM, forrester, thompson_search  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "cmanp-and-gp-rbf.safetensors"
SEEDS = 32
INITIAL, STEPS = 3, 7
GRID = np.linspace(X_LOW, X_HIGH, 101)  # the example's --quick grid


class InProcessSource:
    """The example's session, in-process: x mapped onto the model's range as ``x_transform`` bounds
    map it, y by the example's ``y_transform``; each evaluation folded into the state with ``update``."""

    def __init__(self, net: NeuralProcess, joint: bool, seed: int) -> None:
        self.net, self.joint = net, joint
        self.low, self.high = net.cfg.x_range
        self.grid = self._x(GRID).view(1, -1, 1)
        self.state = net.empty_state(1)
        self.generator = torch.Generator().manual_seed(seed)

    def _x(self, x: np.ndarray | float) -> torch.Tensor:
        unit = (np.asarray(x, dtype=np.float64) - X_LOW) / (X_HIGH - X_LOW)
        return torch.tensor(self.low + unit * (self.high - self.low), dtype=torch.float32)

    def observe(self, x: float, y: float) -> None:
        y_model = (y - Y_TRANSFORM["shift"]) / Y_TRANSFORM["scale"]
        self.state = self.net.update(self.state, self._x(x).view(1, 1, 1), torch.tensor([[[y_model]]]))

    def path(self) -> np.ndarray:
        if self.joint:
            return self.net.sample(self.state, self.grid, 1, generator=self.generator)[0, 0, :, 0].numpy()
        mean, var = self.net.predict(self.state, self.grid)
        noise = torch.randn(mean.shape, generator=self.generator)
        return (mean + var.sqrt() * noise)[0, :, 0].numpy()


def simple_regret(net: NeuralProcess, joint: bool, seed: int) -> float:
    source = InProcessSource(net, joint, seed)
    ys = [y for _, y in thompson_search(source, forrester, GRID, INITIAL, STEPS, np.random.default_rng(seed))]
    return min(ys) - F_MIN


@pytest.fixture(scope="module")
def regrets() -> dict[str, np.ndarray]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = load_checkpoint(CHECKPOINT).eval()
        with torch.inference_mode():
            return {
                kind: np.array([simple_regret(net, kind == "joint", seed) for seed in range(SEEDS)])
                for kind in ("joint", "marginal")
            }
    finally:
        torch.set_num_threads(threads)


def test_joint_thompson_sampling_is_at_least_as_good_as_independent_marginal_draws(regrets) -> None:
    joint, marginal = np.median(regrets["joint"]), np.median(regrets["marginal"])
    assert joint <= marginal, f"median simple regret after {STEPS} steps: joint {joint:.4f} > marginal {marginal:.4f}"


def test_the_search_finds_the_global_minimum_basin_in_most_runs(regrets) -> None:
    # Forrester's local minimum (x = 0.14, f = -0.99) has regret 5.0; the global basin is below 1.
    found = np.mean(regrets["joint"] < 1.0)
    assert found >= 0.75, f"only {found:.0%} of {SEEDS} joint runs reached the global basin: {regrets['joint']}"
