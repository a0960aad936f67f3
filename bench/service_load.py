"""The service under load: context posts/s and predicts/s with latency percentiles, driven by wrk.

    python -m bench.service_load [--quick] [--sessions 10000] [--duration 15] [--scenarios context_hot,predict_hot]

The server is started exactly as ``make run`` starts it: ``python -m service`` with the default
settings, so with the bundled redis-server and its append-only file on (data in a temporary
directory, on a free port). Sessions are created and seeded through the HTTP API. Then wrk
(``bench/wrk/sessions.lua``) runs each scenario on the same machine:

* ``context_spread`` / ``predict_spread``: single-point context posts / predicts of 100 targets,
  each to a session drawn at random from all sessions;
* ``context_hot``: every connection posts to one session (concurrent writers);
* ``predict_hot``: predicts on one session while another wrk posts to it;
* ``events_spread`` / ``forecast_spread``: single-event posts / next-event forecasts (three
  quantiles), each to an event session drawn at random from as many event sessions, created with
  the first event model the server lists (skipped, with a note, when it serves none).

For each scenario: requests/s, p50/p95/p99 latency, errors (non-2xx included), and the CPU
seconds used by the API (summed over its processes: the server and its uvicorn workers),
redis-server, wrk and everything else on the machine (from /proc), and the forks of redis-server
(AOF rewrites, whose child takes a core for seconds). Redis bytes per session:
``used_memory`` growth over the session creation, and ``MEMORY USAGE`` of one seeded session's
keys. Writes JSON (default bench/out/service_load.json).

``--server-dir`` runs the server from another checkout (e.g. a worktree of an older commit), so
that two versions can be measured back to back with the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.common import OUT_DIR, redis_forks, write_json
from service.client import AsyncCMANPClient, CMANPError
from tools.service_process import ServiceProcess

LUA = Path(__file__).parent / "wrk" / "sessions.lua"
SEED_POINTS = 20  # points each session starts with, posted in one request
CREATE_ATTEMPTS = 5
TARGETS = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and everything under it now (a server and its worker processes)."""
    return sum(map(cpu_seconds, [pid, *descendants(pid)]))


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle, summed over all cores, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (a worker starts its fold process from a thread of its own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return found


@dataclass
class Server:
    service: ServiceProcess
    redis_pid: int
    redis_port: int

    @property
    def process(self) -> subprocess.Popen:
        assert self.service.process is not None
        return self.service.process

    @property
    def url(self) -> str:
        return self.service.url


def passed_settings() -> str:
    """The ``CMANP_*`` settings this environment passes on to the server (e.g. ``CMANP_WORKERS=1 ``)."""
    passed = sorted((k, v) for k, v in os.environ.items() if k.startswith("CMANP_") and k != "CMANP_REDIS_URL")
    return "".join(f"{k}={v} " for k, v in passed)


def start_server(server_dir: Path, data_dir: Path, log_path: Path, env: dict[str, str]) -> Server:
    """``python -m service`` as ``make run`` runs it; only the port and the data directory differ."""
    environment = {**os.environ, "CMANP_REDIS_DATA_DIR": str(data_dir / "redis"), **env}
    environment.pop("CMANP_REDIS_URL", None)  # the bundled redis-server, as make run uses
    service = ServiceProcess(environment, log_path, cwd=server_dir).start()
    redis_pid = next(p for p in descendants(service.process.pid) if b"redis-server" in _cmdline(p))
    # redis-server sets its process title to "redis-server 127.0.0.1:PORT"
    redis_port = int(re.search(rb"127\.0\.0\.1:(\d+)", _cmdline(redis_pid)).group(1))  # type: ignore[union-attr]
    return Server(service, redis_pid, redis_port)


def descendants(pid: int, skip: int | None = None) -> list[int]:
    """Every process under ``pid`` (children, their children, ...), without ``skip`` and its subtree."""
    found = []
    for child in children(pid):
        if child != skip:
            found += [child, *descendants(child, skip)]
    return found


def api_pids(server: Server) -> list[int]:
    """The API's processes: the server and everything under it but redis-server and its forks (its
    uvicorn workers with several workers, and their fold processes). A short-lived redis fork (an AOF
    rewrite) would vanish before the CPU could be read again."""
    return [server.process.pid, *descendants(server.process.pid, skip=server.redis_pid)]


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def stop_server(server: Server) -> None:
    server.service.close()  # uvicorn shuts down; the lifespan stops the bundled redis-server


async def create_sessions(url: str, count: int, events_model: str | None = None, concurrency: int = 32) -> list[str]:
    """Create ``count`` sessions, each seeded in one post with SEED_POINTS points (regression) or,
    with ``events_model``, SEED_POINTS events a second apart ending a minute ago (clock: seconds
    since an hour ago). The client retries a seed post exactly once by its Idempotency-Key; a
    retried create at worst leaves an unused session behind."""
    ids: list[str] = []
    todo = list(range(count))
    xs = [-2 + 4 * (j + 0.5) / SEED_POINTS for j in range(SEED_POINTS)]
    origin = time.time() - 3600
    seed_times = [float(int(origin) + 3540 - SEED_POINTS + j) for j in range(SEED_POINTS)]
    async with AsyncCMANPClient(url, timeout=60) as client:

        async def create() -> str:
            for attempt in range(CREATE_ATTEMPTS):
                try:
                    if events_model is None:
                        return (await client.create_session()).session_id
                    return (await client.create_session(events_model, time_origin=origin)).session_id
                except (CMANPError, httpx.TransportError):
                    if attempt == CREATE_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.1 * 2**attempt)
            raise AssertionError("unreachable")

        async def worker() -> None:
            while todo:
                i = todo.pop()
                sid = await create()
                if events_model is None:
                    await client.add_context(sid, xs, [(i % 7) / 7 + x / 4 for x in xs])
                else:
                    await client.add_events(sid, seed_times, [(i + j) % 3 for j in range(SEED_POINTS)])
                ids.append(sid)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


