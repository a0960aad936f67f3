"""What prequential calibration costs the context-post path: scoring on against off, in one run.

    python -m bench.calibration_cost [--seconds 10] [--rounds 3] [--writers 16] [--sessions 64]

Two servers, started as ``make run`` starts them (``python -m service``), share one bundled
redis-server and differ only in ``CMANP_CALIBRATION``. Rounds alternate between them, so that
drift in the shared CPU hits both alike. Each round, ``writers`` async HTTP clients post
single-point context posts (GP draws in the training range) round-robin over ``sessions``
sessions for ``seconds``; every 256th post of a session triggers its fold, which is where the
scoring happens. Also timed in process: one fold of a 256-point log, with and without scoring,
for the first fold of a session (9 scoring blocks) and a later one (1 block).

Prints and writes JSON (default bench/out/calibration_cost.json): posts/s and p50/p99 latency
per round and mode, the ratio of the median posts/s, scoring on / off, and the ratio within each
round (its on and off runs are back to back). Also the server's CPU time per post, which other
load on a shared machine disturbs far less than posts/s, and the throughput ratio it implies for
a CPU-bound server (CPU per post off / on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from bench.service_load import tree_cpu_seconds
from service.embedded_redis import EmbeddedRedis
from tools.service_process import ServiceProcess

CHECKPOINT_DIR = Path("checkpoints")
MODEL = "cmanp-gp-rbf"


def server(redis_url: str, scoring: bool, log: Path) -> ServiceProcess:
    """``python -m service`` as ``make run`` starts it, on the shared Redis, with scoring on or off."""
    env = os.environ | {
        "CMANP_REDIS_URL": redis_url,
        "CMANP_CALIBRATION": str(scoring).lower(),
        "CMANP_CHECKPOINT_DIR": str(CHECKPOINT_DIR),
        "CMANP_DEFAULT_MODEL": MODEL,
        "CMANP_LOG_LEVEL": "warning",
    }
    return ServiceProcess(env, log)


async def load(url: str, sessions: int, writers: int, seconds: float, seed: int) -> dict:
    """Single-point context posts for ``seconds``; posts/s and latency percentiles."""
    rng = np.random.default_rng(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=writers)) as http:
        ids = [(await http.post("/v1/sessions", json={})).json()["session_id"] for _ in range(sessions)]
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def writer(w: int) -> None:
            i = w
            while time.perf_counter() < deadline:
                x = float(rng.uniform(-2, 2))
                body = {"x": [[x]], "y": [[float(np.sin(3 * x) + 0.02 * rng.standard_normal())]]}
                start = time.perf_counter()
                response = await http.post(f"/v1/sessions/{ids[i % sessions]}/context", json=body)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                i += writers

        begin = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        elapsed = time.perf_counter() - begin
        for session_id in ids:
            await http.delete(f"/v1/sessions/{session_id}")
    ms = np.array(latencies) * 1e3
    return {
        "posts": len(latencies),
        "posts_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def fold_cost(repeats: int) -> dict:
    """Milliseconds per fold of a 256-point log, in process, with and without scoring (best of repeats),
    and what scoring adds per point in the folds after the first."""
    import torch

    from service.kinds.regression import REGRESSION, RegressionParams, log_entry
    from service.registry import ServedModel
    from service.store import Session, Snapshot
    from service.transforms import AffineMap

    torch.set_num_threads(1)
    model = ServedModel.load(CHECKPOINT_DIR / f"{MODEL}.safetensors")
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (512, 1)).astype(np.float32)
    y = np.sin(3 * x).astype(np.float32)
    with torch.inference_mode():
        empty = model.net.state_from_bytes(model.empty_state)
        after_first = model.net.update(empty, torch.from_numpy(x[None, :256]), torch.from_numpy(y[None, :256]))
    identity = AffineMap.identity(1)
    params = RegressionParams(identity, identity).to_fields()
    session = Session("bench", "", MODEL, model.fingerprint, REGRESSION.name, params, created_at=0.0, ttl_seconds=1)
    log = [log_entry(x[i : i + 1], y[i : i + 1]) for i in range(256, 512)]
    result = {}
    for name, state in (("first_fold", model.empty_state), ("later_fold", after_first.to_bytes())):
        snapshot = Snapshot(session, state, log, log_points=256, fold_epoch=0)
        for scoring in (False, True):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                REGRESSION.fold(model, snapshot, scoring)
                times.append(time.perf_counter() - start)
            # The minimum: on a shared CPU, it is the repeat least disturbed by other work.
            result[f"{name}_ms_scoring_{'on' if scoring else 'off'}"] = 1e3 * min(times)
    result["scoring_ms_per_point_later_folds"] = (
        result["later_fold_ms_scoring_on"] - result["later_fold_ms_scoring_off"]
    ) / 256
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating")
    parser.add_argument("--writers", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--fold-repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/out/calibration_cost.json"))
    args = parser.parse_args()

    folds = fold_cost(args.fold_repeats)
    rounds: dict[str, list[dict]] = {"on": [], "off": []}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as data_dir:
        redis = stack.enter_context(EmbeddedRedis(Path(data_dir)))
        servers = {}
        for mode in ("on", "off"):
            service = stack.enter_context(server(redis.url, mode == "on", Path(data_dir) / f"server-{mode}.log"))
            servers[mode] = (service.process.pid, service.url)
        for r in range(args.rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                pid, url = servers[mode]
                cpu = tree_cpu_seconds(pid)  # the server and its worker processes
                result = asyncio.run(load(url, args.sessions, args.writers, args.seconds, seed=r))
                # Server CPU per post: far less sensitive than posts/s to other work on a shared CPU.
                result["server_cpu_ms_per_post"] = 1e3 * (tree_cpu_seconds(pid) - cpu) / result["posts"]
                rounds[mode].append(result)
                print(
                    f"round {r} scoring {mode:3}: {result['posts_per_s']:7.1f} posts/s, "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"server CPU {result['server_cpu_ms_per_post']:.3f} ms/post",
                    flush=True,
                )
    median = {mode: statistics.median(r["posts_per_s"] for r in rounds[mode]) for mode in rounds}
    cpu = {mode: statistics.median(r["server_cpu_ms_per_post"] for r in rounds[mode]) for mode in rounds}
    # Each round pairs an "on" and an "off" run back to back: their ratio cancels slow drift.
    pair_ratios = [on["posts_per_s"] / off["posts_per_s"] for on, off in zip(rounds["on"], rounds["off"], strict=True)]
    report = {
        "command": " ".join([Path(sys.executable).name, "-m", "bench.calibration_cost", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "settings": vars(args) | {"out": str(args.out)},
        "fold": folds,
        "rounds": rounds,
        "median_posts_per_s": median,
        "throughput_ratio_on_over_off": median["on"] / median["off"],
        "round_ratios_on_over_off": pair_ratios,
        "median_server_cpu_ms_per_post": cpu,
        # What the CPU cost implies for a CPU-bound server: posts/s with scoring on, over off.
        "cpu_throughput_ratio_on_over_off": cpu["off"] / cpu["on"],
    }
    for key, value in folds.items():
        print(f"{key}: {value:.1f}")
    ratio = report["throughput_ratio_on_over_off"]
    print(f"median posts/s: scoring on {median['on']:.1f}, off {median['off']:.1f}; ratio on/off {ratio:.3f}")
    print("ratio on/off per round: " + ", ".join(f"{r:.3f}" for r in pair_ratios))
    print(
        f"median server CPU per post: scoring on {cpu['on']:.3f} ms, off {cpu['off']:.3f} ms; "
        f"implied throughput ratio on/off {report['cpu_throughput_ratio_on_over_off']:.3f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
