"""Run the service as a real process (``python -m service``, as ``make run`` does) and wait until it is ready.

Shared by the tests (crashes, signals, logs, workers, replicas) and by the benchmarks (load,
durability, replication, calibration cost), so there is one way to start and stop it. It lives in
``tools/`` because both use it: the benchmarks must not import the tests, the tests should not
break when a benchmark changes, and the shipped ``service/`` package does not need it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from service.embedded_redis import free_port

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0  # loading the models on a busy shared CPU


def service_env(checkpoint_dir: Path | str | None = None, inherit: bool = False, **settings: object) -> dict[str, str]:
    """The environment of ``python -m service``: ``CMANP_<NAME>`` = value per setting.

    One worker process and one torch thread, at log level warning, unless the settings say
    otherwise. Without ``inherit``, this process's own ``CMANP_*`` variables are not passed on.
    Without ``redis_url`` the service starts its bundled redis-server.
    """
    env = {k: v for k, v in os.environ.items() if inherit or not k.startswith("CMANP_")}
    options: dict[str, object] = {"workers": 1, "torch_threads": 1, "inference_workers": 1, "log_level": "warning"}
    if checkpoint_dir is not None:
        options["checkpoint_dir"] = checkpoint_dir
    return env | {f"CMANP_{name.upper()}": str(value) for name, value in (options | settings).items()}


class ServiceProcess:
    """``python -m service`` on a fixed free port (kept across restarts, so clients keep their URL).

    ``start()`` waits until ``/readyz`` answers 200; ``kill()`` is a crash (SIGKILL); ``stop()`` a
    graceful stop; ``close()`` stops it whatever it takes. As a context manager: start, then close.
    Its stdout and stderr go to ``log``, or stderr to its own file when ``stderr`` is given.
    """

    def __init__(
        self, env: Mapping[str, str], log: Path, *, stderr: Path | None = None, cwd: Path = REPO, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.env = {**env, "CMANP_PORT": str(self.port)}
        self.log, self.stderr, self.cwd = Path(log), stderr, cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> ServiceProcess:
        with open(self.log, "ab") as out, open(self.stderr or os.devnull, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=err if self.stderr else subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.close()
        raise TimeoutError(f"the service was not ready within {timeout} s; see {self.log}")

    def output(self) -> str:
        """What it wrote so far (stderr, when that has its own file)."""
        path = self.stderr or self.log
        return path.read_text() if path.exists() else ""

    def log_lines(self) -> list[str]:
        return [line for line in self.output().splitlines() if line.strip()]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30.0) -> int:
        """Graceful stop with ``sig``; its exit code. One that outlives ``timeout`` is killed, and
        subprocess.TimeoutExpired raised."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def close(self) -> None:
        """Stop it if it runs: SIGTERM, then SIGKILL after 30 s. Never raises; for ``finally`` blocks."""
        try:
            self.stop(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
