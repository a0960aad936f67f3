"""Stream readings into a running CMANP service and watch the prediction sharpen.

Start the service (`make run`), then:

    python examples/stream_demo.py [--url http://127.0.0.1:8000] [--api-key KEY] [--points 200]

A noisy sensor sampled at random times in [0, 60] s is posted one reading at a time; every 25
readings the demo prints the predictive mean and standard deviation at a few times, next to the
true signal. The session maps the time axis [0, 60] onto the model's input range, so readings
are posted in seconds.
"""

from __future__ import annotations

import argparse

import numpy as np

from service.client import CMANPClient


def signal(t: np.ndarray) -> np.ndarray:
    return np.sin(t / 6.0) + 0.3 * np.cos(t / 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="default: the service's default model")
    parser.add_argument("--points", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    times = rng.uniform(0.0, 60.0, args.points)
    readings = signal(times) + 0.1 * rng.standard_normal(args.points)
    probe = np.array([5.0, 20.0, 35.0, 50.0])

    with CMANPClient(args.url, args.api_key) as client:
        session = client.create_session(model=args.model, x_transform={"low": 0.0, "high": 60.0})
        print(f"session {session.session_id} on model {session.model} ({session.state_bytes} bytes of state)")
        for i, (t, reading) in enumerate(zip(times, readings, strict=True), start=1):
            client.add_context(session.session_id, [t], [reading])
            if i % 25 == 0 or i == args.points:
                p = client.predict(session.session_id, probe)
                cells = "  ".join(
                    f"t={t_:4.0f}s {m:+.2f}±{s:.2f} (true {v:+.2f})"
                    for t_, m, s, v in zip(probe, p.mean[:, 0], np.sqrt(p.variance[:, 0]), signal(probe), strict=True)
                )
                print(f"{p.num_points:4d} points | {cells}")
        print(f"state is still {client.get_session(session.session_id).state_bytes} bytes")
        client.delete_session(session.session_id)


if __name__ == "__main__":
    main()
