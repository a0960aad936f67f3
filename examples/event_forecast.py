"""Stream a simulated Hawkes process into an event session and compare each forecast with the true next event.

Start the service (`make run`, with an event model in checkpoints/), then:

    python examples/event_forecast.py [--url http://127.0.0.1:8000] [--model NAME] [--out PNG] [--quick]

A 3-mark Hawkes process (drawn from the event model's training prior, ``model.data.hawkes``) runs
on a wall clock: times are epoch seconds from 2026-01-01, one model time unit is a minute
(``time_origin``, ``time_scale``). Before each event is posted the script asks for the forecast
of the next one (5%, 50%, 95% waiting-time quantiles and the mark probabilities); at the end it
asks for the expected number of events in the next 30 minutes and counts the true ones. It prints
how often the true waits fell inside the 90% intervals, the session's calibration verdict and its
state size, and plots the intervals against the true waits. --quick streams 60 events instead of
300 (used by the tests). The PNG goes to examples/out/event_forecast.png (git-ignored) unless
--out says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # writes a file; no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from example_options import prepared, service_parser

from model.data.hawkes import HawkesPrior, simulate_hawkes
from service.client import CMANPClient, EventForecast

EPOCH_2026 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MINUTE = 60.0  # seconds per model time unit
HORIZON = 30 * MINUTE
MODEL_HELP = "default: the first served event model (session_kind events)"


def parse_args() -> argparse.Namespace:
    parser = service_parser(__doc__, "event_forecast.png", model_help=MODEL_HELP)
    parser.add_argument("--quick", action="store_true", help="60 events instead of 300")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


def simulate(events: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One Hawkes sequence of ``events`` events plus the rest of its run, in model time (minutes)."""
    g = torch.Generator().manual_seed(seed)
    params = HawkesPrior().sample(1, g)
    end = torch.tensor([1e6], dtype=torch.float64)
    batch = simulate_hawkes(params, end, 2 * events, g)
    times, marks = batch.sequence(0)
    return times.numpy(), marks.numpy()


def plot(times: np.ndarray, forecasts: list[EventForecast], out: Path) -> None:
    waits = np.diff(times) / MINUTE
    low, median, high = (np.array([f.wait_quantiles[j] / MINUTE for f in forecasts]) for j in range(3))
    index = np.arange(1, len(forecasts) + 1)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.fill_between(index, low, high, step="mid", color="tab:blue", alpha=0.25, label="forecast 5%-95%")
    ax.step(index, median, where="mid", color="tab:blue", lw=1, label="forecast median")
    inside = (waits >= low) & (waits <= high)
    ax.plot(index[inside], waits[inside], "k.", ms=4, label="true wait (inside)")
    ax.plot(index[~inside], waits[~inside], "r.", ms=5, label="true wait (outside)")
    ax.set_yscale("log")
    ax.set_xlabel("event")
    ax.set_ylabel("wait to the next event (minutes)")
    ax.set_title(f"next-event forecasts of a Hawkes stream: {inside.mean():.0%} of true waits inside the 90% band")
    ax.legend(loc="lower right", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(prepared(out), dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    count = 60 if args.quick else 300
    model_times, marks = simulate(count, args.seed)
    times = EPOCH_2026 + MINUTE * model_times  # epoch seconds
    with CMANPClient(args.url, args.api_key) as client:
        model = args.model or next(m.name for m in client.models() if m.session_kind == "events")
        session = client.create_session(model, time_origin=EPOCH_2026, time_scale=MINUTE)
        print(f"session {session.session_id} on model {session.model}")
        forecasts = []
        client.add_events(session.session_id, times[:1], marks[:1])
        for i in range(1, count):
            forecasts.append(client.forecast(session.session_id, quantiles=[0.05, 0.5, 0.95]))
            client.add_events(session.session_id, times[i : i + 1], marks[i : i + 1])
        ahead = client.forecast(session.session_id, horizon=HORIZON, seed=args.seed)
        info = client.get_session(session.session_id)
    waits = np.diff(times[:count])
    low, high = (np.array([f.wait_quantiles[j] for f in forecasts]) for j in (0, 2))
    print(f"events streamed: {info.num_events}, state {info.state_bytes:,} bytes")
    print(f"true waits inside the 90% intervals: {np.mean((waits >= low) & (waits <= high)):.3f}")
    true_ahead = int(np.sum((times > times[count - 1]) & (times <= times[count - 1] + HORIZON)))
    print(
        f"events in the next {HORIZON / MINUTE:.0f} minutes: expected {ahead.expected_events:.2f} "
        f"(± {ahead.expected_events_std_error:.2f}), true {true_ahead}"
    )
    print(f"calibration: {info.calibration['status']} over {info.calibration['scored_events']} events")
    plot(times[:count], forecasts, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
