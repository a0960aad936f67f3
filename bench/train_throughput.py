"""Training throughput (tasks/s) on the paper protocol: configs and speed options, in one process.

    python -m bench.train_throughput [--steps 40] [--warmup 30] [--batch-size 16] [--rounds 4] [--threads 2]
        [--options fp32-eager,bf16-eager,bf16-compiled] [--compiled-configs paper]

Each timed step is the one ``model.train`` runs: sample an RBF batch of the paper protocol
(N ~ U{3..46}, M ~ U{3..49-N}) inside the timed loop, then forward, backward, gradient clipping
and AdamW, with the loss of ``model.train.training_loss`` in each option's precision, eager or
compiled. The sampling alone is timed too, and reported in ms per batch. Each (config, option)
keeps one model for all its timings, so it compiles once (the warm-up seconds are recorded);
configs and options are timed in alternation, round after round, because the machine may be
shared: every round is kept, with the best and the median; the load average is recorded next
to the figures. Like ``model.train``, it keeps freed memory in malloc's heap
(``model.allocator``). Prints a table and writes JSON (bench/out/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.allocator import retain_freed_memory
from model.blocks import count_parameters
from model.cmanp import CMANP, CMANPConfig
from model.data.gp import GPBatch, GPSampler
from model.train import train_step, training_loss

CONFIGS = {
    "paper (128 latents)": CMANPConfig(),
    "shipped (64 latents)": CMANPConfig(n_latents=64),
}
OPTIONS = {"fp32-eager": ("fp32", False), "bf16-eager": ("bf16", False), "bf16-compiled": ("bf16", True)}


class Trainer:
    """One model, optimiser and loss in one speed option; ``run`` times training steps."""

    def __init__(self, cfg: CMANPConfig, precision: str, compile: bool) -> None:
        torch.manual_seed(0)
        self.net = CMANP(cfg)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=5e-4, fused=True)
        self.loss_fn = training_loss(self.net, precision, compile)
        self.warmup_s = 0.0

    def run(self, next_batch: Callable[[], GPBatch], steps: int) -> float:
        """Tasks/s over ``steps`` steps, each on the batch next_batch() gives."""
        t0, tasks = time.perf_counter(), 0
        for _ in range(steps):
            batch = next_batch()
            train_step(self.net, self.opt, batch, grad_clip=1.0, loss_fn=self.loss_fn)
            tasks += batch.xc.shape[0]
        return tasks / (time.perf_counter() - t0)


def sampled_in_loop(sampler: GPSampler, batch_size: int, seed: int = 0) -> Callable[[], GPBatch]:
    """A batch source that draws each batch when asked, as training does. The same seed gives
    the same batches (so the same shapes) to every config and option."""
    g = torch.Generator().manual_seed(seed)
    return lambda: sampler.sample_protocol(batch_size, g)


def sampling_ms_per_batch(sampler: GPSampler, batch_size: int, batches: int = 200) -> float:
    """Wall time of drawing one batch alone, in ms (it is inside every timed step too)."""
    next_batch = sampled_in_loop(sampler, batch_size, seed=1)
    t0 = time.perf_counter()
    for _ in range(batches):
        next_batch()
    return (time.perf_counter() - t0) / batches * 1e3


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    # Untimed steps first: the compilation, and enough batches to meet most context and target sizes
    # once (oneDNN builds a kernel per new matmul shape), as a long training run has long since done.
    p.add_argument("--warmup", type=int, default=30, help="untimed steps per (config, option) first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("bench/out/train_throughput.json"))
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, of {', '.join(OPTIONS)}")
    p.add_argument("--compiled-configs", default="paper", help="configs (name prefixes) that run the compiled options")
    args = p.parse_args()
    retained = retain_freed_memory()  # as model.train does
    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = GPSampler("rbf")
    load_before = os.getloadavg()
    trainers: dict[tuple[str, str], Trainer] = {}
    for name, cfg in CONFIGS.items():
        for option in args.options.split(","):
            precision, compile = OPTIONS[option]
            if compile and not name.startswith(tuple(args.compiled_configs.split(","))):
                continue
            trainer = trainers[name, option] = Trainer(cfg, precision, compile)
            t0 = time.perf_counter()
            trainer.run(sampled_in_loop(sampler, args.batch_size), args.warmup)  # includes the compilation
            trainer.warmup_s = time.perf_counter() - t0
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for key, trainer in trainers.items():
            rates.setdefault(key, []).append(trainer.run(sampled_in_loop(sampler, args.batch_size), args.steps))
    sampling_ms = sampling_ms_per_batch(sampler, args.batch_size)
    load_after = os.getloadavg()
    rows = [
        {
            "config": name,
            "precision": OPTIONS[option][0],
            "compiled": OPTIONS[option][1],
            "parameters": count_parameters(trainer.net),
            "batch_size": args.batch_size,
            "tasks_per_s": round(max(rates[name, option]), 1),
            "tasks_per_s_median": round(statistics.median(rates[name, option]), 1),
            "tasks_per_s_by_round": [round(r, 1) for r in rates[name, option]],
            "warmup_s": round(trainer.warmup_s, 1),
        }
        for (name, option), trainer in trainers.items()
    ]
    header = f"{'config':<22} {'precision':<9} {'compiled':<8} {'params':>10} {'batch':>6} {'best':>7} {'median':>7}"
    print(header + f" {'warm-up s':>9}  tasks/s by round")
    for r in rows:
        print(
            f"{r['config']:<22} {r['precision']:<9} {r['compiled']!s:<8} {r['parameters']:>10,} {r['batch_size']:>6} "
            f"{r['tasks_per_s']:>7.1f} {r['tasks_per_s_median']:>7.1f} {r['warmup_s']:>9.1f}  "
            f"{r['tasks_per_s_by_round']}"
        )
    print(f"GP sampling alone: {sampling_ms:.2f} ms per batch of {args.batch_size} (inside every timed step)")
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "malloc_retains_freed_memory": retained,
        "warmup_steps": args.warmup,
        "gp_sampling_ms_per_batch": round(sampling_ms, 3),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
    print(f"threads {machine['threads']}, load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
