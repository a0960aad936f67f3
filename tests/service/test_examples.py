"""The examples, run as a user runs them (separate processes, --quick) against a live server with the
shipped checkpoint: they must finish, write their PNGs, and print results that make sense.

"Make sense" is checked against independent facts, not the examples' own numbers: the band narrows
as readings arrive, the error of the mean falls well below the signal's size, the state size never
changes, every value the optimiser prints is the test function at the printed x, and the best
value found beats the random start and comes close to the known minimum, and the event session
holds every streamed event in a state of constant size. Without --out an example
writes into the git-ignored examples/out/ and leaves the checkout as it was; --help says what it does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from service.client import CMANPClient
from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import API_KEYS, REPO, live_server, make_settings

SHIPPED = "cmanp-gp-rbf"


@pytest.fixture(scope="module")
def shipped_server(redis_server: EmbeddedRedis) -> Iterator[str]:
    if not (REPO / "checkpoints" / f"{SHIPPED}.safetensors").exists():
        pytest.skip(f"checkpoints/{SHIPPED}.safetensors is not in this checkout")
    with live_server(make_settings(redis_server.url, REPO / "checkpoints", default_model=SHIPPED)) as url:
        yield url


def run_example(name: str, url: str, *options: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run examples/<name> as a script with the options, the URL and key from the environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CMANP_URL": url, "CMANP_API_KEY": API_KEYS["alice"]}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *options],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def untracked_files() -> str:
    """Untracked files git would show (not the ignored ones), one per line."""
    return git("status", "--porcelain", "--untracked-files=all").stdout


def assert_png(path: Path) -> None:
    assert path.exists(), f"{path} was not written"
    height, width, _ = image.imread(path).shape
    assert width > height > 200


def test_streaming_regression_writes_into_an_ignored_folder(shipped_server: str, tmp_path: Path) -> None:
    out = REPO / "examples" / "out" / "streaming_regression.png"  # the default: no --out
    out.unlink(missing_ok=True)
    checkout = shutil.which("git") is not None and git("rev-parse", "--git-dir").returncode == 0
    before = untracked_files() if checkout else ""
    result = run_example("streaming_regression.py", shipped_server, "--quick", cwd=tmp_path)
    assert f"wrote {out}" in result.stdout
    assert list(tmp_path.iterdir()) == [], "the example wrote into the working directory"
    if checkout:
        assert git("check-ignore", "--quiet", str(out)).returncode == 0, f"{out} is not git-ignored"
        assert untracked_files() == before
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+) bytes$", result.stdout, re.MULTILINE)
    readings = [int(r[0]) for r in rows]
    mean_sd, rmse = np.array([[float(r[1]), float(r[2])] for r in rows]).T
    assert readings == [5, 20, 60], result.stdout
    assert np.all(np.diff(mean_sd) < 0), f"the band does not narrow: {mean_sd}"
    assert rmse[-1] < rmse[0] and rmse[-1] < 0.2, f"the mean does not approach the signal (amplitude ~1.3): {rmse}"
    assert len({r[3] for r in rows}) == 1, "the state size changed"
    assert_png(out)


def test_bayes_opt_runs_over_http_on_the_joint_model(shipped_server: str, tmp_path: Path) -> None:
    # A smoke test of the example as a user runs it; whether its Thompson steps make progress is
    # judged over 32 seeded runs in tests/examples/test_bayes_opt.py, not by this one run.
    out = tmp_path / "bayes_opt.png"
    result = run_example("bayes_opt.py", shipped_server, "--quick", "--out", str(out))
    steps = re.findall(r"^\s*\d+ (\w+)\s+x=([\d.]+) f=\s*([+-][\d.]+)", result.stdout, re.MULTILINE)
    kinds = [s[0] for s in steps]
    x, f = np.array([[float(s[1]), float(s[2])] for s in steps]).T
    assert kinds[:3] == ["random"] * 3 and len(kinds) == 13, result.stdout
    np.testing.assert_allclose(f, (6 * x - 2) ** 2 * np.sin(12 * x - 4), atol=2e-4)  # Forrester, to print precision

    # checkpoints/ ships a joint model (cmanp-and-gp-rbf), which the example picks by default.
    assert "sample paths: joint" in result.stdout and set(kinds[3:]) == {"thompson"}, result.stdout

    best_initial, best = f[:3].min(), f.min()
    assert f"initial best f = {best_initial:+.4f}" in result.stdout
    assert f"final best f = {best:+.4f}" in result.stdout
    assert np.all(np.isin(np.round(x[3:], 6), np.round(np.linspace(0, 1, 101), 6))), "Thompson steps off the grid"
    assert "session: 13 points" in result.stdout
    assert_png(out)


def model_help(name: str) -> str:
    """What ``examples/<name> --help`` says of --model, on one line."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "--help"],
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"^\s+--model MODEL\s+(.+?)(?=^\s+--)", result.stdout, re.MULTILINE | re.DOTALL)
    assert match, result.stdout
    return " ".join(match.group(1).split())


def test_the_help_names_the_model_each_example_uses() -> None:
    # bayes_opt picks a model with a joint head (test_bayes_opt: "sample paths: joint" on checkpoints/).
    assert model_help("bayes_opt.py") == (
        "default: the first served model with a joint head (joint samples), else the service's default model"
    )
    assert model_help("streaming_regression.py") == "default: the service's default model"


EVENT_MODEL = "cmhp-hawkes-exp"


def test_event_forecast_streams_a_hawkes_process_into_an_event_session(shipped_server: str, tmp_path: Path) -> None:
    if not (REPO / "checkpoints" / f"{EVENT_MODEL}.safetensors").exists():
        pytest.skip(f"checkpoints/{EVENT_MODEL}.safetensors is not in this checkout")
    out = tmp_path / "event_forecast.png"
    result = run_example("event_forecast.py", shipped_server, "--quick", "--out", str(out))
    session_id = re.search(r"^session (\S+) on model " + EVENT_MODEL + "$", result.stdout, re.MULTILINE).group(1)
    with CMANPClient(shipped_server, API_KEYS["alice"]) as client:
        info = client.get_session(session_id)
        empty = client.create_session(EVENT_MODEL)
    # What the service holds, not what the example says: 60 events, each but the first scored, at
    # a clock of minutes from 2026-01-01, in a state of the size of an empty one.
    assert (info.num_events, info.version, info.calibration["scored_events"]) == (60, 60, 59)
    assert (info.time_origin, info.time_scale) == (1_767_225_600.0, 60.0) and info.last_time > info.time_origin
    assert info.state_bytes == empty.state_bytes
    assert f"events streamed: 60, state {empty.state_bytes:,} bytes" in result.stdout
    inside = float(re.search(r"inside the 90% intervals: ([\d.]+)", result.stdout).group(1))
    assert 0.5 <= inside <= 1.0, result.stdout  # 59 waits: a calibrated 90% band holds 47-57 of them
    assert re.search(r"events in the next 30 minutes: expected [\d.]+ \(± [\d.]+\), true \d+", result.stdout)
    assert_png(out)
