"""Joint predictions over HTTP: covariances (joint=true) and joint sample paths (num_samples).

Expected numbers come from the model called directly on the same points (model units), mapped to
the caller's units here; the stored session is compared key by key, straight from Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import numpy as np
import pytest
import torch

from model import CMANPAND, load_checkpoint
from service.client import AsyncCMANPClient, CMANPClient, CMANPError, RetryPolicy
from service.registry import ModelRegistry
from tests.service.helpers import API_KEYS, REPO, live_server, make_settings, raw_session, sample_points

# User units: x in [0, 100] maps onto the model's [-2, 2]; y_model = (y - 10) / 3.
X_BOUNDS = {"low": 0.0, "high": 100.0}
Y_AFFINE = {"shift": 10.0, "scale": 3.0}
ALICE = {"Authorization": f"Bearer {API_KEYS['alice']}"}


@pytest.fixture(scope="module")
def and_net(checkpoint_dir) -> CMANPAND:
    return load_checkpoint(checkpoint_dir / "tiny-and.safetensors")


@pytest.fixture
def session(client: CMANPClient) -> tuple[str, np.ndarray, np.ndarray]:
    """A tiny-and session in user units with 30 points; returns (id, x_model, y_model)."""
    session_id = client.create_session(model="tiny-and", x_transform=X_BOUNDS, y_transform=Y_AFFINE).session_id
    x, y = sample_points(30, seed=7)
    client.add_context(session_id, x * 25.0 + 50.0, y * 3.0 + 10.0)
    return session_id, x, y


def _model_state(net: CMANPAND, x: np.ndarray, y: np.ndarray):
    with torch.no_grad():
        return net.condition(torch.tensor(x[None], dtype=torch.float32), torch.tensor(y[None], dtype=torch.float32))


def _queries(m: int) -> np.ndarray:
    return np.linspace(-1.5, 1.5, m)[:, None]  # model units


def test_joint_covariance_is_the_models_in_caller_units(client, session, and_net) -> None:
    session_id, x, y = session
    xq = _queries(6)
    got = client.predict(session_id, xq * 25.0 + 50.0, joint=True)
    with torch.no_grad():
        mean, cov = and_net.joint_predict(_model_state(and_net, x, y), torch.tensor(xq[None], dtype=torch.float32))
    assert got.covariance.shape == (1, 6, 6) and got.samples is None
    np.testing.assert_allclose(got.covariance, cov[0].numpy() * 9.0, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.mean, mean[0].numpy() * 3.0 + 10.0, rtol=0, atol=3e-4)
    np.testing.assert_allclose(got.variance[:, 0], np.diag(got.covariance[0]), rtol=1e-12)
    np.testing.assert_allclose(got.covariance, np.swapaxes(got.covariance, -1, -2), rtol=0, atol=1e-12)
    assert (np.linalg.eigvalsh(got.covariance) > 0).all()


def test_sampling_never_changes_the_session(client, session, and_net, redis_client) -> None:
    session_id, x, y = session
    before, info = raw_session(redis_client, session_id), client.get_session(session_id)
    xq = _queries(20)  # 20 targets: blocks of 8, 8 and 4, each folded into a copy of the state
    got = client.predict(session_id, xq * 25.0 + 50.0, num_samples=5, seed=11)
    assert raw_session(redis_client, session_id) == before
    after = client.get_session(session_id)
    assert (after.num_points, after.version, after.state_bytes) == (info.num_points, info.version, info.state_bytes)

    with torch.no_grad():
        want = and_net.sample(
            _model_state(and_net, x, y),
            torch.tensor(xq[None], dtype=torch.float32),
            5,
            generator=torch.Generator().manual_seed(11),
        )
    assert got.samples.shape == (5, 20, 1) and got.covariance is None
    np.testing.assert_allclose(got.samples, want[:, 0].numpy() * 3.0 + 10.0, rtol=0, atol=1e-3)
    again = client.predict(session_id, xq * 25.0 + 50.0, num_samples=5, seed=11)
    np.testing.assert_array_equal(again.samples, got.samples)  # the seed reproduces the draws
    other = client.predict(session_id, xq * 25.0 + 50.0, num_samples=5)
    assert not np.array_equal(other.samples, got.samples)  # without a seed, fresh draws


def test_joint_requests_beyond_the_limits_are_refused(client, server, session, redis_client) -> None:
    session_id, _, _ = session
    before = raw_session(redis_client, session_id)
    with pytest.raises(CMANPError) as caught:
        client.predict(session_id, np.linspace(0, 100, 9), joint=True)  # b_Q = 8
    assert caught.value.status == 422 and "at most 8 targets" in caught.value.detail
    assert "num_samples" in caught.value.detail  # it points to sampling
    with pytest.raises(CMANPError) as caught:
        client.predict(session_id, np.linspace(0, 100, 21), num_samples=1000)  # 21,000 > 20,000
    assert caught.value.status == 422 and "CMANP_MAX_SAMPLE_VALUES" in caught.value.detail
    plain = client.create_session(model="tiny").session_id
    with pytest.raises(CMANPError) as caught:
        client.predict(plain, [0.5], num_samples=2)
    assert caught.value.status == 422 and "no joint head" in caught.value.detail
    for body, words in [
        ({"x": [[1.0]], "num_samples": 0}, "num_samples"),
        ({"x": [[1.0]], "seed": 3}, "seed is only used with num_samples"),
        ({"x": [[1.0]], "joint": "yes"}, "joint"),
        ({"x": [[1.0]], "num_samples": 2.5}, "num_samples"),
    ]:
        response = httpx.post(f"{server}/v1/sessions/{session_id}/predict", json=body, headers=ALICE)
        assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert raw_session(redis_client, session_id) == before


@pytest.fixture(scope="module")
def strict_server(redis_server, checkpoint_dir) -> Iterator[str]:
    settings = make_settings(redis_server.url, checkpoint_dir, max_joint_targets=3, max_sample_values=50)
    with live_server(settings) as url:
        yield url


def test_limits_follow_the_settings(strict_server) -> None:
    with CMANPClient(strict_server, API_KEYS["alice"], retry=RetryPolicy(retries=0)) as client:
        session_id = client.create_session(model="tiny-and").session_id
        assert client.predict(session_id, [0.1, 0.2, 0.3], joint=True).covariance.shape == (1, 3, 3)
        with pytest.raises(CMANPError, match="at most 3 targets"):
            client.predict(session_id, [0.1, 0.2, 0.3, 0.4], joint=True)
        assert client.predict(session_id, np.zeros(5), num_samples=10).samples.shape == (10, 5, 1)
        with pytest.raises(CMANPError, match="10 x 6 = 60 exceeds the limit of 50"):
            client.predict(session_id, np.zeros(6), num_samples=10)


def test_async_client_returns_joint_fields(server, session) -> None:
    session_id, _, _ = session

    async def run():
        async with AsyncCMANPClient(server, API_KEYS["alice"]) as client:
            return await client.predict(session_id, [10.0, 20.0, 30.0], joint=True, num_samples=4, seed=1)

    got = anyio.run(run)
    assert got.covariance.shape == (1, 3, 3) and got.samples.shape == (4, 3, 1)


def test_the_shipped_joint_model_is_served() -> None:
    if not (REPO / "checkpoints" / "cmanp-and-gp-rbf.safetensors").exists():
        pytest.skip("no shipped CMANP-AND checkpoint")
    served = ModelRegistry.load(REPO / "checkpoints", "cmanp-gp-rbf").get("cmanp-and-gp-rbf")
    assert isinstance(served.net, CMANPAND) and served.joint_block_size == served.net.cfg.block_size == 50
    assert served.metrics["fingerprint"] == served.fingerprint  # the card's numbers belong to these weights
