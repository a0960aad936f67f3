"""Two versions of ``model/`` timed side by side in one process: update and predict latency.

    python -m bench.model_ab --before /tmp/base --after . [--rounds 40] [--checkpoint C]

Both versions are imported into one process (the first one's modules are dropped from
``sys.modules`` before the second is imported; its objects keep working, since each function
holds its own module's globals). Each loads the checkpoint from its own checkout and conditions a
state on N = 1000 points. Then, round after round, in alternating order, each side times a short
block of calls (one torch thread, inference mode):

* ``update``: one single-point ``net.update`` (the service's usual post);
* ``predict fresh m``: ``net.predict`` at m queries on a new state object, which derives the
  latents first;
* ``predict cached m``: the same predict again, which only decodes.

Alternating short blocks within one process lets the load of a shared machine hit both sides
alike; the ratio reported is the median over rounds of after / before within a round (paired),
beside each side's median and minimum over rounds of its per-block medians. Only the public API
(load_checkpoint, condition, update, predict, CMANPState) is used. Writes JSON (default
bench/out/model_ab.json: not ab_*.json, the name ``bench.report`` reads as service runs).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import CHECKPOINT, OUT_DIR, write_json


def import_version(directory: Path) -> Any:
    """The ``model`` package of ``directory``, imported afresh (earlier imports are dropped)."""
    for name in [m for m in sys.modules if m == "model" or m.startswith("model.")]:
        del sys.modules[name]
    sys.path.insert(0, str(directory))
    try:
        package = importlib.import_module("model")
    finally:
        sys.path.remove(str(directory))
    if Path(package.__file__).resolve().parent != (directory / "model").resolve():
        raise RuntimeError(f"imported {package.__file__}, not the model of {directory}")
    return package


def median_us(fn: Callable[[], object], n: int) -> float:
    """The median wall time of ``n`` calls of ``fn``, in microseconds."""

    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return statistics.median(once() for _ in range(n)) * 1e6


class Side:
    """One version's model, state and queries, and its timed calls."""

    def __init__(self, directory: Path, checkpoint: str) -> None:
        package = import_version(directory)
        self.state_cls = package.CMANPState
        self.net = package.load_checkpoint(directory / checkpoint)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 1000, 1, generator=g) * 4 - 2
        y = torch.sin(3 * x) + 0.1 * torch.randn(1, 1000, 1, generator=g)
        self.x1, self.y1 = x[:, :1], y[:, :1]
        self.state = self.net.condition(x, y)
        self.queries = {m: torch.linspace(-2, 2, m).view(1, m, 1) for m in (1, 100)}

    def fresh(self) -> object:
        s = self.state
        return self.state_cls(s.log_norm, s.value_sum, s.num_points, s.fingerprint, s.version)

    def block(self, repeats: int) -> dict[str, float]:
        """Per-metric medians of one block of calls."""
        out = {"update": median_us(lambda: self.net.update(self.state, self.x1, self.y1), repeats)}
        for m, xq in self.queries.items():
            fresh, cached = [], []
            for _ in range(max(repeats // 40, 3)):
                state = self.fresh()
                fresh.append(median_us(lambda s=state, q=xq: self.net.predict(s, q), 1))
                cached.append(median_us(lambda s=state, q=xq: self.net.predict(s, q), 1))
            out[f"predict fresh m={m}"] = statistics.median(fresh)
            out[f"predict cached m={m}"] = statistics.median(cached)
        return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the old version")
    p.add_argument("--after", type=Path, default=Path("."))
    p.add_argument("--checkpoint", default=CHECKPOINT, help="relative to each checkout")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--repeats", type=int, default=200, help="single-point updates per block")
    p.add_argument("--out", type=Path, default=OUT_DIR / "model_ab.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    samples: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with torch.inference_mode():
        sides = {
            "before": Side(args.before.resolve(), args.checkpoint),
            "after": Side(args.after.resolve(), args.checkpoint),
        }
        for side in sides.values():
            side.block(50)  # warm up: weight caches, allocator
        for r in range(args.rounds):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                samples[name].append(sides[name].block(args.repeats))
    table = {}
    for metric in samples["before"][0]:
        before = [row[metric] for row in samples["before"]]
        after = [row[metric] for row in samples["after"]]
        table[metric] = {
            "before_median_us": statistics.median(before),
            "after_median_us": statistics.median(after),
            "before_min_us": min(before),
            "after_min_us": min(after),
            "paired_ratio": statistics.median(a / b for a, b in zip(after, before, strict=True)),
        }
    print(
        f"{'metric':<20} {'before us':>10} {'after us':>10} {'min before':>11} {'min after':>10} {'after/before':>13}"
    )
    for metric, row in table.items():
        print(
            f"{metric:<20} {row['before_median_us']:>10.1f} {row['after_median_us']:>10.1f} "
            f"{row['before_min_us']:>11.1f} {row['after_min_us']:>10.1f} {row['paired_ratio']:>13.3f}"
        )
    checkouts = {"before": str(args.before.resolve()), "after": str(args.after.resolve())}
    result = {**checkouts, "rounds": args.rounds, "repeats": args.repeats, "table": table, "samples": samples}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
