"""The heads of ``model/heads.py``, checked against independent computations: the Gaussian head's
std floor from its formula, the joint head's covariance spectrum with numpy, and the joint
log-density with scipy's multivariate normal."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from model.heads import GaussianHead, JointHead, gaussian_log_prob


def test_the_gaussian_head_gives_its_mean_and_a_std_above_its_floor():
    head = GaussianHead(d_model=8, dim_y=2, min_std=0.01)
    last = head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -1.0, 3.0, -40.0]))  # means (0.5, -1), raw stds (3, -40)
    mean, std = head(torch.randn(1, 4, 8))
    assert torch.equal(mean, torch.tensor([0.5, -1.0]).expand(1, 4, 2))
    assert std[0, 0, 0].item() == pytest.approx(0.01 + math.log1p(math.exp(3.0)), rel=1e-6)
    assert std[0, 0, 1].item() == pytest.approx(0.01, rel=1e-6)  # a huge negative raw value: the floor


def test_the_gaussian_head_stays_float32_under_bf16_autocast():
    head = GaussianHead(d_model=8, dim_y=1, min_std=1e-3)
    z = torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, std = head(z.bfloat16())
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, head(z.bfloat16().float())[0])


def joint_head(seed: int = 0, dim_y: int = 2, kernels: int = 0, rank: int = 0) -> JointHead:
    torch.manual_seed(seed)
    return JointHead(
        d_model=16, heads=2, ff_width=32, dim_y=dim_y, cov_features=3, cov_layers=1, min_cov_var=1e-4,
        cov_kernels=kernels, kernel_scales=(0.1, 2.0), kernel_rank=rank,
    )  # fmt: skip


@torch.no_grad()
@pytest.mark.parametrize(("kernels", "rank"), [(0, 0), (4, 0), (4, 2)])
def test_the_joint_covariance_is_symmetric_with_eigenvalues_above_its_floor(kernels, rank):
    head = joint_head(kernels=kernels, rank=rank)
    mean, cov = head(torch.randn(3, 7, 16), torch.randn(3, 7, 1))
    assert mean.shape == (3, 7, 2) and cov.shape == (3, 2, 7, 7) and cov.dtype == torch.float64
    c = cov.numpy()
    assert np.allclose(c, np.swapaxes(c, -1, -2), rtol=0, atol=1e-15)
    # Every other term is positive semi-definite, so the diagonal floor bounds every eigenvalue from below.
    assert np.linalg.eigvalsh(c).min() >= 1e-4 * (1 - 1e-9)


@torch.no_grad()
def test_the_kernel_bank_adds_amplitude_scaled_rbf_kernels_of_the_inputs():
    """With the features and diagonal values fixed by the last layer's bias, the covariance is the
    floor, the diagonal, the features' product and s_i s_j sum_k w_k exp(-|x_i - x_j|^2 / 2 l_k^2),
    computed here with numpy from the formula and l_k = 0.1 * 20^(k/3) (geometric over 0.1..2)."""
    head = joint_head(dim_y=1, kernels=4)
    out, weights = head.cov_out[-1], head.kernel_weights[-1]
    raw = torch.tensor([0.3, -0.2, 0.5, -1.0, 0.7])  # 3 features, diagonal, amplitude
    w_raw = torch.tensor([0.1, -2.0, 1.0, 0.4])
    out.weight.zero_(), out.bias.copy_(raw), weights.weight.zero_(), weights.bias.copy_(w_raw)
    x = torch.randn(2, 6, 2)  # two input dims: the distance is Euclidean
    _, cov = head(torch.randn(2, 6, 16), x)

    def softplus(v):
        return np.log1p(np.exp(np.asarray(v, dtype=np.float64)))

    a, s, w = raw[:3].numpy().astype(np.float64), softplus(0.7), softplus(w_raw.numpy())
    scales = 0.1 * 20.0 ** (np.arange(4) / 3)
    sq = ((x.numpy()[:, :, None, :].astype(np.float64) - x.numpy()[:, None, :, :]) ** 2).sum(-1)
    bank = sum(w[k] * np.exp(-sq / (2 * scales[k] ** 2)) for k in range(4))
    want = a @ a / 3 + (1e-4 + softplus(-1.0)) * np.eye(6) + s * s * bank
    np.testing.assert_allclose(cov[:, 0].numpy(), want, rtol=1e-6)


@torch.no_grad()
def test_a_rank_modulated_bank_gives_each_target_its_own_weight_vector_per_kernel():
    """With kernel_rank r = 2, the bank term is sum_k w_k (u_ik . u_jk / 2) exp(-|x_i - x_j|^2 / 2 l_k^2),
    computed here with numpy from per-target u's that the test sets through the last layer."""
    head = joint_head(dim_y=1, kernels=3, rank=2)
    out, weights = head.cov_out[-1], head.kernel_weights[-1]
    z = torch.randn(1, 5, 16)
    normed = head.cov_out[0](head.cov_layers[0](head.cov_in(z)))  # what the last layer reads
    u = torch.randn(5, 3, 2, dtype=torch.float64)  # per target, kernel and rank
    # Solve for a last layer that outputs features 0, diagonal raw 0 and these u's at the five targets.
    want_out = torch.cat([torch.zeros(5, 4, dtype=torch.float64), u.flatten(1)], 1)  # [5, 3 + 1 + 6]
    design = torch.cat([normed[0].double(), torch.ones(5, 1, dtype=torch.float64)], 1)  # [5, 17]
    solution = torch.linalg.lstsq(design, want_out).solution  # exact: 5 equations, 17 unknowns
    out.weight.copy_(solution[:16].T), out.bias.copy_(solution[16])
    w_raw = torch.tensor([0.2, -1.0, 0.8])
    weights.weight.zero_(), weights.bias.copy_(w_raw)
    x = torch.randn(1, 5, 1)
    _, cov = head(z, x)

    def softplus(v):
        return np.log1p(np.exp(np.asarray(v, dtype=np.float64)))

    w, un, scales = softplus(w_raw.numpy()), u.numpy(), 0.1 * 20.0 ** (np.arange(3) / 2)
    sq = (x.numpy()[0, :, None, 0].astype(np.float64) - x.numpy()[0, None, :, 0]) ** 2
    bank = sum(w[k] * (un[:, k] @ un[:, k].T / 2) * np.exp(-sq / (2 * scales[k] ** 2)) for k in range(3))
    want = (1e-4 + softplus(0.0)) * np.eye(5) + bank
    np.testing.assert_allclose(cov[0, 0].numpy(), want, rtol=1e-5, atol=1e-9)


@torch.no_grad()
def test_the_joint_mean_can_start_from_a_gaussian_heads_mean():
    torch.manual_seed(1)
    gaussian, joint = GaussianHead(16, 2, 1e-3), joint_head(seed=2)
    z, x = torch.randn(2, 5, 16), torch.randn(2, 5, 1)
    assert not torch.allclose(joint(z, x)[0], gaussian(z)[0])
    joint.init_mean_from(gaussian)
    torch.testing.assert_close(joint(z, x)[0], gaussian(z)[0], rtol=0, atol=1e-6)


def test_the_joint_log_density_matches_scipy():
    rng = np.random.default_rng(3)
    B, m, dy = 2, 4, 3
    mean, y = rng.normal(size=(B, m, dy)), rng.normal(size=(B, m, dy))
    a = rng.normal(size=(B, dy, m, m))
    cov = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(m)
    got = gaussian_log_prob(torch.tensor(mean), torch.tensor(cov), torch.tensor(y))
    want = [sum(multivariate_normal(mean[b, :, d], cov[b, d]).logpdf(y[b, :, d]) for d in range(dy)) for b in range(B)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
