"""Logs are one JSON object per line, carry the request id, and never contain keys or payload values.

The service runs as a real process at debug level (the most it ever logs), serves requests that
carry an API key, an Idempotency-Key and distinctive numbers (good and bad requests, a wrong
key too), and its whole stderr is then searched for any of them.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from tests.service.processes import service_env
from tools.service_process import ServiceProcess

SECRET_KEY = "sk-live-7Hq2ZpX9"
WRONG_KEY = "sk-wrong-Vb41Lm"
IDEMPOTENCY_KEY = "idem-Qw83Rt"
X_VALUE, Y_VALUE, BAD_VALUE = 0.7071234567, -1.4142987654, 123.4564321
GIVEN_REQUEST_ID = "trace-42.a:b"
JSON = {"Content-Type": "application/json"}


def test_logs_are_json_lines_with_request_ids_and_no_secrets(tmp_path: Path, redis_server, checkpoint_dir) -> None:
    env = service_env(checkpoint_dir, redis_url=redis_server.url, api_keys=f"logs:{SECRET_KEY}", log_level="debug")
    auth = {"Authorization": f"Bearer {SECRET_KEY}"}
    served = ServiceProcess(env, tmp_path / "service.stdout", stderr=tmp_path / "service.stderr")
    with served, httpx.Client(base_url=served.url, headers=auth) as http:
        created = http.post("/v1/sessions", json={"y_transform": {"shift": Y_VALUE, "scale": X_VALUE}})
        session_id = created.json()["session_id"]
        context = f"/v1/sessions/{session_id}/context"
        answers = [
            created,
            http.post(context, json={"x": [[X_VALUE]], "y": [[Y_VALUE]]}, headers={"Idempotency-Key": IDEMPOTENCY_KEY}),
            http.post(f"/v1/sessions/{session_id}/predict", json={"x": [[X_VALUE], [BAD_VALUE]]}),
            http.post(context, json={"x": [[BAD_VALUE, X_VALUE]], "y": [[Y_VALUE]]}),  # 422
            http.post(context, content=f'{{"x": [[{BAD_VALUE}]], "y": [['.encode(), headers=JSON),  # 400
            http.get(f"/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {WRONG_KEY}"}),  # 401
            http.get(f"/v1/sessions/{session_id}", headers={"X-Request-ID": GIVEN_REQUEST_ID}),
        ]
        assert [a.status_code for a in answers] == [201, 200, 200, 422, 400, 401, 200]
    lines = served.log_lines()
    text = "\n".join(lines)

    records = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and {"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "service.access"]
    assert [r["request_id"] for r in access[-len(answers) :]] == [a.headers["X-Request-ID"] for a in answers]
    assert answers[-1].headers["X-Request-ID"] == GIVEN_REQUEST_ID
    assert access[-1]["route"] == "/v1/sessions/{session_id}" and access[-1]["status"] == 200

    secrets = [SECRET_KEY, WRONG_KEY, IDEMPOTENCY_KEY, session_id]
    # The numbers in any of the forms they could be written in (JSON, float32 round trips, rounded).
    numbers = [f"{abs(v):.6f}"[:7] for v in (X_VALUE, Y_VALUE, BAD_VALUE)] + ["70712", "41429", "45643"]
    for needle in secrets:
        assert needle not in text, f"{needle!r} was logged"
    # Regression: a bare digit run can occur inside a random hex request id by chance, so the
    # number needles are searched in the logs with the request ids taken out.
    without_ids = text
    for record in records:
        without_ids = without_ids.replace(str(record.get("request_id", "")), "")
    for needle in numbers:
        assert needle not in without_ids, f"{needle!r} was logged"
