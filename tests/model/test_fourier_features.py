"""``model.fourier_features``: x, then sin and cos of x at a geometric ladder of periods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import CMANPConfig
from model.fourier_features import FourierFeatures


def test_features_are_x_then_sines_then_cosines_at_the_ladder_of_periods() -> None:
    features = FourierFeatures(dim_x=2, n_freqs=3, periods=(0.5, 8.0))
    x = torch.tensor([[0.3, -1.2], [1.7, 0.05]], dtype=torch.float64)
    out = features(x).numpy()
    periods = np.array([8.0, 2.0, 0.5])  # geometric from the longest to the shortest, both ends included
    angles = 2 * math.pi * x.numpy()[:, :, None] / periods  # [n, dx, K]
    expected = np.concatenate([x.numpy(), np.sin(angles).reshape(2, -1), np.cos(angles).reshape(2, -1)], axis=1)
    assert features.dim_out == out.shape[1] == 2 * (1 + 2 * 3)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_no_features_is_the_identity_and_bad_ladders_are_refused() -> None:
    x = torch.randn(3, 5, 1)
    assert FourierFeatures(1, 0, (0.1, 8.0))(x) is x
    for n, periods in ((-1, (0.1, 8.0)), (4, (8.0, 0.1)), (4, (0.0, 8.0))):
        with pytest.raises(ValueError, match="period"):
            FourierFeatures(1, n, periods)
    with pytest.raises(ValueError, match="period"):
        CMANPConfig(fourier_features=4, fourier_periods=(2.0, 1.0))


def test_the_paper_config_keeps_its_dict_and_a_fourier_config_round_trips() -> None:
    assert "fourier_features" not in CMANPConfig().to_dict()  # fingerprints of existing checkpoints unchanged
    cfg = CMANPConfig(fourier_features=12, fourier_periods=(0.1, 8.0))
    assert CMANPConfig.from_dict(cfg.to_dict()) == cfg
