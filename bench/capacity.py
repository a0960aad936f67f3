"""Redis memory of many sessions, a mix of small and large, for sizing (docs/OPERATIONS.md).

    nice -n 10 python -m bench.capacity [--sessions 100000] [--checkpoint ...] [--quick]

Creates ``--sessions`` sessions of the checkpoint's model in a fresh bundled redis-server and
posts their points with the service's own Lua scripts (``service.store``), pipelined so that
100,000 sessions take minutes, not hours: the keys and their sizes are exactly the service's.
Every post carries an Idempotency-Key (as ``service.client`` sends); a session folds every
``FOLD_THRESHOLD`` points as the service does, its fold committing a state blob of the model's
size (the blob of the model's empty state: the commit script and the memory do not depend on its
bytes, and a real fold would only cost CPU here). The mix, most sessions short:

    new     40%  created, no point yet
    small   35%  1-10 points, one per post
    medium  20%  11-255 points, posts of 25 (no fold yet)
    large    5%  256-2,000 points (log-uniform), posts of 10: folded, most with a full ring

Then ``MEMORY USAGE`` (``SAMPLES 0``) of every key of every session, summed per session, and the
growth of ``used_memory`` (which also counts the keyspace's own overhead per key), with the
projection to 10^6 and 10^7 sessions. AOF is off in this server: it does not change the memory of
the data, and writing gigabytes to disk would only slow the run. Writes JSON (default
bench/out/capacity.json).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import redis

from bench.common import CHECKPOINT, OUT_DIR, write_json
from model import load_checkpoint
from service.embedded_redis import EmbeddedRedis
from service.kinds.regression import NAME, RegressionParams
from service.store import _APPEND, _COMMIT_FOLD, _CREATE, Session, _digest, session_keys
from service.transforms import AffineMap

FOLD_THRESHOLD, MAX_POINTS_PER_REQUEST, IDEMPOTENCY_KEYS = 256, 1_000, 128  # the service's defaults
TTL_MS = 86_400_000
# name, share of the sessions, points (low, high; "log" for log-uniform), points per post
MIX = (
    ("new", 0.40, (0, 0), 1),
    ("small", 0.35, (1, 10), 1),
    ("medium", 0.20, (11, 255), 25),
    ("large", 0.05, (256, 2_000), 10),
)
PIPELINE_SESSIONS = 200  # sessions written per pipeline (one round trip)
PROJECT_TO = (1_000_000, 10_000_000)


def points_of(rng: np.random.Generator, kind: str, low: int, high: int) -> int:
    if low == high:
        return low
    if kind == "large":
        return int(np.exp(rng.uniform(np.log(low), np.log(high + 1))))
    return int(rng.integers(low, high + 1))


class Writer:
    """Writes sessions with the store's scripts into one pipeline, tracking each session's counters
    as the scripts do, so that a fold commit passes the same epoch check as in the service."""

    def __init__(self, client: redis.Redis, dim: int, state: bytes) -> None:
        self.client = client
        self.create = client.register_script(_CREATE)
        self.append = client.register_script(_APPEND)
        self.commit = client.register_script(_COMMIT_FOLD)
        self.state = state
        identity = AffineMap.identity(dim)
        params = RegressionParams(identity, identity).to_fields()
        self.template = Session("", "bench", "cmanp-gp-rbf", "f" * 32, NAME, params, time.time(), TTL_MS // 1000)
        self.row = np.zeros(2 * dim, dtype="<f4").tobytes()

    def session(self, pipe: redis.client.Pipeline, session_id: str, points: int, per_post: int) -> None:
        keys = session_keys(session_id)
        meta = replace(self.template, session_id=session_id, state_bytes=len(self.state))
        self.create(keys=keys[:1], args=[TTL_MS, *(x for kv in meta.initial_meta().items() for x in kv)], client=pipe)
        epoch = log_entries = log_points = 0
        for post, start in enumerate(range(0, points, per_post)):
            n = min(per_post, points - start)
            entry = self.row * n
            key = _digest(f"{session_id}-{post}".encode())
            args = [
                entry,
                n,
                key,
                _digest(entry),
                FOLD_THRESHOLD + MAX_POINTS_PER_REQUEST,
                IDEMPOTENCY_KEYS,
                "",
                "",
                "",
            ]
            self.append(keys=keys, args=args, client=pipe)
            log_entries, log_points = log_entries + 1, log_points + n
            if log_points >= FOLD_THRESHOLD:  # the fold the service would run in the background
                self.commit(keys=keys, args=[epoch, log_entries, log_points, self.state, 0], client=pipe)
                epoch, log_entries, log_points = epoch + 1, 0, 0


def session_bytes(client: redis.Redis, session_ids: list[str]) -> list[int]:
    """MEMORY USAGE summed over each session's keys (a missing key counts 0)."""
    sizes = []
    for start in range(0, len(session_ids), 1_000):
        chunk = session_ids[start : start + 1_000]
        pipe = client.pipeline(transaction=False)
        for session_id in chunk:
            for key in session_keys(session_id):
                pipe.memory_usage(key, samples=0)
        usage = pipe.execute()
        parts = len(session_keys(""))
        sizes += [sum(u or 0 for u in usage[i * parts : (i + 1) * parts]) for i in range(len(chunk))]
    return sizes


