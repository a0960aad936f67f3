"""The calibration monitor's false-alarm rate and power, measured with a real model on its prior.

    python -m bench.calibration_monitor --checkpoint checkpoints/cmanp-gp-general.safetensors --data broad

For sessions of N points (one fold batch, as a session below the fold threshold has), each
point is scored the way the service scores it (``service.kinds.regression._interpolation_scores``
batched over tasks, and prequential forecast blocks), and the session's verdict is taken from
``service.kinds.regression_calibration.Scores``:
  * false alarms: the share of sessions on data from the model's own training prior that are
    called ``miscalibrated`` (each session is one check);
  * alarms on sessions whose intervals are in fact fine: each session's function is also observed
    at ``FRESH`` fresh inputs, ``DRAWS`` times each (the same function values, new noise: the
    readings a user would see, many times over, so that a session's label reflects its intervals'
    expected fit, not the luck of one draw of noise), predicted from the whole context. A session
    is *fine* when those fresh readings pass every tolerance the monitor's tests claim: their mean
    clipped z^2 lies between that of a forecast whose std is ``STD_FACTOR`` (1.5) too large and one
    whose std is ``VARIANCE_TOLERANCE`` (1.15) too small, and the share inside the central 50% and
    95% intervals lies in the coverage band of std off by less than ``STD_FACTOR``. An alarm on a fine session is
    a false alarm; an in-prior session on which the model itself is off (too narrow, or the wrong
    shape: heavy-tailed or heteroscedastic noise under a Gaussian forecast covers too much at 50%)
    is not a false alarm when it is flagged. *Variance-fine* applies the first condition alone (the
    definition of earlier measurements), for comparison.
  * power: the same sessions judged by a forecaster whose standard deviations are ``factor``
    times too small (every predictive variance divided by factor^2): the share called
    ``miscalibrated``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from statistics import NormalDist

import torch

from bench.common import write_json
from model.data import build_sampler
from model.tiled import load_served
from service.calibration import FOLDS, prequential_blocks
from service.kinds.regression_calibration import (
    STD_FACTOR,
    TESTED_LEVELS,
    VARIANCE_TOLERANCE,
    Z_CLIP,
    Aggregates,
    Scores,
    clipped_square_moments,
    tolerated_coverage,
)

SIZES = (50, 100, 200)
FACTORS = (1.5, 2.0)
FRESH = 200
DRAWS = 32


Scored = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (y, mean, variance) per block, [B, k, 1] each


def _predictions(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Scored, Scored]:
    """The held-out predictions of a batch of sessions x, y [B, n, .], as the service scores a session
    of n points below its fold threshold: interpolation shares, then forecast blocks."""
    B, n = x.shape[:2]
    shares = [torch.arange(j, n, FOLDS) for j in range(FOLDS)]
    alone = [net.condition(x[:, idx], y[:, idx]) for idx in shares]
    interpolation: Scored = []
    for j, idx in enumerate(shares):
        state = net.empty_state(B)
        for k, other in enumerate(alone):
            if k != j:
                state = state.merge(other)
        interpolation.append((y[:, idx], *net.predict(state, x[:, idx])))
    forecast: Scored = []
    state = net.empty_state(B)
    for start, stop in prequential_blocks(0, n):
        forecast.append((y[:, start:stop], *net.predict(state, x[:, start:stop])))
        state = net.update(state, x[:, start:stop], y[:, start:stop])
    return interpolation, forecast


def _scores(predictions: tuple[Scored, Scored], shrink: float) -> list[Scores]:
    """Each session's Scores, with every predictive variance divided by ``shrink``."""

    def aggregate(blocks: Scored, b: int) -> Aggregates:
        return sum((Aggregates.of_scores(y[b], m[b], v[b] / shrink) for y, m, v in blocks), Aggregates())

    interpolation, forecast = predictions
    B = interpolation[0][0].shape[0]
    return [Scores(aggregate(interpolation, b), aggregate(forecast, b)) for b in range(B)]


