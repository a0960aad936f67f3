"""Thompson-sampling Bayesian optimisation of a 1-D function with one CMANP session.

Start the service (`make run`), then:

    python examples/bayes_opt.py [--url http://127.0.0.1:8000] [--model NAME] [--out PNG] [--quick]

Without --model it uses a served model with a joint head, if there is one (else the service's
default model). The PNG goes to examples/out/bayes_opt.png (git-ignored) unless --out says otherwise.

The target is the Forrester et al. (2008) function f(x) = (6x - 2)^2 sin(12x - 4) on [0, 1], to be
minimised (global minimum -6.0207 at x = 0.7572). After a few random evaluations, each step draws
one joint sample path of f from the session on a grid, evaluates f where that path is lowest, and
posts the result to the same session: the state stays one fixed size however many steps run.

Thompson sampling needs joint samples (``num_samples`` on the predict endpoint, from a model with
a joint head). When the served model has none, the script warns and falls back to independent
draws from the per-point marginals on the grid: an approximation that ignores the correlations
between grid points (it behaves like an optimistic upper-confidence rule), not Thompson sampling.

It prints every evaluation and the regret (best value so far minus the global minimum), and writes
a PNG of the final predictive state and the regret curve. --quick runs fewer steps on a coarser grid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")  # writes a file; no display needed
import matplotlib.pyplot as plt
import numpy as np
from example_options import prepared, service_parser

from service.client import CMANPClient, CMANPError

X_LOW, X_HIGH = 0.0, 1.0
F_MIN, X_MIN = -6.020740, 0.757249  # Forrester's global minimum
# f spans about [-6, 16]: this puts its values near the unit scale the model was trained on.
Y_TRANSFORM = {"shift": 2.0, "scale": 5.0}
MODEL_HELP = "default: the first served model with a joint head (joint samples), else the service's default model"


def forrester(x: np.ndarray) -> np.ndarray:
    return (6 * x - 2) ** 2 * np.sin(12 * x - 4)


def parse_args() -> argparse.Namespace:
    parser = service_parser(__doc__, "bayes_opt.png", model_help=MODEL_HELP)
    parser.add_argument("--quick", action="store_true", help="10 steps on a 101-point grid instead of 25 on 401")
    parser.add_argument("--initial", type=int, default=3, help="random evaluations before the first sample")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


class PathSource(Protocol):
    """What the search needs from a model: take in one evaluation, and draw one sample path of f on the grid."""

    def observe(self, x: float, y: float) -> None: ...

    def path(self) -> np.ndarray: ...


def thompson_search(
    source: PathSource,
    f: Callable[[np.ndarray], np.ndarray],
    grid: np.ndarray,
    initial: int,
    steps: int,
    rng: np.random.Generator,
) -> Iterator[tuple[float, float]]:
    """Yields each evaluation (x, f(x)): ``initial`` uniform draws on the grid's span, then ``steps``
    evaluations where one sample path from ``source`` is lowest. Each is observed before the next path."""
    for i in range(initial + steps):
        x = float(rng.uniform(grid[0], grid[-1]) if i < initial else grid[np.argmin(source.path())])
        y = float(f(np.array(x)))
        source.observe(x, y)
        yield x, y


class Sampler:
    """One session as a PathSource: a joint sample from the model, or the labelled marginal fallback."""

    def __init__(self, client: CMANPClient, session_id: str, grid: np.ndarray, seed: int) -> None:
        self.client, self.session_id, self.grid = client, session_id, grid
        self.rng = np.random.default_rng(seed)
        self.joint = self._model_samples()

    def _model_samples(self) -> bool:
        """Whether the model serves joint samples: a model without a joint head refuses them with a 4xx."""
        try:
            self.client.predict(self.session_id, self.grid[:1], num_samples=1, seed=0)
        except CMANPError as error:
            if error.status >= 500 or error.status in (401, 403, 404):
                raise
            print(
                f"WARNING: the model serves no joint samples ({error.status}: {error.detail}).\n"
                "WARNING: falling back to independent draws from the per-point marginals on the grid: an\n"
                "WARNING: approximation that ignores correlations between grid points, NOT Thompson sampling.",
                file=sys.stderr,
            )
            return False
        return True

    def observe(self, x: float, y: float) -> None:
        self.client.add_context(self.session_id, [x], [y])

    def path(self) -> np.ndarray:
        if self.joint:
            seed = int(self.rng.integers(2**31))
            return self.client.predict(self.session_id, self.grid, num_samples=1, seed=seed).samples[0, :, 0]
        p = self.client.predict(self.session_id, self.grid)
        return p.mean[:, 0] + np.sqrt(p.variance[:, 0]) * self.rng.standard_normal(len(self.grid))


def plot(
    client: CMANPClient, session_id: str, grid: np.ndarray, xs: list[float], ys: list[float], initial: int, out: Path
) -> None:
    p = client.predict(session_id, grid)
    mean, sd = p.mean[:, 0], np.sqrt(p.variance[:, 0])
    regret = np.minimum.accumulate(ys) - F_MIN
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.fill_between(grid, mean - 2 * sd, mean + 2 * sd, color="tab:blue", alpha=0.2, label="mean ± 2σ")
    left.plot(grid, mean, color="tab:blue", label="mean")
    left.plot(grid, forrester(grid), "k--", lw=1, label="f (Forrester)")
    left.scatter(xs[:initial], ys[:initial], c="grey", zorder=3, label="random start")
    steps = left.scatter(xs[initial:], ys[initial:], c=np.arange(len(xs) - initial), cmap="viridis", zorder=3)
    fig.colorbar(steps, ax=left, label="step after the random start")
    best = int(np.argmin(ys))
    left.scatter([xs[best]], [ys[best]], marker="*", s=250, c="red", zorder=4, label="best")
    left.set(xlabel="x", ylabel="f(x)", title=f"{len(xs)} evaluations, one session", ylim=(-10, 18))
    left.legend(fontsize=8, loc="upper left")
    right.semilogy(np.arange(1, len(ys) + 1), np.maximum(regret, 1e-6), "o-")
    right.axvspan(0.5, initial + 0.5, color="grey", alpha=0.15, label="random start")
    right.set(xlabel="evaluations", ylabel="regret: best f so far - min f", title="simple regret")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(prepared(out), dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    steps, grid_size = (10, 101) if args.quick else (25, 401)
    rng = np.random.default_rng(args.seed)
    grid = np.linspace(X_LOW, X_HIGH, grid_size)

    with CMANPClient(args.url, args.api_key) as client:
        # Thompson sampling wants joint sample paths: by default, use a model with a joint head.
        joint_models = [m.name for m in client.models() if m.joint_block_size]
        model = args.model or (joint_models[0] if joint_models else None)
        session = client.create_session(
            model=model, x_transform={"low": X_LOW, "high": X_HIGH}, y_transform=Y_TRANSFORM
        )
        sid = session.session_id
        sampler = Sampler(client, sid, grid, args.seed)
        mode = "thompson" if sampler.joint else "marginal"  # the fallback is labelled as what it is
        print(f"session {sid} on model {session.model}; sample paths: {'joint' if sampler.joint else 'APPROXIMATE'}")
        xs: list[float] = []
        ys: list[float] = []
        for i, (x, y) in enumerate(thompson_search(sampler, forrester, grid, args.initial, steps, rng)):
            xs.append(x)
            ys.append(y)
            kind = "random" if i < args.initial else mode
            print(f"{i + 1:3d} {kind:8s} x={x:.6f} f={y:+8.4f} best={min(ys):+8.4f} regret={min(ys) - F_MIN:.4f}")

        info = client.get_session(sid)
        print(f"initial best f = {min(ys[: args.initial]):+.4f}")
        best = int(np.argmin(ys))
        print(f"final best f = {ys[best]:+.4f} at x = {xs[best]:.4f} (global minimum {F_MIN:+.4f} at {X_MIN})")
        print(f"session: {info.num_points} points, {info.state_bytes:,} bytes of state")
        plot(client, sid, grid, xs, ys, args.initial, args.out)
        client.delete_session(sid)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
