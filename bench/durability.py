"""What ``appendfsync always`` costs against ``everysec`` and ``no``, and how much memory a session takes.

    python -m bench.durability --checkpoint checkpoints/cmanp-gp-rbf.safetensors

For each fsync mode, on a fresh bundled redis-server (data in a temporary directory):
- ``store``: concurrent single-point appends straight through ``SessionStore.append`` (the Lua
  script that every context post runs), so Redis and its fsyncs are the only cost;
- ``http``: ``python -m service`` on that Redis, and concurrent clients posting single points with
  Idempotency-Keys over HTTP: what a user sees.
Then the Redis memory of sessions of the checkpoint's model (``MEMORY USAGE`` of every key, after
0, 1, 255 and 2,000 points posted one by one with keys; and ``used_memory`` per session over many
sessions), for Redis Cluster sizing. Prints a table and writes JSON (default
bench/out/durability.json). Figures depend on the disk's fsync latency and on the CPU: say which
machine they come from.

When: by hand, not from ``python -m bench``, because its figures are the disk's more than the
code's. Run it when the store's write path (``service/store.py``'s scripts), the fsync settings or
the session's Redis layout change, and update the tables of docs/OPERATIONS.md ("Durability
modes", Redis Cluster sizing) that quote it. A few minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from service.app import connect_redis
from service.embedded_redis import EmbeddedRedis
from service.store import Session, SessionStore, session_keys
from tools.service_process import ServiceProcess, service_env

MODES = ("always", "everysec", "no")
MEMORY_POINTS = 2_000  # several folds (every 256 points) and a full ring of remembered keys (128)


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


async def store_appends(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    client = connect_redis(url, timeout=5)
    store = SessionStore(client, fold_threshold=1 << 40, max_points_per_request=1, idempotency_keys=128)
    session = Session(
        "bench", tenant="", model="m", fingerprint="f", kind="bench", params={}, created_at=0.0, ttl_seconds=3600
    )
    await store.create(session, b"state")
    entry = np.zeros(2, dtype="<f4").tobytes()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await store.append(session, entry, 1, f"{w}-{n}", compute=None)  # no folds: huge threshold
            latencies.append(time.perf_counter() - t0)
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return {"posts_per_s": len(latencies) / elapsed, **percentiles(latencies)}


def http_posts(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    session_id = httpx.post(f"{url}/v1/sessions", json={}).json()["session_id"]
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(w: int) -> None:
        rng = np.random.default_rng(w)
        with httpx.Client(base_url=url, timeout=30) as http:
            n = 0
            while time.perf_counter() < deadline:
                body = {"x": [[float(rng.uniform(-2, 2))]], "y": [[float(rng.normal())]]}
                t0 = time.perf_counter()
                response = http.post(
                    f"/v1/sessions/{session_id}/context", json=body, headers={"Idempotency-Key": f"{w}-{n}"}
                )
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)
                n += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"posts_per_s": len(latencies) / (time.perf_counter() - t0), **percentiles(latencies)}


def fsync_latency(directory: Path, writes: int = 200) -> dict[str, float]:
    """The disk's cost per appended record with fdatasync (what ``always`` pays once per event-loop turn)."""
    latencies = []
    with open(directory / "fsync-probe", "ab") as f:
        for _ in range(writes):
            t0 = time.perf_counter()
            f.write(b"x" * 200)
            f.flush()
            os.fdatasync(f.fileno())
            latencies.append(time.perf_counter() - t0)
    return percentiles(latencies)


def session_bytes(raw: redis.Redis, session_id: str) -> int:
    return sum(raw.memory_usage(key, samples=0) or 0 for key in session_keys(session_id))


def memory(url: str, raw: redis.Redis, sessions: int) -> dict[str, object]:
    """MEMORY USAGE of one session as points arrive one per post, each with a key; used_memory per session."""
    per_points: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        session_id = http.post("/v1/sessions", json={}).json()["session_id"]
        rng = np.random.default_rng(0)
        for n in range(1, MEMORY_POINTS + 1):
            if n - 1 in (0, 1, 255):
                per_points[n - 1] = session_bytes(raw, session_id)
            body = {"x": [[float(rng.uniform(-2, 2))]], "y": [[float(rng.normal())]]}
            http.post(f"/v1/sessions/{session_id}/context", json=body, headers={"Idempotency-Key": str(n)})
        per_points[MEMORY_POINTS] = session_bytes(raw, session_id)
        before = raw.info("memory")["used_memory"]
        for _ in range(sessions):
            new = http.post("/v1/sessions", json={}).json()["session_id"]
            http.post(
                f"/v1/sessions/{new}/context", json={"x": [[0.0]], "y": [[0.0]]}, headers={"Idempotency-Key": "k"}
            )
        used = (raw.info("memory")["used_memory"] - before) / sessions
    return {"memory_usage_bytes_by_points": per_points, "used_memory_per_session_bytes": used}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/cmanp-gp-rbf.safetensors"))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--store-concurrency", type=int, default=32)
    p.add_argument("--http-concurrency", type=int, default=8)
    p.add_argument("--sessions", type=int, default=200, help="sessions created for used_memory per session")
    p.add_argument("--out", type=Path, default=Path("bench/out/durability.json"))
    args = p.parse_args()

    env_options = {"default_model": args.checkpoint.stem, "log_level": "warning"}
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["fdatasync"] = fsync_latency(Path(tmp))
        print(f"fdatasync of a 200-byte append: {results['fdatasync']['p50_ms']:.3f} ms p50")
        for mode in MODES:
            server = EmbeddedRedis(Path(tmp) / mode, options={"appendfsync": mode})
            server.start()
            api = ServiceProcess(
                service_env(args.checkpoint.parent, redis_url=server.url, **env_options), Path(tmp) / "api.log"
            )
            try:
                store = asyncio.run(store_appends(server.url, args.seconds, args.store_concurrency))
                api.start()
                http = http_posts(api.url, args.seconds, args.http_concurrency)
                results[mode] = {"store": store, "http": http}
                for name, figures in (("store", store), ("http", http)):
                    print(
                        f"{mode:9s} {name:5s} {figures['posts_per_s']:7.0f} posts/s  {figures['p50_ms']:6.2f} ms p50  "
                        f"{figures['p99_ms']:7.2f} ms p99"
                    )
                if mode == "always":
                    with redis.Redis.from_url(server.url) as raw:
                        results["memory"] = memory(api.url, raw, args.sessions)
                    print(json.dumps(results["memory"]))
            finally:
                api.stop()
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