def run(checkpoint: str, sessions: int, seed: int = 0) -> dict:
    net = load_checkpoint(Path(checkpoint))
    state = net.empty_state(batch_size=1).to_bytes()
    rng = np.random.default_rng(seed)
    plan: list[tuple[str, str, int, int]] = []  # kind, session id, points, per post
    for kind, share, (low, high), per_post in MIX:
        for i in range(round(share * sessions)):
            plan.append((kind, f"{kind}-{i}", points_of(rng, kind, low, high), per_post))
    order = rng.permutation(len(plan))  # the kinds interleaved, as they would arrive
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), options={"appendonly": "no"}) as server:
        client = redis.Redis(port=server.port, socket_timeout=60)
        writer = Writer(client, net.cfg.dim_x, state)
        before = client.info("memory")["used_memory"]
        t0 = time.perf_counter()
        for start in range(0, len(order), PIPELINE_SESSIONS):
            pipe = client.pipeline(transaction=False)
            for index in order[start : start + PIPELINE_SESSIONS]:
                kind, session_id, points, per_post = plan[index]
                writer.session(pipe, session_id, points, per_post)
            pipe.execute()
        write_seconds = time.perf_counter() - t0
        used = client.info("memory")["used_memory"] - before
        sizes = dict(zip([p[1] for p in plan], session_bytes(client, [p[1] for p in plan]), strict=True))
        check = client.pipeline(transaction=False)
        for _, session_id, _, _ in plan:
            check.hget(session_keys(session_id)[0], "num_points")
        assert [int(n) for n in check.execute()] == [p[2] for p in plan], "a session lacks points"
        client.close()
    by_kind = {}
    for kind, share, (low, high), per_post in MIX:
        rows = [(sizes[p[1]], p[2]) for p in plan if p[0] == kind]
        values = np.asarray([r[0] for r in rows])
        by_kind[kind] = {
            "share": share,
            "sessions": len(rows),
            "points": [low, high],
            "points_per_post": per_post,
            "mean_points": float(np.mean([r[1] for r in rows])),
            "mean_bytes": float(values.mean()),
            "max_bytes": int(values.max()),
        }
    total = sum(sizes.values())
    per_session_used = used / len(plan)
    return {
        "sessions": len(plan),
        "state_bytes": len(state),
        "write_seconds": write_seconds,
        "memory_usage_total_bytes": total,
        "memory_usage_per_session_bytes": total / len(plan),
        "used_memory_growth_bytes": used,
        "used_memory_per_session_bytes": per_session_used,
        "by_kind": by_kind,
        "projection": {str(n): {"used_memory_bytes": per_session_used * n} for n in (len(plan), *PROJECT_TO)},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=CHECKPOINT)
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="2,000 sessions: checks the harness, not the numbers")
    p.add_argument("--out", type=Path, default=OUT_DIR / "capacity.json")
    args = p.parse_args(argv)
    result = run(args.checkpoint, 2_000 if args.quick else args.sessions)
    print(f"{result['sessions']:,} sessions written in {result['write_seconds']:.0f} s")
    for kind, row in result["by_kind"].items():
        print(
            f"{kind:7s} {row['sessions']:7,d} sessions  mean {row['mean_bytes']:9,.0f} B  max {row['max_bytes']:9,d} B"
        )
    print(
        f"MEMORY USAGE per session {result['memory_usage_per_session_bytes']:,.0f} B; "
        f"used_memory per session {result['used_memory_per_session_bytes']:,.0f} B"
    )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
