"""Model cost against context size: per-point update latency, state bytes, predict latency.

    python -m bench.model_costs --checkpoint checkpoints/cmanp-gp-rbf.safetensors [--quick]

Per-point update latency: states with N = 10, 100, ..., 10^6 points are built first (in chunks of
1024), then single-point ``net.update`` calls are timed round-robin over all N, so that the load of
a shared machine hits every N alike; the median over many repeats is reported. Derived latents stay
lazy (``update`` never derives them). Predict latency against the number of targets M is timed on a
fresh state (latents not yet derived: what the first predict after an update pays) and on a cached
one. One torch thread throughout. The model is loaded as the service serves it (tiled where its
card says so). Writes JSON (default bench/out/model_costs.json).
"""

from __future__ import annotations

import statistics
import time

import torch

from bench.common import checkpoint_cli
from model import CMANP, CMANPState
from model.tiled import TiledNP, load_served

CHUNK = 1024
Net = CMANP | TiledNP  # a plain model, or one served on tiles


def random_points(net: Net, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(1, n, net.cfg.dim_x, generator=g) * 4 - 2
    y = torch.sin(3 * x[..., :1]).expand(1, n, net.cfg.dim_y) + 0.1 * torch.randn(1, n, net.cfg.dim_y, generator=g)
    return x, y


def states_by_size(net: Net, sizes: list[int], g: torch.Generator) -> dict[int, CMANPState]:
    """One growing stream, folded in chunks of CHUNK; a snapshot of the state at every size."""
    states, state, n = {}, net.empty_state(), 0
    for target in sorted(sizes):
        while n < target:
            k = min(CHUNK, target - n)
            state = net.update(state, *random_points(net, k, g))
            n += k
        states[target] = state
    return states


def update_latency(net: Net, states: dict[int, CMANPState], repeats: int, g: torch.Generator) -> list[dict]:
    """Median single-point update latency per N, timed round-robin over N."""
    x, y = random_points(net, 1, g)
    times: dict[int, list[float]] = {n: [] for n in states}
    for _ in range(repeats):
        for n, state in states.items():
            t0 = time.perf_counter()
            net.update(state, x, y)
            times[n].append(time.perf_counter() - t0)
    return [
        {
            "n": n,
            "update_median_us": statistics.median(ts) * 1e6,
            "update_p90_us": statistics.quantiles(ts, n=10)[-1] * 1e6,
            "state_bytes": len(states[n].to_bytes()),
            "repeats": repeats,
        }
        for n, ts in times.items()
    ]


def predict_latency(net: Net, state: CMANPState, targets: list[int], repeats: int, g: torch.Generator) -> list[dict]:
    """Median predict latency per M: on a fresh state (derives latents) and on a cached one."""
    rows = []
    for m in targets:
        xq = torch.rand(1, m, net.cfg.dim_x, generator=g) * 4 - 2
        fresh, cached = [], []
        for _ in range(repeats):
            new = CMANPState(state.log_norm, state.value_sum, state.num_points, state.fingerprint, state.version)
            t0 = time.perf_counter()
            net.predict(new, xq)
            t1 = time.perf_counter()
            net.predict(new, xq)
            fresh.append(t1 - t0)
            cached.append(time.perf_counter() - t1)
        rows.append(
            {
                "m": m,
                "fresh_median_ms": statistics.median(fresh) * 1e3,
                "cached_median_ms": statistics.median(cached) * 1e3,
            }
        )
    return rows


def conditioning_throughput(net: Net, n: int, chunk_sizes: list[int], g: torch.Generator) -> list[dict]:
    """Points/s of ``net.condition`` over n points, per chunk size (best of 2)."""
    x, y = random_points(net, n, g)
    rows = []
    for chunk in chunk_sizes:
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            net.condition(x, y, chunk_size=chunk)
            best = min(best, time.perf_counter() - t0)
        rows.append({"n": n, "chunk_size": chunk, "points_per_s": n / best})
    return rows


def run(checkpoint: str, quick: bool) -> dict:
    torch.set_num_threads(1)
    net = load_served(checkpoint)  # as served: a tiled model's costs are its tiles'
    g = torch.Generator().manual_seed(0)
    max_exp = 4 if quick else 6
    sizes = [10**e for e in range(1, max_exp + 1)]
    with torch.inference_mode():
        t0 = time.perf_counter()
        states = states_by_size(net, sizes, g)
        build_s = time.perf_counter() - t0
        updates = update_latency(net, states, repeats=200 if quick else 2000, g=g)
        predicts = predict_latency(
            net,
            states[1000],
            [1, 10, 100, 1000] if quick else [1, 10, 100, 1000, 10000],
            repeats=5 if quick else 30,
            g=g,
        )
        conditioning = conditioning_throughput(net, 10_000 if quick else 100_000, [64, 256, 1024, 4096], g)
    base = updates[0]["update_median_us"]
    for row in updates:
        row["ratio_to_n10"] = row["update_median_us"] / base
    return {
        "checkpoint": checkpoint,
        "config": net.cfg.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "build_seconds": build_s,
        "build_points_per_s": max(sizes) / build_s,
        "update": updates,
        "predict": predicts,
        "conditioning": conditioning,
    }


def report(result: dict) -> None:
    print(f"{'N':>9} {'update us (median)':>19} {'p90 us':>8} {'x N=10':>7} {'state bytes':>12}")
    for r in result["update"]:
        print(
            f"{r['n']:>9} {r['update_median_us']:>19.1f} {r['update_p90_us']:>8.1f} "
            f"{r['ratio_to_n10']:>7.3f} {r['state_bytes']:>12}"
        )
    print(f"{'M':>9} {'fresh ms':>10} {'cached ms':>10}")
    for r in result["predict"]:
        print(f"{r['m']:>9} {r['fresh_median_ms']:>10.2f} {r['cached_median_ms']:>10.2f}")
    for r in result["conditioning"]:
        print(f"condition N={r['n']} chunk={r['chunk_size']}: {r['points_per_s']:.0f} points/s")


def main(argv: list[str] | None = None) -> dict:
    return checkpoint_cli("model_costs", __doc__, run, report, argv)


if __name__ == "__main__":
    main()
