"""Two versions of the service measured side by side: before/after ratios of a change.

    python -m bench.ab_service --before /tmp/before --after . [--after-env PYTHONPATH=/x] [--rounds 4]

Both servers run at once (each started as ``make run`` starts it, from its own checkout, with its
own bundled redis-server); the same scenarios then alternate between them, round after round, so
that the load of a shared machine hits both alike. Reports the median requests/s and p99 of each
side and their ratios (after / before). Writes JSON (default bench/out/ab_service.json).

When: by hand, not from ``python -m bench``, for a change to the service's request path, before it
is merged. Check out the commit before the change beside this one (``git worktree add
/tmp/before <commit>``), run with ``--before /tmp/before --label "<the change>" --out
bench/out/ab_<name>.json``, and ``python -m bench.report`` adds the ratios of every
``ab_*.json`` to bench/RESULTS.md. About 3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import OUT_DIR, write_json
from bench.service_load import (
    EVENT_SCENARIOS,
    SCENARIOS,
    create_sessions,
    run_scenario,
    scenario_loads,
    start_server,
    stop_server,
)


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the old version")
    p.add_argument("--after", type=Path, default=Path("."))
    p.add_argument("--before-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--after-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--label", default="change", help="what differs, for the record")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--sessions", type=int, default=300)
    p.add_argument(
        "--scenarios",
        default="context_spread,predict_spread",
        help=f"a subset of {','.join(n for n in SCENARIOS if n not in EVENT_SCENARIOS)}",
    )
    p.add_argument("--post-connections", type=int, default=16)
    p.add_argument("--predict-connections", type=int, default=8)
    p.add_argument("--out", type=Path, default=OUT_DIR / "ab_service.json")
    args = p.parse_args(argv)
    sides = {"before": (args.before, _env(args.before_env)), "after": (args.after, _env(args.after_env))}
    samples: dict[str, dict[str, list[dict]]] = {s: {n: [] for n in args.scenarios.split(",")} for s in sides}
    with tempfile.TemporaryDirectory(prefix="cmanp-ab-") as tmp:
        servers, ids_files = {}, {}
        try:
            for side, (directory, env) in sides.items():
                data = Path(tmp) / side
                data.mkdir()
                servers[side] = start_server(directory.resolve(), data, data / "server.log", env)
                ids = asyncio.run(create_sessions(servers[side].url, args.sessions))
                # all sessions, the hot one, and event sessions (none: the event scenarios are not offered here)
                ids_files[side] = (data / "ids.txt", data / "hot.txt", data / "events.txt")
                ids_files[side][0].write_text("\n".join(ids) + "\n")
                ids_files[side][1].write_text(ids[0] + "\n")
            for _ in range(args.rounds):
                for name in samples["before"]:
                    for side in sides:
                        loads = scenario_loads(name, *ids_files[side], args.post_connections, args.predict_connections)
                        result = run_scenario(servers[side], name, loads, 1, args.duration)
                        samples[side][name].append(result["loads"][0] | {"cpu_cores": result["cpu_cores"]})
        finally:
            for server in servers.values():
                stop_server(server)
    summary = {}
    for name in samples["before"]:
        row = {}
        for side in sides:
            runs = samples[side][name]
            row[f"{side}_requests_per_s"] = statistics.median(r["requests_per_s"] for r in runs)
            row[f"{side}_p99_ms"] = statistics.median(r["latency_ms"]["p99"] for r in runs)
            row[f"{side}_api_cores"] = statistics.median(r["cpu_cores"]["api"] for r in runs)
        row["throughput_ratio"] = row["after_requests_per_s"] / row["before_requests_per_s"]
        row["p99_ratio"] = row["after_p99_ms"] / row["before_p99_ms"]
        # CPU per request is steadier than throughput on a shared machine.
        row["api_cpu_per_request_ratio"] = (row["after_api_cores"] / row["after_requests_per_s"]) / (
            row["before_api_cores"] / row["before_requests_per_s"]
        )
        summary[name] = row
        print(
            f"{args.label} / {name}: {row['before_requests_per_s']:.0f} -> {row['after_requests_per_s']:.0f} req/s "
            f"(x{row['throughput_ratio']:.2f}), p99 {row['before_p99_ms']:.0f} -> {row['after_p99_ms']:.0f} ms, "
            f"API CPU per request x{row['api_cpu_per_request_ratio']:.2f}"
        )
    result = {
        "command": shlex.join(["python", "-m", "bench.ab_service", *(argv if argv is not None else sys.argv[1:])]),
        "label": args.label,
        "before": str(args.before),
        "after": str(args.after),
        "before_env": args.before_env,
        "after_env": args.after_env,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "summary": summary,
        "samples": samples,
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
