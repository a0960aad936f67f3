"""Run every benchmark, each in its own process, then write the report.

    python -m bench            # make bench: full sizes; writes bench/RESULTS.md and bench/*.png
    python -m bench --quick    # make bench-quick: small sizes, output under bench/out/quick/
    python -m bench --quick --jobs 3    # the test suite: three at a time (harness only, no numbers to trust)
    python -m bench --only model_costs,peers

Each benchmark writes its JSON under the output directory; ``bench/out/runs.json`` records the
exact commands and how long each took, and ``bench.report`` turns it all into tables and plots.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import CHECKPOINT, EVENT_CHECKPOINT, GENERAL_CHECKPOINT, OUT_DIR, machine, write_json
from bench.report import write_report

QUICK_DIR = OUT_DIR / "quick"


def commands(out: Path, quick: bool) -> dict[str, list[str]]:
    """The command of every benchmark, by name (= the module in bench/ and its JSON file)."""
    py = [Path(sys.executable).name, "-m"]
    ckpt = ["--checkpoint", CHECKPOINT]
    quick_flag = ["--quick"] if quick else []

    def json_out(name: str) -> list[str]:
        return ["--out", str(out / f"{name}.json")]

    return {
        "model_costs": [*py, "bench.model_costs", *ckpt, *quick_flag, *json_out("model_costs")],
        "constant_memory": [
            *py,
            "bench.constant_memory",
            *ckpt,
            "--sizes",
            "1000,10000" if quick else "100,10000,1000000",
            *json_out("constant_memory"),
        ],
        "peers": [*py, "bench.peers", *ckpt, *quick_flag, *json_out("peers")],
        "train_throughput": [
            *py,
            "bench.train_throughput",
            # Quick mode (CI) times fp32 only: compilation alone takes minutes cold, and eager bf16 runs
            # 6x slower than fp32 on this CPU (99 s of the suite); tests/model/test_training_precision
            # covers the bf16 path's correctness. One thread: beside the test suite's other worker, two
            # OpenMP threads wait on each other and the 8 steps took 155 s.
            *(
                ["--steps", "3", "--warmup", "1", "--rounds", "1", "--options", "fp32-eager", "--threads", "1"]
                if quick
                else ["--steps", "40", "--warmup", "20", "--rounds", "4"]
            ),
            *json_out("train_throughput"),
        ],
        "service_load": [*py, "bench.service_load", *quick_flag, *json_out("service_load")],
        "calibration_cost": [
            *py,
            "bench.calibration_cost",
            *(
                ["--seconds", "1", "--rounds", "1", "--fold-repeats", "3"]
                if quick
                else ["--seconds", "6", "--rounds", "3"]
            ),
            *json_out("calibration_cost"),
        ],
        "real_data": [
            *py,
            "bench.real_data",
            *["--model", "cmanp-gp-general", "--checkpoint", GENERAL_CHECKPOINT, "--y-transform", "auto"],
            *quick_flag,
            *json_out("real_data"),
        ],
        "real_data_held_out": [
            *py,
            "bench.real_data",
            *["--model", "cmanp-gp-general", "--checkpoint", GENERAL_CHECKPOINT, "--y-transform", "auto"],
            *["--set", "held-out"],
            *quick_flag,
            *json_out("real_data_held_out"),
        ],
        "calibration_monitor": [
            *py,
            "bench.calibration_monitor",
            *["--checkpoint", GENERAL_CHECKPOINT, "--data", "broad"],
            *(["--quick"] if quick else ["--sessions", "1024"]),
            *json_out("calibration_monitor"),
        ],
        "calibration_monitor_rbf": [
            *py,
            "bench.calibration_monitor",
            *["--checkpoint", CHECKPOINT, "--data", "rbf"],
            *(["--quick"] if quick else ["--sessions", "1024"]),
            *json_out("calibration_monitor_rbf"),
        ],
        "replication_wait": [*py, "bench.replication_wait", *ckpt, *quick_flag, *json_out("replication_wait")],
        "capacity": [*py, "bench.capacity", *ckpt, *quick_flag, *json_out("capacity")],
        "event_costs": [
            *py,
            "bench.event_costs",
            *["--checkpoint", EVENT_CHECKPOINT],
            *quick_flag,
            *json_out("event_costs"),
        ],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated benchmark names (default: all)")
    # Most quick runs wait on servers starting and fixed-length load rounds, so running a few at once
    # shortens the suite; their figures then mean nothing, which is why only --quick allows it.
    p.add_argument("--jobs", type=int, default=1, help="with --quick: benchmarks run at once")
    args = p.parse_args(argv)
    if args.jobs > 1 and not args.quick:
        p.error("--jobs > 1 only with --quick: benchmarks that share the CPU measure each other")
    out = QUICK_DIR if args.quick else OUT_DIR
    todo = commands(out, args.quick)
    if args.only:
        todo = {name: todo[name] for name in args.only.split(",")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_json(
        out / "machine.json", machine() | {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit}
    )
    runs_path = out / "runs.json"
    previous = json.loads(runs_path.read_text()) if runs_path.exists() else []
    runs = {r["name"]: r for r in previous}  # --only keeps the other benchmarks' records
    record = threading.Lock()
    listed = list(commands(out, args.quick))  # runs.json keeps this order, however the runs finish

    def run(name: str) -> None:
        command = todo[name]
        print(f"== {name}: {shlex.join(command)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *command[1:]], check=True)
        with record:  # after each one, so a later failure keeps the record
            runs[name] = {"name": name, "command": shlex.join(command), "seconds": time.perf_counter() - t0}
            write_json(
                runs_path,
                sorted(runs.values(), key=lambda r: listed.index(r["name"]) if r["name"] in listed else len(listed)),
            )

    with ThreadPoolExecutor(args.jobs) as pool:
        for done in [pool.submit(run, name) for name in todo]:
            done.result()  # the first failure, in the listed order
    report_dir = out if args.quick else Path("bench")
    path = write_report(out, report_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
