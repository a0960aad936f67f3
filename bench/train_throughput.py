"""Training throughput (tasks/s) on the paper protocol, for several configs in one process.

    python -m bench.train_throughput [--steps 40] [--batch-size 16]

Measures full optimiser steps (forward, backward, AdamW) on pre-sampled RBF batches, so data
generation is not counted; configs are timed in alternation and the best of the rounds is kept,
because the machine is shared. Prints a table and writes JSON (bench/out/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model.cmanp import CMANP, CMANPConfig, count_parameters
from model.data.gp import GPSampler

CONFIGS = {
    "paper (128 latents)": CMANPConfig(),
    "shipped (64 latents)": CMANPConfig(n_latents=64),
}


def tasks_per_second(cfg: CMANPConfig, batches: list, warmup: int = 5) -> float:
    torch.manual_seed(0)
    net = CMANP(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, fused=True)
    for i, b in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        loss = net.loss(b.xc, b.yc, b.xt, b.yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(b.xc.shape[0] for b in batches[warmup:]) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/out/train_throughput.json"))
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [GPSampler("rbf").sample_protocol(args.batch_size, g) for _ in range(args.steps + 5)]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, cfg in CONFIGS.items():
            best[name] = max(best.get(name, 0.0), tasks_per_second(cfg, batches))
    rows = [
        {
            "config": name,
            "parameters": count_parameters(CMANP(cfg)),
            "batch_size": args.batch_size,
            "tasks_per_s": round(best[name], 1),
            "threads": torch.get_num_threads(),
        }
        for name, cfg in CONFIGS.items()
    ]
    print(f"{'config':<22} {'params':>10} {'batch':>6} {'tasks/s':>9}")
    for r in rows:
        print(f"{r['config']:<22} {r['parameters']:>10,} {r['batch_size']:>6} {r['tasks_per_s']:>9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
