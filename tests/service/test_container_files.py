"""No Docker engine runs here, so the container files are checked by parsing them.

Dockerfile: multi-stage, CPU-only torch 2.13.0 from the PyTorch CPU index, a non-root user, a
HEALTHCHECK on /healthz, and the entrypoint of `make run`. Compose: redis:7 with appendonly, a
volume and a `redis-cli ping` healthcheck; the api waits for it to be healthy, gets
CMANP_REDIS_URL and publishes port 8000.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.service.helpers import REPO


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2 and all(" AS " in s.upper() for s in stages), "multi-stage, named stages"

    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", runs)

    runtime = final_stage(instructions)
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runs as a non-root user"
    assert any(op == "COPY" and "--from=build" in args for op, args in runtime)

    (healthcheck,) = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "CMD" in healthcheck

    (entrypoint,) = [json.loads(args) for op, args in instructions if op == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", "service"]
    run_recipe = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "-m service" in run_recipe, "the same entrypoint as `make run`"


def test_compose_file() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML parses docker-compose.yml (requested as a dev dependency)")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    redis, api = compose["services"]["redis"], compose["services"]["api"]

    assert redis["image"].split(":")[1].startswith("7")
    command = redis["command"] if isinstance(redis["command"], str) else " ".join(redis["command"])
    assert "--appendonly yes" in command
    (volume,) = redis["volumes"]
    assert volume.split(":")[0] in compose["volumes"] and volume.split(":")[1] == "/data"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]

    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["environment"]["CMANP_REDIS_URL"] == "redis://redis:6379/0"
    assert "8000:8000" in api["ports"]
    assert Path(REPO / api["build"]["context"] / api["build"]["dockerfile"]) == REPO / "docker" / "Dockerfile"
