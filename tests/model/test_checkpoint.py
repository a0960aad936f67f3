"""Checkpoints carry their config, load without pickle, and detect corruption via the fingerprint."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model import CMANPConfig, load_checkpoint, save_checkpoint
from model.checkpoint import read_metadata
from tests.model.conftest import random_points, small_model


def test_round_trip_keeps_config_weights_and_fingerprint(tmp_path):
    net = small_model(
        seed=3,
        cfg=CMANPConfig(
            dim_x=2,
            dim_y=3,
            d_model=16,
            n_heads=2,
            n_blocks=2,
            n_latents=8,
            ff_width=32,
            embed_depth=2,
            x_range=(-1.0, 1.0),
        ),
    )
    path = tmp_path / "m.safetensors"
    fp = save_checkpoint(net, path, info={"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.cfg == net.cfg and loaded.fingerprint == fp == net.fingerprint
    assert loaded.info == {"note": "test"}
    x, y = random_points(30, net.cfg, seed=1)
    xq = torch.rand(1, 5, 2)
    with torch.no_grad():
        a = net.predict(net.condition(x, y), xq)
        b = loaded.predict(loaded.condition(x, y), xq)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not list(tmp_path.glob("*.tmp"))  # the write is atomic


def test_fingerprint_changes_with_any_weight_and_config(tmp_path):
    a, b = small_model(seed=0), small_model(seed=0)
    assert a.fingerprint == b.fingerprint
    with torch.no_grad():
        b.head[-1].bias[0] += 1e-6
    b.load_state_dict(b.state_dict())  # in-place edits in eval mode need a reload to refresh the cache
    assert a.fingerprint != b.fingerprint


def test_corrupted_weights_are_detected(tmp_path):
    net = small_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(net, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["head.3.bias"] = tensors["head.3.bias"] + 0.5
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="fingerprint"):
        load_checkpoint(path)


def test_foreign_and_garbage_files_are_rejected(tmp_path):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(garbage)
    foreign = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a CMANP checkpoint"):
        read_metadata(foreign)
    bad_cfg = tmp_path / "c.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(bad_cfg),
        metadata={
            "format": "cmanp-checkpoint",
            "format_version": "1",
            "fingerprint": "0" * 32,
            "config": json.dumps({"d_model": 64, "n_heads": 5}),
        },
    )
    with pytest.raises(ValueError, match="not divisible"):
        load_checkpoint(bad_cfg)


def test_image_completion_dims_work_end_to_end():
    """2-D inputs with 3 outputs (image completion) stream exactly, like 1-D."""
    net = small_model(
        cfg=CMANPConfig(dim_x=2, dim_y=3, d_model=16, n_heads=2, n_blocks=2, n_latents=8, ff_width=32, embed_depth=2)
    )
    x, y = random_points(40, net.cfg, seed=2)
    xq = torch.rand(1, 6, 2)
    with torch.no_grad():
        a = net.predict(net.condition(x, y), xq)
        b = net.predict(net.merge(net.condition(x[:, :13], y[:, :13]), net.condition(x[:, 13:], y[:, 13:])), xq)
    assert a[0].shape == (1, 6, 3) and torch.allclose(a[0], b[0], atol=1e-5)
    loss = net.loss(SimpleNamespace(xc=x[:, :30], yc=y[:, :30], xt=x[:, 30:], yt=y[:, 30:]))
    loss.backward()
    assert torch.isfinite(loss)
