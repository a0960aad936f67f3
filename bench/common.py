"""What every benchmark shares: the default checkpoint, common flags, JSON output, the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

CHECKPOINT = (
    "checkpoints/cmanp-gp-rbf.safetensors"  # the paper model: cost benchmarks (same architecture as the default)
)
GENERAL_CHECKPOINT = "checkpoints/cmanp-gp-general.safetensors"  # the default model: quality benchmarks
EVENT_CHECKPOINT = "checkpoints/cmhp-hawkes-exp.safetensors"  # the event model (CMHP): its cost benchmark
OUT_DIR = Path("bench/out")


def checkpoint_cli(
    name: str,
    doc: str | None,
    run: Callable[[str, bool], dict],
    report: Callable[[dict], None],
    argv: list[str] | None,
) -> dict:
    """The command line of a benchmark of one checkpoint: ``--checkpoint``, ``--quick``, ``--out``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=CHECKPOINT)
    p.add_argument("--quick", action="store_true", help="small sizes, for CI: checks the harness, not the numbers")
    p.add_argument("--out", type=Path, default=OUT_DIR / f"{name}.json")
    args = p.parse_args(argv)
    result = run(args.checkpoint, args.quick)
    report(result)
    write_json(args.out, result)
    return result


def write_json(path: Path, result: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


def machine() -> dict:
    """CPU model and count (from /proc/cpuinfo), memory, and library versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


def redis_forks(scenario: dict) -> str:
    """Forks of redis-server (AOF rewrites) during a scenario, and one still running from before."""
    running = " + 1 running at the start" if scenario.get("aof_rewrite_running_at_start") else ""
    return f"{scenario.get('redis_forks', '?')}{running}"
