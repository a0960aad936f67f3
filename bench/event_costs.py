"""The event model's (CMHP) cost of one event against the history size, beside a re-encoding transformer.

    python -m bench.event_costs [--checkpoint checkpoints/cmhp-hawkes-exp.safetensors] [--quick]

In one run, one torch thread:

* **per event**: one ``update`` with a single event, then one ``next_event`` forecast on the new
  state (its latents derived afresh, as after every event), on states already holding N events
  (10 to 10^6; built by ``update`` in chunks, the state is the same size at every N);
* **state bytes** at every N (``to_bytes``);
* **the same step for a re-encoding transformer** (``bench.baselines.transformer_hawkes``, THP
  style, the width and depth of the CMHP config, random weights: a cost baseline): its forecast
  after the new event means encoding the whole history of N_T + 1 events again.

The measurements are interleaved: each round runs a block of CMHP steps at every N (the order of
the N rotating from round to round) and one transformer step, so that drift in a shared machine's
load hits every column alike; medians over all rounds are reported. The events are a Poisson
stream with uniform marks (a cost does not depend on the data). Without the checkpoint file the
model is built with random weights from ``--config`` (same architecture, same cost) and the JSON
says so. Writes JSON (default bench/out/event_costs.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import Tensor

from bench.baselines.transformer_hawkes import THPConfig, TransformerHawkes
from bench.common import EVENT_CHECKPOINT, OUT_DIR, machine, write_json
from model import CMHP, CMHPConfig, CMHPState, load_checkpoint
from model.checkpoint import build_model

EVENT_CONFIG = "configs/hawkes-exp.json"
CHUNK = 4096
# Acceptance targets (issue 18).
UPDATE_RATIO_MAX = 1.1  # a step at 10^6 events within 1.1x of one at 10
ADD_RATIO_MIN = 100  # the transformer's step at 10^4 events >= 100x the CMHP's


def event_stream(n: int, num_marks: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A Poisson stream of n events (rate 1) with uniform marks: times [1, n] float64, marks [1, n]."""
    times = torch.empty(1, n, dtype=torch.float64).exponential_(generator=g).cumsum(1)
    return times, torch.randint(0, num_marks, (1, n), generator=g)


def states_by_size(net: CMHP, times: Tensor, marks: Tensor, sizes: list[int]) -> dict[int, CMHPState]:
    """A snapshot of the stream's state after its first N events, for every N in ``sizes``."""
    states, state, n = {}, net.empty_state(), 0
    for target in sorted(sizes):
        while n < target:
            step = min(CHUNK, target - n)
            state = net.update(state, times[:, n : n + step], marks[:, n : n + step])
            n += step
        states[target] = state
    return states


def load_model(checkpoint: str, config: str) -> tuple[CMHP, str]:
    """The checkpoint's model, or (no such file) a random-init one of the config's architecture."""
    if Path(checkpoint).exists():
        return load_checkpoint(checkpoint), f"trained ({checkpoint})"
    cfg = CMHPConfig.from_dict(json.loads(Path(config).read_text())["model"])
    torch.manual_seed(0)
    return build_model(cfg).eval(), f"random init from {config} ({checkpoint} not present; same cost)"


def cmhp_step(net: CMHP, state: CMHPState, t: Tensor, k: Tensor) -> tuple[float, float]:
    """Seconds of one single-event update, and of the forecast on the state it returns."""
    t0 = time.perf_counter()
    new = net.update(state, t, k)
    t1 = time.perf_counter()
    net.next_event(new)
    return t1 - t0, time.perf_counter() - t1


def transformer_step(thp: TransformerHawkes, times: Tensor, marks: Tensor) -> float:
    """Seconds of the transformer's forecast after the last of ``times``: the whole history encoded."""
    t0 = time.perf_counter()
    thp.forecast(times, marks)
    return time.perf_counter() - t0


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def _p90_us(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] * 1e6


