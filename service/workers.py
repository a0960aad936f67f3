"""Several uvicorn worker processes on one port (``CMANP_WORKERS`` > 1; see ``service.settings``).

The parent (``python -m service``) runs ``Supervisor``: it spawns ``WORKERS`` fresh interpreters,
each running a ``uvicorn.Server`` on the app factory ``worker_app``, replaces a worker that dies,
and on SIGTERM or SIGINT sends SIGTERM to every worker, each of which drains its requests in
flight (up to ``SHUTDOWN_GRACE_SECONDS``) and runs its lifespan shutdown; it returns once all
have exited.

Each worker listens on its own socket bound with ``SO_REUSEPORT``, and the kernel spreads
incoming connections evenly over them by address hash. Not uvicorn's ``workers=N``: there all
workers accept from one shared socket, and whichever wakes first takes every connection waiting,
so the long-lived connections of a client pool (or of wrk) opened in a burst often all land on
one worker, which then serves at one core while the other idles (measured: 1,099 vs 1,753
posts/s; docs/OPERATIONS.md, "Worker processes and threads"). The parent binds the port too,
without listening, so that a port in use fails at once and port 0 becomes one fixed port for
every worker.

``shared_by_workers`` gives the workers what they must share, owned by the parent:

* the bundled redis-server (when ``CMANP_REDIS_URL`` is unset): started once before the workers,
  handed to them as ``CMANP_REDIS_URL``, and stopped only after the last worker has exited, so
  that no worker loses its store while it drains;
* a fresh, empty directory for prometheus-client's multiprocess mode (``service.metrics``),
  removed at exit: values of an earlier run must not leak into this run's totals.

The workers inherit both through the environment (spawned interpreters copy the parent's).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from service.bundled_redis import start_bundled_redis
from service.logs import configure_logging
from service.parent_death import terminate_with_parent
from service.settings import MULTIPROCESS_DIR_ENV, Settings

logger = logging.getLogger(__name__)

WORKER_APP = "service.workers:worker_app"  # the import string uvicorn loads in each worker
POLL_SECONDS = 0.5  # how often the parent looks at its signal flags between worker exits


@contextmanager
def shared_by_workers(settings: Settings) -> Iterator[None]:
    """Start the bundled Redis (if used) and the metrics directory; export them to the workers."""
    with ExitStack() as stack:
        if settings.redis_url is None:
            os.environ["CMANP_REDIS_URL"] = stack.enter_context(start_bundled_redis(settings)).url
        os.environ[MULTIPROCESS_DIR_ENV] = stack.enter_context(tempfile.TemporaryDirectory(prefix="cmanp-metrics-"))
        yield


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, so that several processes can each bind one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_app() -> FastAPI:
    """The app of one worker process: uvicorn calls this factory in each worker."""
    from service.app import create_app  # here, not at the top: the supervisor never loads the app or torch

    settings = Settings()
    configure_logging(settings.log_level)  # a spawned interpreter starts with no logging set up
    return create_app(settings)


def run_worker(options: dict[str, Any]) -> None:
    """One worker process: uvicorn on its own SO_REUSEPORT socket (it drains and exits on SIGTERM)."""
    parent = multiprocessing.parent_process()
    assert parent is not None, "run_worker runs in a process the Supervisor spawned"
    terminate_with_parent(parent.pid)  # a killed supervisor (kill -9, OOM) leaves no worker holding the port
    try:
        sock = reuse_port_socket(options["host"], options["port"])
    except OSError as error:  # e.g. another user's process holds the port: a restart would fail alike
        logger.error("worker cannot listen on %s:%s: %s", options["host"], options["port"], error)
        sys.exit(STARTUP_FAILURE)
    uvicorn.Server(uvicorn.Config(WORKER_APP, factory=True, **options)).run(sockets=[sock])


class Supervisor:
    """Runs ``workers`` worker processes until SIGTERM or SIGINT, replacing any that dies on its own."""

    def __init__(self, workers: int, options: dict[str, Any]) -> None:
        self.workers = workers
        self.options = options
        self.processes: list[BaseProcess] = []
        self.stopping = False

    def run(self) -> int:
        """Serve until a signal; the exit status (uvicorn's STARTUP_FAILURE if a worker could not start)."""
        handlers = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # Bound (never listening) for as long as the workers run: the port is ours, port 0 resolved.
            try:
                reserved = reuse_port_socket(self.options["host"], self.options["port"])
            except OSError as error:
                logger.error("cannot listen on %s:%s: %s", self.options["host"], self.options["port"], error)
                return STARTUP_FAILURE
            with reserved:
                self.options = self.options | {"port": reserved.getsockname()[1]}
                self.processes = [self._spawn() for _ in range(self.workers)]
                status = self._watch()
                for process in self.processes:
                    if process.exitcode is None:
                        os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
                for process in self.processes:
                    process.join()
                logger.info("all %d worker processes have exited", len(self.processes))
                return status
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _spawn(self) -> BaseProcess:
        process = multiprocessing.get_context("spawn").Process(target=run_worker, args=(self.options,))
        process.start()
        logger.info("started worker process %d", process.pid)
        return process

    def _watch(self) -> int:
        """Wait for a signal, restarting workers that exit; 0, or STARTUP_FAILURE."""
        while not self.stopping:
            multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=POLL_SECONDS)
            for i, process in enumerate(self.processes):
                if process.exitcode is None or self.stopping:
                    continue
                if process.exitcode == STARTUP_FAILURE:  # the app or the port is broken: a restart would fail alike
                    logger.error("worker process %d could not start; stopping", process.pid)
                    return STARTUP_FAILURE
                logger.warning("worker process %d exited with %s; starting another", process.pid, process.exitcode)
                self.processes[i] = self._spawn()
        return 0

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        logger.info("received %s: stopping the worker processes", signal.Signals(sig).name)
        self.stopping = True
