"""The calibration monitor's false-alarm rate and power, measured with a real model on its prior.

    python -m bench.calibration_monitor --checkpoint checkpoints/cmanp-gp-general.safetensors --data broad

For sessions of N points (one fold batch, as a session below the fold threshold has), each
point is scored the way the service scores it (``service.inference._interpolation_scores``
batched over tasks, and prequential forecast blocks), and the session's verdict is taken from
``service.calibration.Scores``:
  * false alarms: the share of sessions on data from the model's own training prior that are
    called ``miscalibrated`` (each session is one check);
  * power: the same sessions judged by a forecaster whose standard deviations are ``factor``
    times too small (every predictive variance divided by factor^2): the share called
    ``miscalibrated``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench.common import write_json
from model import load_checkpoint
from model.data import build_sampler
from service.calibration import FOLDS, Aggregates, Scores, prequential_blocks

SIZES = (50, 100, 200)
FACTORS = (1.5, 2.0)


def _scores(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, shrink: float) -> list[Scores]:
    """The Scores of each task of a batch of sessions x, y [B, n, .], with predictive variances / shrink."""
    B, n = x.shape[:2]
    shares = [torch.arange(j, n, FOLDS) for j in range(FOLDS)]
    alone = [net.condition(x[:, idx], y[:, idx]) for idx in shares]
    interpolation = [Aggregates() for _ in range(B)]
    for j, idx in enumerate(shares):
        state = net.empty_state(B)
        for k, other in enumerate(alone):
            if k != j:
                state = state.merge(other)
        mean, var = net.predict(state, x[:, idx])
        for b in range(B):
            interpolation[b] += Aggregates.of_scores(y[b, idx], mean[b], var[b] / shrink)
    forecast = [Aggregates() for _ in range(B)]
    state = net.empty_state(B)
    for start, stop in prequential_blocks(0, n):
        mean, var = net.predict(state, x[:, start:stop])
        for b in range(B):
            forecast[b] += Aggregates.of_scores(y[b, start:stop], mean[b], var[b] / shrink)
        state = net.update(state, x[:, start:stop], y[:, start:stop])
    return [Scores(i, f) for i, f in zip(interpolation, forecast, strict=True)]


def measure(checkpoint: str, data: dict, sessions: int, batch: int, seed: int) -> dict:
    net = load_checkpoint(checkpoint)
    sampler = build_sampler(data, net.cfg.dim_x, net.cfg.x_range)
    g = torch.Generator().manual_seed(seed)
    result: dict = {"checkpoint": checkpoint, "data": data, "sessions_per_size": sessions, "sizes": {}}
    with torch.inference_mode():
        for n in SIZES:
            counts = {"false_alarms": 0, **{f"flagged_at_{f:g}x": 0 for f in FACTORS}}
            reasons: dict[str, int] = {}
            for _ in range(math.ceil(sessions / batch)):
                tasks = sampler.sample(batch, n, 0, g)
                for shrink, key in [(1.0, "false_alarms")] + [(f * f, f"flagged_at_{f:g}x") for f in FACTORS]:
                    for scores in _scores(net, tasks.xc, tasks.yc, shrink):
                        report = scores.report(enabled=True)
                        if report.status == "miscalibrated":
                            counts[key] += 1
                            if shrink == 1.0:
                                for r in report.reasons:
                                    short = r[:60]
                                    reasons[short] = reasons.get(short, 0) + 1
            done = math.ceil(sessions / batch) * batch
            result["sizes"][str(n)] = {"sessions": done, **counts, "rates": {k: v / done for k, v in counts.items()}}
            result["sizes"][str(n)]["false_alarm_reasons"] = reasons
            print(n, result["sizes"][str(n)], flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", choices=("rbf", "broad"), default="broad", help="the prior the tasks come from")
    p.add_argument("--sessions", type=int, default=2048, help="sessions per size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="128 sessions per size")
    p.add_argument("--out", default="bench/out/calibration_monitor.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = {"kind": "gp", "kernel": "rbf"} if args.data == "rbf" else {"kind": "broad"}
    t0 = time.perf_counter()
    result = measure(args.checkpoint, data, 128 if args.quick else args.sessions, args.batch, args.seed)
    result["seconds"] = time.perf_counter() - t0
    write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
