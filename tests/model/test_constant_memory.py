"""Acceptance 2 (the test half): the serialised state has the same size at N = 1 and N = 100,000."""

import torch

from model.state import _HEADER
from tests.model.conftest import random_points


@torch.no_grad()
def test_state_bytes_do_not_grow_with_points(net):
    x, y = random_points(100_000, net.cfg, seed=7)
    one = net.condition(x[:, :1], y[:, :1])
    many = net.condition(x, y, chunk_size=4096)
    assert many.num_points.item() == 100_000
    assert len(one.to_bytes()) == len(many.to_bytes())
    # And the size is what the format says: header + count + K*H*L*(Dh+1) float32 + crc.
    K, H, L, Dh = net.cfg.n_blocks, net.cfg.n_heads, net.cfg.n_latents, net.cfg.head_dim
    assert len(many.to_bytes()) == _HEADER.size + 8 + 4 * K * H * L * (Dh + 1) + 4
    mean, var = net.predict(many, torch.zeros(1, 3, net.cfg.dim_x))
    assert torch.isfinite(mean).all() and (var > 0).all()
