"""Graceful shutdown: SIGTERM stops new connections, lets the request in flight finish, and leaves a
consistent session behind.

The request in flight is a context post whose body is still streaming in when the signal
arrives; the rest of the body is sent only after the server has stopped accepting connections.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.service.helpers import API_KEYS, assert_same_state, sample_points, stored_state
from tests.service.processes import service_env, with_api_keys
from tools.service_process import ServiceProcess

POINTS = 40
HOLD_SECONDS = 3.0  # how long the body stays unfinished after SIGTERM (the grace period is 30 s)


def test_sigterm_lets_the_request_in_flight_finish_and_writes_it_whole(
    tmp_path: Path, redis_server, redis_client, checkpoint_dir: Path, tiny_net
) -> None:
    # Log level info: the test reads uvicorn's shutdown messages.
    env = service_env(checkpoint_dir, **with_api_keys(redis_url=redis_server.url, log_level="info"))
    headers = {"Authorization": f"Bearer {API_KEYS['alice']}", "Content-Type": "application/json"}
    x, y = sample_points(POINTS, seed=21)
    body = orjson.dumps({"x": x, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY)
    head_sent, finish_body = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[:10]
        head_sent.set()  # the request is in flight: its headers and first bytes are on the server
        finish_body.wait(30)
        yield body[10:]

    with ServiceProcess(env, tmp_path / "service.stdout", stderr=tmp_path / "service.stderr") as served:
        session_id = httpx.post(served.url + "/v1/sessions", json={}, headers=headers).json()["session_id"]
        answer: list[httpx.Response] = []
        url = f"{served.url}/v1/sessions/{session_id}/context"
        poster = threading.Thread(target=lambda: answer.append(httpx.post(url, content=slow_body(), headers=headers)))
        poster.start()
        assert head_sent.wait(30)
        time.sleep(0.2)
        served.process.send_signal(signal.SIGTERM)
        time.sleep(HOLD_SECONDS)
        with pytest.raises(httpx.ConnectError):  # no new connections while it drains
            httpx.get(served.url + "/healthz", timeout=2)
        assert served.process.poll() is None  # still waiting for the request in flight
        finish_body.set()
        poster.join(30)
        # uvicorn re-raises the SIGTERM it caught once it has shut down, so the exit status says "terminated".
        assert served.process.wait(30) == -signal.SIGTERM
        lines = served.log_lines()

    assert answer and answer[0].status_code == 200, answer and answer[0].text
    assert answer[0].json() == {"num_points": POINTS, "version": 1}
    assert_same_state(stored_state(redis_client, session_id, tiny_net), x, y, tiny_net)
    assert int(redis_client.hget(f"cmanp:{{{session_id}}}:meta", "num_points")) == POINTS
    messages = [orjson.loads(line)["message"] for line in lines]
    # The order of a graceful exit: drain the connections, then close Redis and the models (lifespan).
    drained, finished = (
        messages.index("Waiting for connections to close. (CTRL+C to force quit)"),
        messages.index("Application shutdown complete."),
    )
    assert drained < finished
