"""``python -m service`` with CMANP_WORKERS=2 and the bundled Redis: two worker processes under one
parent serve one shared store, /metrics sums both, SIGTERM drains and stops everything, and the data
survives a restart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from uvicorn.config import STARTUP_FAILURE

from service.settings import Settings
from tests.service.helpers import REPO, assert_same_state, expected_prediction, sample_points, stored_state
from tests.service.processes import service_env
from tools.service_process import ServiceProcess

POSTS = 60  # single-point context posts, each on a new connection, so both workers get some
PREDICTS = 20
IN_FLIGHT_POINTS = 5
FOLD_THRESHOLD = 4  # folds (which set the per-worker coverage gauge) happen every few posts


def test_default_workers_and_threads_follow_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CMANP_WORKERS", "CMANP_INFERENCE_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert (Settings().workers, Settings().inference_workers) == (cpus, 1)
    monkeypatch.setenv("CMANP_WORKERS", "1")
    assert Settings().inference_workers == cpus  # one process: as many model calls at once as CPUs


def process_tree(pid: int) -> list[int]:
    """Every descendant (children are listed per thread: a fold process is started by a thread of its own)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    children = [int(c) for task in tasks for c in (task / "children").read_text().split()]
    return [p for child in children for p in (child, *process_tree(child))]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metrics_dir(worker: int) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR the parent handed to a worker (from its environment)."""
    environ = dict(line.split("=", 1) for line in Path(f"/proc/{worker}/environ").read_text().split("\0") if line)
    return Path(environ["PROMETHEUS_MULTIPROC_DIR"])


def metric_samples(url: str) -> list:
    text = httpx.get(f"{url}/metrics").text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture
def two_workers(tmp_path: Path, checkpoint_dir: Path) -> Iterator[ServiceProcess]:
    env = service_env(
        checkpoint_dir,
        workers=2,
        redis_data_dir=tmp_path / "var" / "redis",
        fold_threshold_points=FOLD_THRESHOLD,
        log_level="info",
    )
    api = ServiceProcess(env, tmp_path / "service.log")
    yield api
    if api.process is not None and api.process.poll() is None:
        api.stop(signal.SIGTERM)


def start_both(api: ServiceProcess) -> tuple[list[int], int]:
    """Start and wait until both workers have finished startup; (the pids of the workers and of their
    fold processes, the redis-server's pid). Each worker has started its fold process by then."""
    api.start(timeout=120)
    wait_for(lambda: api.log.read_text().count("Application startup complete.") >= 2)

    def spawned(tree: list[int], parents: list[int]) -> list[int]:
        return [p for p in tree if "multiprocessing.spawn" in cmdline(p) and parent(p) in parents]

    tree = process_tree(api.process.pid)
    workers = spawned(tree, [api.process.pid])
    servers = [p for p in tree if "redis-server" in cmdline(p)]
    assert len(workers) == 2 and len(servers) == 1, [cmdline(p) for p in tree]
    # Each worker starts its fold process at startup, in the background.
    wait_for(lambda: sorted(parent(p) for p in spawned(process_tree(api.process.pid), workers)) == sorted(workers))
    return [*workers, *spawned(process_tree(api.process.pid), workers)], servers[0]


@pytest.mark.slow
def test_two_workers_share_the_store_and_the_metrics_and_stop_cleanly(two_workers: ServiceProcess, tiny_net) -> None:
    api = two_workers
    processes, redis_pid = start_both(api)
    workers = processes[:2]
    redis_url = re.search(r"bundled redis-server at (redis://127\.0\.0\.1:\d+)", api.log.read_text()).group(1)
    metrics_dirs = {metrics_dir(p) for p in workers}
    assert len(metrics_dirs) == 1 and next(iter(metrics_dirs)).is_dir()

    # One session, written and read through fresh connections, which the kernel spreads over both workers.
    session_id = httpx.post(f"{api.url}/v1/sessions", json={}).json()["session_id"]
    x, y = sample_points(POSTS, seed=5)
    for xi, yi in zip(x, y, strict=True):
        answer = httpx.post(
            f"{api.url}/v1/sessions/{session_id}/context", json={"x": [xi.tolist()], "y": [yi.tolist()]}
        )
        assert answer.status_code == 200, answer.text
    xq = np.linspace(-2, 2, 7, dtype=np.float32)[:, None]
    want_mean, want_variance = expected_prediction(tiny_net, x, y, xq)
    for _ in range(PREDICTS):
        got = httpx.post(f"{api.url}/v1/sessions/{session_id}/predict", json={"x": xq.tolist()}).json()
        np.testing.assert_allclose(np.array(got["mean"]), want_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.array(got["variance"]), want_variance, rtol=1e-4, atol=1e-5)
    with redis.Redis.from_url(redis_url) as client:
        assert_same_state(stored_state(client, session_id, tiny_net), x, y, tiny_net)

    samples = metric_samples(api.url)  # one scrape, answered by one worker, counting both
    route = "/v1/sessions/{session_id}/context"
    assert value(samples, "cmanp_http_requests_total", route=route, status="200") == POSTS
    assert value(samples, "cmanp_context_posts_total") == POSTS
    assert value(samples, "cmanp_predictions_total") == PREDICTS
    assert value(samples, "cmanp_sessions_created_total") == 1
    # Each worker that folded shows its own coverage gauge, labelled with its pid: both did.
    gauge_pids = {s.labels["pid"] for s in samples if s.name == "cmanp_calibration_coverage"}
    assert gauge_pids == {str(p) for p in workers}

    # SIGTERM with a request in flight on a worker: it is finished before everything stops.
    x_more, y_more = sample_points(IN_FLIGHT_POINTS, seed=6)
    body = orjson.dumps({"x": x_more, "y": y_more}, option=orjson.OPT_SERIALIZE_NUMPY)
    head_sent, finish_body = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[:10]
        head_sent.set()
        finish_body.wait(30)
        yield body[10:]

    answers: list[httpx.Response] = []
    url = f"{api.url}/v1/sessions/{session_id}/context"
    headers = {"Content-Type": "application/json"}
    poster = threading.Thread(target=lambda: answers.append(httpx.post(url, content=slow_body(), headers=headers)))
    poster.start()
    assert head_sent.wait(30)
    time.sleep(0.2)
    api.process.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert api.process.poll() is None and alive(redis_pid)  # draining: Redis stays up for the worker
    finish_body.set()
    poster.join(30)
    assert answers and answers[0].json() == {"num_points": POSTS + IN_FLIGHT_POINTS, "version": POSTS + 1}
    assert api.process.wait(30) == 0
    assert not any(alive(p) for p in [*processes, redis_pid]), "a worker, a fold process or redis-server outlived it"
    assert not next(iter(metrics_dirs)).exists()

    # The append-only file has it all: a new run (with new workers and counters) reads the session back.
    api.start(timeout=120)
    assert httpx.get(f"{api.url}/v1/sessions/{session_id}").json()["num_points"] == POSTS + IN_FLIGHT_POINTS
    assert value(metric_samples(api.url), "cmanp_context_posts_total") == 0


@pytest.mark.slow
def test_workers_and_redis_stop_when_the_parent_is_killed(two_workers: ServiceProcess) -> None:
    """kill -9 of the parent runs none of its code; the workers, their fold processes and the bundled
    redis-server still go (parent-death signal), so nothing keeps the port or the data directory.
    Regression: the redis-server used to be left behind."""
    api = two_workers
    processes, redis_pid = start_both(api)
    left_behind = metrics_dir(processes[0])
    api.kill()
    try:
        wait_for(lambda: not any(alive(p) for p in [*processes, redis_pid]), timeout=30)
    finally:
        if alive(redis_pid):
            os.kill(redis_pid, signal.SIGTERM)
        shutil.rmtree(left_behind)  # only the parent removes it (docs/SERVICE.md, "Processes")


def test_a_port_in_use_stops_the_service_and_its_redis(tmp_path: Path, checkpoint_dir: Path) -> None:
    api = ServiceProcess(
        service_env(checkpoint_dir, workers=2, redis_data_dir=tmp_path / "redis", log_level="info"), tmp_path / "log"
    )
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", api.port))
        holder.listen()
        with open(api.log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=api.env, stdout=out, stderr=out)
        assert process.wait(60) == STARTUP_FAILURE
    output = api.log.read_text()
    assert "cannot listen on" in output
    redis_port = int(re.search(r"bundled redis-server at redis://127\.0\.0\.1:(\d+)", output).group(1))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0, "redis-server outlived the failed start"


def test_the_supervisor_loads_neither_the_app_nor_torch() -> None:
    """Only the workers serve: a supervisor that imported the app would spend a torch import (seconds
    of CPU, hundreds of MB) on every start for nothing."""
    probe = "import sys, service.__main__, service.workers; print(sorted({'torch', 'service.app'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_ctrl_c_while_the_fold_processes_start_stops_quietly(tmp_path: Path, checkpoint_dir: Path) -> None:
    """Ctrl-C reaches the terminal's whole process group, fold processes included. One that is still
    importing torch (seconds after the start) has not yet ignored SIGINT, and used to print a
    KeyboardInterrupt traceback; it now starts with SIGINT blocked."""
    env = service_env(checkpoint_dir, workers=2, redis_data_dir=tmp_path / "redis", log_level="info")
    api = ServiceProcess(env, tmp_path / "log")
    with open(api.log, "wb") as out:
        # A session of its own: the process group a terminal's Ctrl-C signals.
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=api.env, stdout=out, stderr=out, start_new_session=True
        )
    try:

        def fold_child_started() -> bool:
            tree = process_tree(process.pid)
            workers = [p for p in tree if parent(p) == process.pid and "multiprocessing.spawn" in cmdline(p)]
            return any(parent(p) in workers and "multiprocessing.spawn" in cmdline(p) for p in tree)

        wait_for(fold_child_started, timeout=120)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = api.log.read_text()
    assert "all 2 worker processes have exited" in output
    assert "KeyboardInterrupt" not in output and "Traceback" not in output, output[-3000:]
