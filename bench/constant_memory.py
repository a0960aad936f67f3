"""Peak RSS of conditioning N points with chunking, each N in a fresh process.

    python -m bench.constant_memory --checkpoint checkpoints/cmanp-gp-rbf.safetensors

Prints a table and writes JSON (default bench/out/constant_memory.json). The inputs themselves
(x and y for all N points, 8 bytes per point) are held in memory and counted, as a user of
``net.condition(x, y, chunk_size)`` would hold them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def child(checkpoint: str, n: int, chunk_size: int) -> None:
    import torch

    from model.tiled import load_served

    torch.set_num_threads(1)
    net = load_served(checkpoint)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, n, net.cfg.dim_x, generator=g) * 4 - 2
    y = torch.sin(3 * x[..., :1]).expand(1, n, net.cfg.dim_y).contiguous()
    t0 = time.perf_counter()
    with torch.no_grad():
        state = net.condition(x, y, chunk_size=chunk_size)
        net.predict(state, torch.zeros(1, 10, net.cfg.dim_x))
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(
        json.dumps(
            {
                "n": n,
                "chunk_size": chunk_size,
                "peak_rss_mb": peak_kb / 1024,
                "seconds": seconds,
                "points_per_s": n / seconds,
                "state_bytes": len(state.to_bytes()),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sizes", default="1000,1000000")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("bench/out/constant_memory.json"))
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        return child(args.checkpoint, args.child, args.chunk_size)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [
            sys.executable,
            "-m",
            "bench.constant_memory",
            "--checkpoint",
            args.checkpoint,
            "--chunk-size",
            str(args.chunk_size),
            "--child",
            str(n),
        ]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    base = rows[0]["peak_rss_mb"]
    print(f"{'N':>10} {'chunk':>6} {'peak RSS MB':>12} {'+ over first':>13} {'points/s':>10} {'state bytes':>12}")
    for r in rows:
        r["extra_over_first_mb"] = r["peak_rss_mb"] - base
        print(
            f"{r['n']:>10} {r['chunk_size']:>6} {r['peak_rss_mb']:>12.1f} {r['extra_over_first_mb']:>13.1f} "
            f"{r['points_per_s']:>10.0f} {r['state_bytes']:>12}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
