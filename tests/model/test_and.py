"""CMANP-AND: joint covariances, autoregressive joint LL, sampling, and its checkpoint format.

Numbers are checked against independent computations: numpy eigenvalues, torch's
MultivariateNormal on manually conditioned copies of the state, and the Wishart sampling error.
"""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import CMANP, CMANPAND, CMANPANDConfig, load_checkpoint, save_checkpoint
from model.checkpoint import read_metadata
from tests.model.conftest import SMALL, SMALL_AND, random_points, small_model, small_or_shipped

AND_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "cmanp-and-gp-rbf.safetensors"


def small_and(seed: int = 0) -> CMANPAND:
    return small_model(seed, SMALL_AND)


@pytest.fixture(scope="module", params=["small", "shipped"])
def and_net(request: pytest.FixtureRequest) -> CMANPAND:
    return small_or_shipped(request.param, small_and(), AND_CHECKPOINT)


def _state_and_queries(net: CMANPAND, m: int, n: int = 12, seed: int = 0):
    x, y = random_points(n, net.cfg, batch=2, seed=seed)
    xq, yq = random_points(m, net.cfg, batch=2, seed=seed + 1)
    with torch.no_grad():
        return net.condition(x, y), xq, yq


def test_joint_covariance_is_symmetric_positive_definite(and_net):
    state, xq, _ = _state_and_queries(and_net, m=and_net.cfg.block_size)
    with torch.no_grad():
        _, cov = and_net.joint_predict(state, xq)
    assert cov.shape == (2, and_net.cfg.dim_y, and_net.cfg.block_size, and_net.cfg.block_size)
    c = cov.numpy()
    assert np.allclose(c, np.swapaxes(c, -1, -2), rtol=0, atol=1e-12)
    assert (np.linalg.eigvalsh(c) > 0).all()


def test_autoregressive_joint_ll_is_the_sum_of_its_blocks(and_net):
    # 7 targets in blocks of 3: blocks of 3, 3 and 1; each block conditioned on a manual copy.
    state, xq, yq = _state_and_queries(and_net, m=7)
    blocks = [(0, 3), (3, 6), (6, 7)]
    expected = torch.zeros(2, dtype=torch.float64)
    copy = state
    with torch.no_grad():
        for lo, hi in blocks:
            mean, cov = and_net.joint_predict(copy, xq[:, lo:hi])
            for d in range(and_net.cfg.dim_y):
                mvn = torch.distributions.MultivariateNormal(mean[..., d].double(), covariance_matrix=cov[:, d])
                expected += mvn.log_prob(yq[:, lo:hi, d].double())
            copy = and_net.update(copy, xq[:, lo:hi], yq[:, lo:hi])
        got = and_net.joint_log_prob(state, xq, yq, block_size=3)
        one_block = and_net.joint_log_prob(state, xq, yq, block_size=7)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, one_block, rtol=1e-5, atol=1e-4)  # the blocking really changed something


def test_sampling_leaves_the_state_unchanged(and_net):
    state, xq, _ = _state_and_queries(and_net, m=2 * and_net.cfg.block_size + 3)
    before = state.to_bytes()
    with torch.no_grad():
        paths = and_net.sample(state, xq, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert paths.shape == (3, 2, xq.shape[1], and_net.cfg.dim_y)
    assert torch.isfinite(paths).all()
    assert state.to_bytes() == before


def test_empirical_covariance_of_samples_matches_the_joint_covariance(and_net):
    """4000 draws: each sample-covariance entry has variance (S_ii S_jj + S_ij^2) / n (Wishart);
    each entry must lie within 5 of those standard errors (and each mean within 5 of its own)."""
    n, m = 4000, 6
    state, _, _ = _state_and_queries(and_net, m=m)
    # Close targets give strongly correlated outputs, so a wrong factor or a dropped
    # off-diagonal term is far outside the tolerance.
    xq = torch.linspace(-0.3, 0.3, m).view(1, m, 1).expand(2, m, and_net.cfg.dim_x).contiguous()
    with torch.no_grad():
        mean, cov = and_net.joint_predict(state, xq)
        paths = and_net.sample(state, xq, num_samples=n, generator=torch.Generator().manual_seed(1))
    for b in range(2):
        for d in range(and_net.cfg.dim_y):
            draws = paths[:, b, :, d].double().numpy()  # [n, m]
            sigma = cov[b, d].numpy()
            emp = np.cov(draws, rowvar=False)
            se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)
            assert (np.abs(emp - sigma) <= 5 * se).all(), np.max(np.abs(emp - sigma) / se)
            mean_se = np.sqrt(np.diag(sigma) / n)
            assert (np.abs(draws.mean(0) - mean[b, :, d].numpy()) <= 5 * mean_se).all()


