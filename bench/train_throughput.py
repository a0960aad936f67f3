"""Training throughput (tasks/s) on the paper protocol: configs and speed options, in one process.

    python -m bench.train_throughput [--steps 40] [--warmup 30] [--batch-size 16] [--rounds 2] [--threads 2]
        [--options fp32-eager,bf16-eager,bf16-compiled] [--compiled-configs paper]

Each timed step is the one ``model.train`` runs (forward, backward, gradient clipping, AdamW),
on RBF batches of the paper protocol (N ~ U{3..46}, M ~ U{3..49-N}), with the loss of
``model.train.training_loss`` in each option's precision, eager or compiled. Two modes: "model"
steps on pre-sampled batches (data generation excluded); "model+data" samples each batch inside
the timed loop, as training does. Each (config, option) keeps one model for all its timings, so
it compiles once (the warm-up seconds are recorded); configs, options and modes are timed in
alternation and the best round is kept, because the machine may be shared; the load average is
recorded next to the figures. Like ``model.train``, it keeps freed memory in malloc's heap
(``model.allocator``). Prints a table and writes JSON (bench/out/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.allocator import retain_freed_memory
from model.cmanp import CMANP, CMANPConfig, count_parameters
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

    def run(self, next_batch: Callable[[int], GPBatch], steps: int) -> float:
        """Tasks/s over ``steps`` steps; next_batch(i) gives the i-th batch."""
        t0, tasks = time.perf_counter(), 0
        for i in range(steps):
            batch = next_batch(i)
            train_step(self.net, self.opt, batch, grad_clip=1.0, loss_fn=self.loss_fn)
            tasks += batch.xc.shape[0]
        return tasks / (time.perf_counter() - t0)


def sampled_in_loop(sampler: GPSampler, batch_size: int, seed: int = 0) -> Callable[[int], GPBatch]:
    """A batch source that draws each batch when asked, as training does."""
    g = torch.Generator().manual_seed(seed)
    return lambda _: sampler.sample_protocol(batch_size, g)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
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
    g = torch.Generator().manual_seed(0)
    presampled = [sampler.sample_protocol(args.batch_size, g) for _ in range(max(args.warmup, args.steps))]
    modes: dict[str, Callable[[], Callable[[int], GPBatch]]] = {
        "model": lambda: presampled.__getitem__,
        "model+data": lambda: sampled_in_loop(sampler, args.batch_size),
    }
    load_before = os.getloadavg()
    trainers: dict[tuple[str, str], Trainer] = {}
    for name, cfg in CONFIGS.items():
        for option in args.options.split(","):
            precision, compile = OPTIONS[option]
            if compile and not name.startswith(tuple(args.compiled_configs.split(","))):
                continue
            trainer = trainers[name, option] = Trainer(cfg, precision, compile)
            t0 = time.perf_counter()
            trainer.run(presampled.__getitem__, args.warmup)  # includes the compilation
            trainer.warmup_s = time.perf_counter() - t0
    rates: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for (name, option), trainer in trainers.items():
            for mode, make in modes.items():
                rates.setdefault((name, option, mode), []).append(trainer.run(make(), args.steps))
    load_after = os.getloadavg()
    rows = [
        {
            "config": name,
            "precision": OPTIONS[option][0],
            "compiled": OPTIONS[option][1],
            "mode": mode,
            "parameters": count_parameters(trainer.net),
            "batch_size": args.batch_size,
            "tasks_per_s": round(max(rates[name, option, mode]), 1),
            "tasks_per_s_by_round": [round(r, 1) for r in rates[name, option, mode]],
            "warmup_s": round(trainer.warmup_s, 1),
        }
        for (name, option), trainer in trainers.items()
        for mode in modes
    ]
    header = f"{'config':<22} {'precision':<9} {'compiled':<8} {'mode':<11} {'params':>10} {'batch':>6} {'tasks/s':>9}"
    print(header + f" {'warm-up s':>9}")
    for r in rows:
        print(
            f"{r['config']:<22} {r['precision']:<9} {r['compiled']!s:<8} {r['mode']:<11} {r['parameters']:>10,} "
            f"{r['batch_size']:>6} {r['tasks_per_s']:>9.1f} {r['warmup_s']:>9.1f}"
        )
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "malloc_retains_freed_memory": retained,
        "warmup_steps": args.warmup,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
    print(f"threads {machine['threads']}, load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