async def event_model(url: str) -> str | None:
    """The first event model the server lists, if any."""
    async with AsyncCMANPClient(url, timeout=60) as client:
        return next((m.name for m in await client.models() if m.session_kind == "events"), None)


def redis_bytes_per_session(server: Server, session_id: str) -> int:
    client = redis.Redis(port=server.redis_port)
    try:
        return sum(int(client.memory_usage(k) or 0) for k in client.keys(f"cmanp:{{{session_id}}}:*"))
    finally:
        client.close()


def redis_info(server: Server) -> dict:
    client = redis.Redis(port=server.redis_port)
    try:
        return client.info()
    finally:
        client.close()


def redis_used_memory(server: Server) -> int:
    return int(redis_info(server)["used_memory"])


def wrk_command(url: str, mode: str, ids_file: Path, connections: int, threads: int, duration: float) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        mode,
        str(ids_file),
        str(TARGETS),
        f"r{time.time_ns()}-{mode}",
    ]


def _parse_wrk(stdout: str) -> dict:
    line = next((line for line in stdout.splitlines() if line.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{stdout}")
    result = json.loads(line.removeprefix("WRK_JSON "))
    seconds = result["duration_us"] / 1e6
    errors = sum(result["errors"].values())
    result["requests_per_s"] = (result["requests"] - result["errors"]["status"]) / seconds
    # A 409 is an event post that lost a race to a later one on its session (see sessions.lua): the
    # service refusing out-of-order events as it must, not a failure; it is not counted as served.
    result["error_count"] = errors - result["conflicts"]
    result["latency_ms"] = {k: v / 1000 for k, v in result.pop("latency_us").items()}
    return result


def run_scenario(server: Server, name: str, loads: list[tuple[str, Path, int]], threads: int, duration: float) -> dict:
    """Run one wrk per load (mode, ids file, connections) at the same time; measure CPU per process
    (the API's: summed over its processes)."""
    pids = {"api": api_pids(server), "redis": [server.redis_pid]}
    # An AOF rewrite forks redis-server; its child takes CPU from everything else for seconds.
    redis_before = redis_info(server)
    before = {k: sum(map(cpu_seconds, p)) for k, p in pids.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, t0 = machine_busy_seconds(), time.monotonic()
    procs = [
        subprocess.Popen(
            wrk_command(server.url, mode, ids, connections, threads, duration), stdout=subprocess.PIPE, text=True
        )
        for mode, ids, connections in loads
    ]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.monotonic() - t0
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {k: sum(map(cpu_seconds, p)) - before[k] for k, p in pids.items()}
    cpu["wrk"] = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    cpu["other"] = max(0.0, machine_busy_seconds() - busy_before - sum(cpu.values()))
    results = [
        _parse_wrk(out) | {"mode": mode, "connections": c} for out, (mode, _, c) in zip(outputs, loads, strict=True)
    ]
    return {
        "scenario": name,
        "loads": results,
        "wall_s": wall,
        "api_processes": len(pids["api"]),
        "cpu_cores": {k: v / wall for k, v in cpu.items()},  # average cores busy during the run
        "redis_forks": redis_info(server)["total_forks"] - redis_before["total_forks"],
        "aof_rewrite_running_at_start": bool(redis_before["aof_rewrite_in_progress"]),
    }


SCENARIOS = ("context_spread", "context_hot", "predict_spread", "predict_hot", "events_spread", "forecast_spread")
EVENT_SCENARIOS = ("events_spread", "forecast_spread")


def scenario_loads(
    name: str, all_ids: Path, hot: Path, event_ids: Path, post_connections: int, predict_connections: int
) -> list[tuple[str, Path, int]]:
    """The wrk loads (mode, ids file, connections) of a scenario; the first is the one it is named after."""
    return {
        "events_spread": [("events", event_ids, post_connections)],
        "forecast_spread": [("forecast", event_ids, predict_connections)],
        "context_spread": [("context", all_ids, post_connections)],
        "context_hot": [("context", hot, post_connections)],
        "predict_spread": [("predict", all_ids, predict_connections)],
        "predict_hot": [("predict", hot, predict_connections), ("context", hot, max(1, post_connections // 4))],
    }[name]


def run(
    sessions: int,
    duration: float,
    threads: int,
    post_connections: int,
    predict_connections: int,
    server_dir: Path,
    only: tuple[str, ...] = SCENARIOS,
) -> dict:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make bench-setup` (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="cmanp-bench-") as tmp:
        data = Path(tmp)
        # make run's settings, but room for every benchmark session: without API keys all callers are
        # one tenant, and the default quota (1,000 live sessions per tenant) would refuse the rest.
        quota = {"CMANP_MAX_SESSIONS_PER_TENANT": str(2 * sessions + 1000)}  # regression and event sessions
        server = start_server(server_dir.resolve(), data, data / "server.log", env=quota)
        try:
            memory_before = redis_used_memory(server)
            t0 = time.perf_counter()
            ids = asyncio.run(create_sessions(server.url, sessions))
            setup_s = time.perf_counter() - t0
            per_session_used = (redis_used_memory(server) - memory_before) / sessions
            per_session_keys = redis_bytes_per_session(server, ids[0])
            all_ids, hot, event_ids = data / "all.txt", data / "hot.txt", data / "events.txt"
            all_ids.write_text("\n".join(ids[1:]) + "\n")
            hot.write_text(ids[0] + "\n")
            events_model = asyncio.run(event_model(server.url)) if set(only) & set(EVENT_SCENARIOS) else None
            if events_model is None:
                only = tuple(name for name in only if name not in EVENT_SCENARIOS)
            else:
                event_ids.write_text("\n".join(asyncio.run(create_sessions(server.url, sessions, events_model))) + "\n")
            scenarios = [
                run_scenario(
                    server,
                    name,
                    scenario_loads(name, all_ids, hot, event_ids, post_connections, predict_connections),
                    threads,
                    duration,
                )
                for name in SCENARIOS
                if name in only
            ]
        except BaseException:
            shutil.copy(data / "server.log", OUT_DIR / "service_load_server.log")  # for the post-mortem
            print(f"the server's log is in {OUT_DIR / 'service_load_server.log'}", file=sys.stderr)
            raise
        finally:
            stop_server(server)
    return {
        "server_command": f"{passed_settings()}CMANP_MAX_SESSIONS_PER_TENANT={2 * sessions + 1000} "
        f"{Path(sys.executable).name} -m service "
        f"(cwd {server_dir}), bundled redis-server, AOF on",
        "sessions": sessions,
        "seed_points_per_session": SEED_POINTS,
        "events_model": events_model,
        "targets_per_predict": TARGETS,
        "duration_s": duration,
        "wrk_threads": threads,
        "session_setup_s": setup_s,
        "redis_bytes_per_session_used_memory": per_session_used,
        "redis_bytes_per_session_memory_usage": per_session_keys,
        "scenarios": scenarios,
    }


def report(result: dict) -> None:
    print(
        f"{result['sessions']} sessions; Redis bytes/session: {result['redis_bytes_per_session_used_memory']:.0f} "
        f"(used_memory), {result['redis_bytes_per_session_memory_usage']} (MEMORY USAGE of one session)"
    )
    header = ("scenario", "load", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")
    print("{:<15} {:<8} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6}".format(*header))
    for s in result["scenarios"]:
        for load in s["loads"]:
            lat = load["latency_ms"]
            print(
                f"{s['scenario']:<15} {load['mode']:<8} {load['connections']:>5} {load['requests_per_s']:>8.0f} "
                f"{lat['p50']:>7.1f} {lat['p95']:>7.1f} {lat['p99']:>7.1f} {load['error_count']:>6}"
                + (f" (+{load['conflicts']} out-of-order 409s)" if load["conflicts"] else "")
            )
        cores = ", ".join(f"{k} {v:.2f}" for k, v in s["cpu_cores"].items())
        print(f"    cores busy: {cores} (API: {s['api_processes']} processes); Redis forks: {redis_forks(s)}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="few sessions, short runs: checks the harness")
    p.add_argument("--sessions", type=int, default=None, help="default 10000 (quick: 100)")
    p.add_argument("--duration", type=float, default=None, help="seconds per scenario (default 15, quick 2)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--post-connections", type=int, default=16)
    p.add_argument("--predict-connections", type=int, default=8)
    p.add_argument("--server-dir", type=Path, default=Path("."))
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default all)",
    )
    p.add_argument("--out", type=Path, default=OUT_DIR / "service_load.json")
    args = p.parse_args(argv)
    sessions = args.sessions or (100 if args.quick else 10_000)
    duration = args.duration or (2.0 if args.quick else 15.0)
    only = tuple(args.scenarios.split(","))
    if unknown := set(only) - set(SCENARIOS):
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    result = run(
        sessions, duration, args.threads, args.post_connections, args.predict_connections, args.server_dir, only
    )
    report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
