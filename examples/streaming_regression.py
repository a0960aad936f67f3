"""Stream a noisy signal into a CMANP session and watch the predictive band narrow.

Start the service (`make run`), then:

    python examples/streaming_regression.py [--url http://127.0.0.1:8000] [--out PNG] [--quick]

A sensor sampled at random times in [0, 60] s is posted one reading at a time. At a few checkpoints
the script predicts on a grid, prints the average predictive standard deviation, the RMSE of the
mean against the true signal and the session's state size, and finally plots the mean ± 2σ band at
each checkpoint. The session maps the time axis [0, 60] onto the model's input range, so readings
are posted in seconds. --quick streams fewer readings (used by the tests). The PNG goes to
examples/out/streaming_regression.png (git-ignored) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # writes a file; no display needed
import matplotlib.pyplot as plt
import numpy as np
from example_options import prepared, service_parser

from service.client import CMANPClient, Prediction

T_MAX = 60.0
NOISE_STD = 0.05


def signal(t: np.ndarray) -> np.ndarray:
    return np.sin(t / 6.0) + 0.3 * np.cos(t / 2.0)


def parse_args() -> argparse.Namespace:
    parser = service_parser(__doc__, "streaming_regression.png")
    parser.add_argument("--quick", action="store_true", help="60 readings instead of 200")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def plot(
    checkpoints: list[tuple[Prediction, int]], grid: np.ndarray, times: np.ndarray, readings: np.ndarray, out: Path
) -> None:
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4 * len(checkpoints), 3.2), sharey=True, squeeze=False)
    for ax, (p, state_bytes) in zip(axes[0], checkpoints, strict=True):
        n = p.num_points
        mean, sd = p.mean[:, 0], np.sqrt(p.variance[:, 0])
        ax.fill_between(grid, mean - 2 * sd, mean + 2 * sd, color="tab:blue", alpha=0.2, label="mean ± 2σ")
        ax.plot(grid, mean, color="tab:blue", lw=1.5, label="mean")
        ax.plot(grid, signal(grid), "k--", lw=1, label="true signal")
        ax.plot(times[:n], readings[:n], "k.", ms=3, label="readings")
        ax.set_title(f"{n} readings, {state_bytes / 1024:.1f} KiB of state")
        ax.set_xlabel("time (s)")
    axes[0, 0].set_ylim(-2.5, 2.5)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(prepared(out), dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    total, checkpoints_at = (60, (5, 20, 60)) if args.quick else (200, (5, 15, 40, 200))
    rng = np.random.default_rng(args.seed)
    times = rng.uniform(0.0, T_MAX, total)
    readings = signal(times) + NOISE_STD * rng.standard_normal(total)
    grid = np.linspace(0.0, T_MAX, 241)

    checkpoints: list[tuple[Prediction, int]] = []  # the prediction and the state size at each checkpoint
    with CMANPClient(args.url, args.api_key) as client:
        session = client.create_session(model=args.model, x_transform={"low": 0.0, "high": T_MAX})
        print(f"session {session.session_id} on model {session.model}")
        print(f"{'readings':>8}  {'mean sd':>8}  {'rmse':>6}  state")
        for n, (t, reading) in enumerate(zip(times, readings, strict=True), start=1):
            client.add_context(session.session_id, [t], [reading])
            if n in checkpoints_at:
                p = client.predict(session.session_id, grid)
                state_bytes = client.get_session(session.session_id).state_bytes
                mean_sd = np.sqrt(p.variance[:, 0]).mean()
                rmse = np.sqrt(np.mean((p.mean[:, 0] - signal(grid)) ** 2))
                print(f"{p.num_points:8d}  {mean_sd:8.3f}  {rmse:6.3f}  {state_bytes:,} bytes")
                checkpoints.append((p, state_bytes))
        client.delete_session(session.session_id)

    plot(checkpoints, grid, times, readings, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