def run(checkpoint: str, config: str, sizes: list[int], transformer_events: int, rounds: int, per_round: int) -> dict:
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    net, weights = load_model(checkpoint, config)
    thp = TransformerHawkes(THPConfig(net.cfg.num_marks, net.cfg.d_model, net.cfg.n_heads, net.cfg.n_blocks,
                                      net.cfg.ff_width, net.cfg.components, net.cfg.min_log_std)).eval()  # fmt: skip
    sizes = sorted(set(sizes) | {transformer_events})
    g = torch.Generator().manual_seed(0)
    times, marks = event_stream(max(sizes) + 1, net.cfg.num_marks, g)
    with torch.inference_mode():
        t0 = time.perf_counter()
        states = states_by_size(net, times, marks, sizes)
        build_s = time.perf_counter() - t0
        # The new event: 0.5 time units after each state's latest, mark 1.
        new = {n: (states[n].last_time.view(1, 1) + 0.5, torch.ones(1, 1, dtype=torch.long)) for n in sizes}
        history_t = torch.cat([times[:, :transformer_events], new[transformer_events][0]], 1)
        history_k = torch.cat([marks[:, :transformer_events], new[transformer_events][1]], 1)
        for n in sizes:  # warm-up: first calls allocate
            cmhp_step(net, states[n], *new[n])
        transformer_step(thp, history_t, history_k)
        updates: dict[int, list[float]] = {n: [] for n in sizes}
        forecasts: dict[int, list[float]] = {n: [] for n in sizes}
        totals: dict[int, list[float]] = {n: [] for n in sizes}
        thp_times: list[float] = []
        paired: list[float] = []  # per round: the transformer's step over the round's CMHP median at its N
        for r in range(rounds):
            order = sizes[r % len(sizes) :] + sizes[: r % len(sizes)]
            for n in order:
                for _ in range(per_round):
                    u, f = cmhp_step(net, states[n], *new[n])
                    updates[n].append(u)
                    forecasts[n].append(f)
                    totals[n].append(u + f)
            thp_times.append(transformer_step(thp, history_t, history_k))
            paired.append(thp_times[-1] / statistics.median(totals[transformer_events][-per_round:]))
    rows = [
        {
            "n": n,
            "update_median_us": _median_us(updates[n]),
            "forecast_median_us": _median_us(forecasts[n]),
            "step_median_us": _median_us(totals[n]),
            "step_p90_us": _p90_us(totals[n]),
            "state_bytes": len(states[n].to_bytes()),
            "repeats": len(totals[n]),
        }
        for n in sizes
    ]
    base = rows[0]["step_median_us"]
    for row in rows:
        row["ratio_to_smallest"] = row["step_median_us"] / base
    at_transformer = next(r for r in rows if r["n"] == transformer_events)
    transformer = {
        "n": transformer_events,
        "step_median_ms": statistics.median(thp_times) * 1e3,
        "step_min_ms": min(thp_times) * 1e3,
        "step_max_ms": max(thp_times) * 1e3,
        "repeats": len(thp_times),
        "parameters": sum(p.numel() for p in thp.parameters()),
        "config": vars(thp.cfg),
    }
    ratio = transformer["step_median_ms"] * 1e3 / at_transformer["step_median_us"]
    largest = rows[-1]
    return {
        "checkpoint": checkpoint,
        "weights": weights,
        "config": net.cfg.to_dict(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "torch_threads": torch.get_num_threads(),
        "build_seconds": build_s,
        "build_events_per_s": max(sizes) / build_s,
        "rounds": rounds,
        "per_round": per_round,
        "cmhp": rows,
        "transformer": transformer,
        "transformer_over_cmhp": ratio,
        "transformer_over_cmhp_by_round": paired,
        "acceptance": {
            "step_ratio_max": UPDATE_RATIO_MAX,
            "transformer_ratio_min": ADD_RATIO_MIN,
            "largest_n": largest["n"],
            "step_ratio_largest_to_smallest": largest["ratio_to_smallest"],
            "step_ratio_ok": largest["ratio_to_smallest"] <= UPDATE_RATIO_MAX,
            "state_bytes_constant": len({r["state_bytes"] for r in rows}) == 1,
            "transformer_ratio_ok": ratio >= ADD_RATIO_MIN,
        },
        "machine": machine()
        | {
            "load_average_start": load_before,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": _commit(),
        },
    }


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=os.getcwd())
    return out.stdout.strip()


def report(result: dict) -> None:
    print(f"CMHP ({result['weights']}), 1 torch thread: update + next_event of one event")
    header = ("N", 9), ("update us", 10), ("forecast us", 12), ("step us", 9), ("p90 us", 8), ("x smallest", 11)
    print(" ".join(f"{name:>{width}}" for name, width in header) + f" {'bytes':>8}")
    for r in result["cmhp"]:
        print(f"{r['n']:>9} {r['update_median_us']:>10.1f} {r['forecast_median_us']:>12.1f} {r['step_median_us']:>9.1f}"
              f" {r['step_p90_us']:>8.1f} {r['ratio_to_smallest']:>11.3f} {r['state_bytes']:>8}")  # fmt: skip
    t, by_round = result["transformer"], result["transformer_over_cmhp_by_round"]
    print(f"transformer re-encoding {t['n'] + 1} events: {t['step_median_ms']:.1f} ms (median of {t['repeats']}); "
          f"{result['transformer_over_cmhp']:,.0f}x the CMHP step at N = {t['n']:,} (per round: "
          f"{min(by_round):,.0f}x to {max(by_round):,.0f}x)")  # fmt: skip
    print("acceptance:", result["acceptance"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=EVENT_CHECKPOINT)
    p.add_argument("--config", default=EVENT_CONFIG, help="the architecture when the checkpoint is absent")
    p.add_argument("--quick", action="store_true", help="small sizes, for CI: checks the harness, not the numbers")
    p.add_argument("--out", type=Path, default=OUT_DIR / "event_costs.json")
    p.add_argument("--note", default="", help="what else ran on the machine, for the report")
    args = p.parse_args(argv)
    if args.quick:
        result = run(args.checkpoint, args.config, [10, 1000, 10_000], 300, rounds=3, per_round=10)
    else:
        result = run(args.checkpoint, args.config, [10, 1000, 10**6], 10_000, rounds=15, per_round=100)
    result["note"] = args.note
    report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
