"""What durable acknowledgements cost: context-post latency with ``CMANP_REDIS_WAIT_REPLICAS=1``
against 0, at a fixed rate.

    nice -n 10 python -m bench.replication_wait [--rate 25] [--seconds 8] [--rounds 4] [--quick]

A bundled redis-server (``appendfsync always``, as ``make run`` starts it) with one replica (a
second bundled redis-server, ``REPLICAOF``), both on this machine. Two measurements, each
alternating the two settings round by round so that both see the same background load:

- ``store``: ``SessionStore.append`` (the Lua script of every context post, then WAIT on the same
  connection where it is on), single-point appends with a key each, spread over 100 sessions;
- ``store_serial``: the same appends one at a time, each after the previous answered: the cost of
  one append and its WAIT, free of the queueing that a busy machine adds to the open loop;
- ``http``: two ``python -m service`` processes on that Redis, one with WAIT and one without;
  single-point posts with an Idempotency-Key each over HTTP, spread over 100 sessions.

The load is open loop: post ``i`` is sent at ``start + i / rate`` whatever the earlier ones did,
and its latency counts from that moment (a server that falls behind shows as latency, not as a
lower rate). Prints a table and writes JSON (default bench/out/replication_wait.json). A replica
on another machine adds the network round trip to every WAIT; measure on yours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import redis

from bench.common import OUT_DIR, write_json
from service.app import connect_redis
from service.embedded_redis import EmbeddedRedis
from service.store import Session, SessionStore
from tools.service_process import ServiceProcess, service_env

SESSIONS = 100
MODES = {"no WAIT": 0, "WAIT 1 replica": 1}
WAIT_TIMEOUT_MS = 1_000
ENTRY = np.zeros(2, dtype="<f4").tobytes()  # one (x, y) point


async def open_loop(post: Callable[[int], Awaitable[None]], rate: float, seconds: float) -> list[float]:
    """Call ``post(i)`` at ``start + i / rate`` for ``seconds``; each call's latency from its scheduled time."""
    latencies: list[float] = []
    start = time.perf_counter()

    async def timed(i: int, due: float) -> None:
        await post(i)
        latencies.append(time.perf_counter() - due)

    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(timed(i, due)))
    await asyncio.gather(*tasks)
    return latencies


def summary(latencies: list[float], rate: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {
        "rate_per_s": rate,
        "posts": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


async def one_at_a_time(post: Callable[[int], Awaitable[None]], count: int) -> list[float]:
    """``count`` calls of ``post``, each after the previous one answered: what one call costs,
    without the queueing that an open loop on a busy machine adds."""
    latencies = []
    for i in range(count):
        t0 = time.perf_counter()
        await post(i)
        latencies.append(time.perf_counter() - t0)
    return latencies


async def store_round(
    url: str, wait_replicas: int, rate: float, seconds: float, tag: str, serial: int = 0
) -> tuple[list[float], list[float]]:
    """Open-loop appends at ``rate`` for ``seconds``, then ``serial`` appends one at a time."""
    client = connect_redis(url, timeout=5)
    store = SessionStore(
        client,
        fold_threshold=1 << 40,  # no folds: the append and its WAIT only
        max_points_per_request=1,
        idempotency_keys=128,
        wait_replicas=wait_replicas,
        wait_timeout_ms=WAIT_TIMEOUT_MS,
    )
    sessions = []
    for s in range(SESSIONS):
        session = Session(f"{tag}-{s}", "", "m", "f", "bench", {}, created_at=0.0, ttl_seconds=3600)
        sessions.append(await store.create(session, b"state"))

    async def post(i: int) -> None:
        await store.append(sessions[i % SESSIONS], ENTRY, 1, f"{tag}-{i}", compute=None)  # type: ignore[arg-type]

    try:
        loop = await open_loop(post, rate, seconds)
        return loop, await one_at_a_time(lambda i: post(len(loop) + i), serial)
    finally:
        await client.aclose()


async def http_round(url: str, rate: float, seconds: float, tag: str) -> list[float]:
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout, so that no post
    # races the server closing its connection.
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_connections=64, keepalive_expiry=2.0)
    ) as http:
        sessions = [(await http.post("/v1/sessions", json={})).json()["session_id"] for _ in range(SESSIONS)]
        rng = np.random.default_rng(0)
        bodies = [{"x": [[float(rng.uniform(-2, 2))]], "y": [[float(rng.normal())]]} for _ in range(64)]

        async def post(i: int) -> None:
            response = await http.post(
                f"/v1/sessions/{sessions[i % SESSIONS]}/context",
                json=bodies[i % len(bodies)],
                headers={"Idempotency-Key": f"{tag}-{i}"},
            )
            response.raise_for_status()

        return await open_loop(post, rate, seconds)


def replica_of(master: EmbeddedRedis, data_dir: Path) -> EmbeddedRedis:
    replica = EmbeddedRedis(data_dir)
    replica.start()
    with redis.Redis(port=replica.port) as client:
        client.replicaof("127.0.0.1", master.port)
        while client.info("replication").get("master_link_status") != "up":
            time.sleep(0.05)
    return replica


def run(checkpoint: Path, rate: float, seconds: float, rounds: int) -> dict:
    paths = ("store", "store_serial", "http")
    latencies: dict[str, dict[str, list[float]]] = {path: {m: [] for m in MODES} for path in paths}
    with tempfile.TemporaryDirectory() as tmp:
        master = EmbeddedRedis(Path(tmp) / "master", options={"appendfsync": "always"})
        master.start()
        replica = replica_of(master, Path(tmp) / "replica")
        env = {"default_model": checkpoint.stem, "redis_url": master.url, "redis_wait_timeout_ms": WAIT_TIMEOUT_MS}
        apis = {
            mode: ServiceProcess(
                service_env(checkpoint.parent, **env, redis_wait_replicas=n), Path(tmp) / f"api-{n}.log"
            )
            for mode, n in MODES.items()
        }
        try:
            for api in apis.values():
                api.start()
            for r in range(rounds):
                for mode, n in MODES.items():
                    tag = f"{r}-{n}"
                    loop, serial = asyncio.run(store_round(master.url, n, rate, seconds, tag, int(rate * seconds)))
                    latencies["store"][mode] += loop
                    latencies["store_serial"][mode] += serial
                    latencies["http"][mode] += asyncio.run(http_round(apis[mode].url, rate, seconds, tag))
                    print(f"round {r + 1}/{rounds} {mode}: done", flush=True)
        finally:
            for api in apis.values():
                api.stop()
            replica.stop()
            master.stop()
    return {
        "rate_per_s": rate,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "wait_timeout_ms": WAIT_TIMEOUT_MS,
        "results": {
            path: {mode: summary(values, rate) for mode, values in by_mode.items()}
            for path, by_mode in latencies.items()
        },
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/cmanp-gp-rbf.safetensors"))
    p.add_argument("--rate", type=float, default=25.0, help="posts per second, open loop")
    p.add_argument("--seconds", type=float, default=8.0, help="per round and setting")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="one short round: checks the harness, not the numbers")
    p.add_argument("--out", type=Path, default=OUT_DIR / "replication_wait.json")
    args = p.parse_args(argv)
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    result = run(args.checkpoint, args.rate, seconds, rounds)
    for path, by_mode in result["results"].items():
        for mode, s in by_mode.items():
            print(f"{path:12s} {mode:15s} {s['posts']:6d} posts  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:7.2f} ms")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