def test_sampling_is_reproducible_and_crosses_sample_groups():
    net = small_and()
    state, xq, _ = _state_and_queries(net, m=10)
    with torch.no_grad():
        a = net.sample(state, xq, 300, block_size=4, generator=torch.Generator().manual_seed(5))
        b = net.sample(state, xq, 300, block_size=4, generator=torch.Generator().manual_seed(5))
    assert a.shape == (300, 2, 10, 1) and torch.equal(a, b)
    assert a[:, 0].std(0).min() > 0  # the paths differ


def test_bad_arguments_are_refused():
    net = small_and()
    state, xq, yq = _state_and_queries(net, m=net.cfg.block_size + 1)
    with pytest.raises(ValueError, match="exceed the joint block size"):
        net.joint_predict(state, xq)
    with pytest.raises(ValueError, match="num_samples"):
        net.sample(state, xq, 0)
    with pytest.raises(ValueError, match="block_size"):
        net.sample(state, xq, 1, block_size=net.cfg.block_size + 1)
    with pytest.raises(ValueError, match="points but yq"):
        net.joint_log_prob(state, xq, yq[:, :-1])


def test_checkpoint_records_the_architecture(tmp_path):
    net = small_and(seed=2)
    path = tmp_path / "and.safetensors"
    save_checkpoint(net, path)
    assert read_metadata(path)["architecture"] == "cmanp-and"
    loaded = load_checkpoint(path)
    assert type(loaded) is CMANPAND and loaded.cfg == net.cfg and loaded.fingerprint == net.fingerprint
    state, xq, _ = _state_and_queries(net, m=5)
    with torch.no_grad():
        expected = net.joint_predict(state, xq)
        got = loaded.joint_predict(loaded.state_from_bytes(state.to_bytes()), xq)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_joint_training_loss_is_the_per_target_joint_ll():
    net = small_and(seed=1)
    x, y = random_points(9, net.cfg, batch=3, seed=4)
    xt, yt = random_points(5, net.cfg, batch=3, seed=5)
    with torch.no_grad():
        ll = net.log_likelihood(x, y, xt, yt)
        expected = net.joint_log_prob(net.condition(x, y), xt, yt) / 5
    assert torch.allclose(ll.double(), expected, atol=1e-5)
    empty_context = SimpleNamespace(xc=x[:, :0], yc=y[:, :0], xt=xt, yt=yt)
    assert math.isfinite(net.loss(empty_context).item())  # the empty context works too


def test_the_loss_adds_the_marginal_ll_only_when_the_base_trains():
    """Frozen base: minus the joint LL per target. Trained base: minus the marginal head's mean
    Gaussian LL too, computed here from ``predict`` (mean, variance) with torch's Normal."""
    net = small_and(seed=3)
    x, y = random_points(9, net.cfg, batch=3, seed=6)
    xt, yt = random_points(5, net.cfg, batch=3, seed=7)
    batch = SimpleNamespace(xc=x, yc=y, xt=xt, yt=yt)
    with torch.no_grad():
        state = net.condition(x, y)
        joint = (net.joint_log_prob(state, xt, yt) / 5).mean()
        mean, var = net.predict(state, xt)
        marginal = torch.distributions.Normal(mean, var.sqrt()).log_prob(yt).mean()
        assert net.loss(batch).item() == pytest.approx(-(joint + marginal).item(), abs=1e-4)
        for p in net.base_parameters():
            p.requires_grad_(False)
        assert net.loss(batch).item() == pytest.approx(-joint.item(), abs=1e-4)


def test_a_plain_cmanp_checkpoint_still_loads_as_cmanp(tmp_path):
    base = CMANP(SMALL)
    path = tmp_path / "base.safetensors"
    save_checkpoint(base, path)
    assert type(load_checkpoint(path)) is CMANP


def test_the_kernel_bank_is_in_the_config_only_when_used():
    """A head without a bank writes the config it had before the option existed (so checkpoints trained
    then keep their fingerprints); one with a bank records its size and length-scales, and bad ones are refused."""
    plain = CMANPANDConfig(**SMALL.to_dict())
    assert "cov_kernels" not in plain.to_dict() and "kernel_scales" not in plain.to_dict()
    banked = CMANPANDConfig(**SMALL.to_dict(), cov_kernels=4, kernel_scales=(0.1, 3.0))
    assert CMANPANDConfig.from_dict(banked.to_dict()) == banked
    assert banked.to_dict()["kernel_scales"] == [0.1, 3.0]
    assert "kernel_rank" not in banked.to_dict()
    modulated = CMANPANDConfig(**SMALL.to_dict(), cov_kernels=4, kernel_rank=2)
    assert CMANPANDConfig.from_dict(modulated.to_dict()) == modulated and modulated.to_dict()["kernel_rank"] == 2
    bad_configs = (
        {"cov_kernels": -1}, {"kernel_scales": (0.0, 1.0)}, {"kernel_scales": (2.0, 1.0)}, {"kernel_rank": 2},
        {"cov_kernels": 4, "kernel_rank": -1},
    )  # fmt: skip
    for bad in bad_configs:
        with pytest.raises(ValueError, match="cov_kernels|kernel_scales|kernel_rank"):
            CMANPANDConfig(**SMALL.to_dict(), **bad)