def _fine(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[list[bool], list[bool]]:
    """Per session of fresh readings y [B, m, k] (k readings at each input) of predictions mean, var
    [B, m, 1]: (fine, variance-fine), as the module docstring says."""
    z2 = (y - mean).square() / var
    fresh = z2.clamp_max(Z_CLIP**2).mean((1, 2))
    low, high = clipped_square_moments(1 / STD_FACTOR)[0], clipped_square_moments(VARIANCE_TOLERANCE)[0]
    variance_fine = (fresh >= low) & (fresh <= high)
    fine = variance_fine.clone()
    for level in TESTED_LEVELS:
        half_width = NormalDist().inv_cdf((1 + level) / 2)
        covered = (z2 <= half_width**2).double().mean((1, 2))
        allowed_low, allowed_high = tolerated_coverage(level)
        fine &= (covered >= allowed_low) & (covered <= allowed_high)
    return fine.tolist(), variance_fine.tolist()


def measure(
    checkpoint: str,
    data: dict,
    sessions: int,
    batch: int,
    seed: int,
    sizes: tuple[int, ...] = SIZES,
    sessions_out: Path | None = None,
) -> dict:
    """The rates of the module docstring; ``sessions_out``: also append one JSON line per session
    (its fine flags and its ``Scores.to_sums`` at each std factor), to judge other verdicts offline."""
    net = load_served(checkpoint)
    sampler = build_sampler(data, net.cfg.dim_x, net.cfg.x_range)
    g = torch.Generator().manual_seed(seed)
    g_fresh = torch.Generator().manual_seed(seed + 1)  # its own stream: the sessions are those of earlier runs
    result: dict = {"checkpoint": checkpoint, "data": data, "seed": seed, "sessions_per_size": sessions, "sizes": {}}
    with torch.inference_mode():
        for n in sizes:
            counts = {
                "false_alarms": 0, "fine": 0, "alarms_when_fine": 0, "variance_fine": 0, "alarms_when_variance_fine": 0,
                **{f"flagged_at_{f:g}x": 0 for f in FACTORS},
            }  # fmt: skip
            reasons: dict[str, int] = {}
            fine_reasons: dict[str, int] = {}  # the same, on fine sessions only: what the false alarms are
            for _ in range(math.ceil(sessions / batch)):
                tasks = sampler.sample(batch, n, FRESH, g)
                predictions = _predictions(net, tasks.xc, tasks.yc)
                mean, var = net.predict(net.condition(tasks.xc, tasks.yc), tasks.xt)
                fine, variance_fine = _fine(tasks.readings(DRAWS, g_fresh), mean.double(), var.double())
                counts["fine"] += sum(fine)
                counts["variance_fine"] += sum(variance_fine)
                records = [
                    {"n": n, "fine": f, "variance_fine": v, "sums": {}}
                    for f, v in zip(fine, variance_fine, strict=True)
                ]
                for shrink, key in [(1.0, "false_alarms")] + [(f * f, f"flagged_at_{f:g}x") for f in FACTORS]:
                    for b, scores in enumerate(_scores(predictions, shrink)):
                        records[b]["sums"][f"{math.sqrt(shrink):g}"] = scores.to_sums()
                        status, verdict_reasons = scores.verdict()
                        if shrink == 1.0 and status == "miscalibrated":
                            counts["alarms_when_fine"] += fine[b]
                            counts["alarms_when_variance_fine"] += variance_fine[b]
                        if status == "miscalibrated":
                            counts[key] += 1
                            if shrink == 1.0:
                                for r in verdict_reasons:
                                    short = r[:60]
                                    reasons[short] = reasons.get(short, 0) + 1
                                    if fine[b]:
                                        fine_reasons[short] = fine_reasons.get(short, 0) + 1
                if sessions_out is not None:
                    with sessions_out.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in records)
            done = math.ceil(sessions / batch) * batch
            rates = {k: v / done for k, v in counts.items()}
            rates["alarms_when_fine"] = counts["alarms_when_fine"] / max(1, counts["fine"])
            rates["alarms_when_variance_fine"] = counts["alarms_when_variance_fine"] / max(1, counts["variance_fine"])
            result["sizes"][str(n)] = {"sessions": done, **counts, "rates": rates}
            result["sizes"][str(n)]["false_alarm_reasons"] = reasons
            result["sizes"][str(n)]["reasons_when_fine"] = fine_reasons
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
    p.add_argument("--quick", action="store_true", help="64 sessions of 100 points")
    p.add_argument("--out", default="bench/out/calibration_monitor.json")
    p.add_argument("--sessions-out", type=Path, help="also write each session's score sums here (JSON lines)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = {"kind": "gp", "kernel": "rbf"} if args.data == "rbf" else {"kind": "broad"}
    t0 = time.perf_counter()
    sessions, sizes = (64, (100,)) if args.quick else (args.sessions, SIZES)
    result = measure(args.checkpoint, data, sessions, args.batch, args.seed, sizes, args.sessions_out)
    result["seconds"] = time.perf_counter() - t0
    write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
