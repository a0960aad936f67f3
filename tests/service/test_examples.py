"""The examples, run as a user runs them (separate processes, --quick) against a live server with the
shipped checkpoint: they must finish, write their PNGs, and print results that make sense.

"Make sense" is checked against independent facts, not the examples' own numbers: the band narrows
as readings arrive, the error of the mean falls well below the signal's size, the state size never
changes, every value the optimiser prints is the test function at the printed x, and the best
value found beats the random start and comes close to the known minimum.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from service.embedded_redis import EmbeddedRedis
from tests.service.helpers import API_KEYS, REPO, live_server, make_settings

SHIPPED = "cmanp-gp-rbf"
FORRESTER_MIN = -6.020740  # Forrester et al. (2008), f(0.757249)


@pytest.fixture(scope="module")
def shipped_server(redis_server: EmbeddedRedis) -> Iterator[str]:
    if not (REPO / "checkpoints" / f"{SHIPPED}.safetensors").exists():
        pytest.skip(f"checkpoints/{SHIPPED}.safetensors is not in this checkout")
    with live_server(make_settings(redis_server.url, REPO / "checkpoints", default_model=SHIPPED)) as url:
        yield url


def run_example(name: str, url: str, out: Path) -> subprocess.CompletedProcess[str]:
    """Run examples/<name> --quick as a script, with the URL and key from the environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CMANP_URL": url, "CMANP_API_KEY": API_KEYS["alice"]}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def assert_png(path: Path) -> None:
    assert path.exists(), f"{path} was not written"
    height, width, _ = image.imread(path).shape
    assert width > height > 200


def test_streaming_regression(shipped_server: str, tmp_path: Path) -> None:
    out = tmp_path / "streaming.png"
    result = run_example("streaming_regression.py", shipped_server, out)
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+) bytes$", result.stdout, re.MULTILINE)
    readings = [int(r[0]) for r in rows]
    mean_sd, rmse = np.array([[float(r[1]), float(r[2])] for r in rows]).T
    assert readings == [5, 20, 60], result.stdout
    assert np.all(np.diff(mean_sd) < 0), f"the band does not narrow: {mean_sd}"
    assert rmse[-1] < rmse[0] and rmse[-1] < 0.2, f"the mean does not approach the signal (amplitude ~1.3): {rmse}"
    assert len({r[3] for r in rows}) == 1, "the state size changed"
    assert_png(out)


def test_bayes_opt(shipped_server: str, tmp_path: Path) -> None:
    out = tmp_path / "bayes_opt.png"
    result = run_example("bayes_opt.py", shipped_server, out)
    steps = re.findall(r"^\s*\d+ (\w+)\s+x=([\d.]+) f=\s*([+-][\d.]+)", result.stdout, re.MULTILINE)
    kinds = [s[0] for s in steps]
    x, f = np.array([[float(s[1]), float(s[2])] for s in steps]).T
    assert kinds[:3] == ["random"] * 3 and len(kinds) == 13, result.stdout
    np.testing.assert_allclose(f, (6 * x - 2) ** 2 * np.sin(12 * x - 4), atol=2e-4)  # Forrester, to print precision

    # checkpoints/ ships a joint model (cmanp-and-gp-rbf), which the example picks by default.
    assert "sample paths: joint" in result.stdout and set(kinds[3:]) == {"thompson"}, result.stdout

    best_initial, best = f[:3].min(), f.min()
    assert f"initial best f = {best_initial:+.4f}" in result.stdout
    assert best < best_initial and best - FORRESTER_MIN < 0.5, f"no progress: {best_initial} -> {best}"
    assert "session: 13 points" in result.stdout
    assert_png(out)
