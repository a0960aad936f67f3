"""The README's examples run as written, against the shipped default model with no y_transform.

The curl block and the Python block are taken from README.md itself, so the test fails when the
README drifts from the service; only the address is replaced by the test server's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from service.settings import Settings
from tests.service.helpers import REPO, live_server, make_settings

README = (REPO / "README.md").read_text()


def blocks(language: str, marker: str) -> list[str]:
    return [b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if marker in b]


@pytest.fixture(scope="module")
def default_server(redis_server) -> Iterator[str]:
    # No API keys: the README's examples are for a local `make run`, which has none.
    default = Settings().default_model
    settings = make_settings(redis_server.url, REPO / "checkpoints", default_model=default, api_keys="")
    with live_server(settings) as url:
        yield url


def test_the_curl_example_runs_and_predicts_in_the_data_units(default_server: str) -> None:
    (script,) = blocks("bash", "curl")
    script = script.replace("localhost:8000", default_server.removeprefix("http://"))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    decoder, text, answers = json.JSONDecoder(), out.stdout.strip(), []
    while text:  # curl prints the answers with no newline between them
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].lstrip()
    posted, predicted = answers
    assert posted["num_points"] == 3
    # The readings are about 1,000 (the Nile's flow): predictions in the same units, not the model's.
    means = [row[0] for row in predicted["mean"]]
    assert all(500 < m < 1500 for m in means), predicted
    assert all(v[0] > 0 for v in predicted["variance"])


def test_the_python_example_runs(default_server: str) -> None:
    (script,) = blocks("python", "CMANPClient")
    script = script.replace("http://127.0.0.1:8000", default_server)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("(100, 1) (100, 1) 3")
