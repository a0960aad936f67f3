"""bf16 autocast and torch.compile in training: the same gradients as float32 eager, within
bf16's precision, and a loss that goes down. Float32 eager is the independent reference."""

import functools

import pytest
import torch

from model import CMANPConfig
from model.data.gp import GPSampler
from model.train import train_step, training_loss

from .conftest import SMALL, SMALL_AND, small_model

# One block of each kind, one embedder layer: the compile test's graph, a third of SMALL's, compiles in
# a third of the time and still runs every operator the model has.
ONE_BLOCK = CMANPConfig(**{**SMALL.to_dict(), "n_blocks": 1, "embed_depth": 1})


def batch(seed: int = 0):
    return GPSampler("rbf").sample(8, 20, 30, torch.Generator().manual_seed(seed))


def gradients(net, loss_fn) -> tuple[float, torch.Tensor]:
    """The loss and the flattened gradient of every parameter, from one backward pass."""
    b = batch()
    net.zero_grad(set_to_none=True)
    loss = loss_fn(b)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()])


def assert_close_to_fp32(precision: str, compile: bool, rel_tol: float) -> None:
    net = small_model().train()
    ref_loss, ref = gradients(net, training_loss(net, "fp32"))
    loss, grad = gradients(net, training_loss(net, precision, compile))
    assert abs(loss - ref_loss) <= rel_tol * abs(ref_loss)
    assert (grad - ref).norm() <= rel_tol * ref.norm()
    if precision == "bf16":
        assert not torch.equal(grad, ref)  # autocast did take effect


def test_bf16_gradients_match_fp32_within_bf16_precision():
    # bf16 keeps 8 significant bits (0.4%); the whole gradient drifts by 0.5% here (measured).
    assert_close_to_fp32("bf16", compile=False, rel_tol=0.03)


def test_bf16_keeps_the_likelihood_in_float32():
    net = small_model().train()
    b = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, std = net(b.xc, b.yc, b.xt)
    assert mean.dtype == std.dtype == torch.float32
    with torch.no_grad():
        fp32_mean, _ = net(b.xc, b.yc, b.xt)
    assert not torch.equal(mean, fp32_mean)  # the encoder did run in bf16


def test_bf16_is_refused_for_the_joint_head():
    with pytest.raises(ValueError, match="not validated for cmanp-and"):
        training_loss(small_model(cfg=SMALL_AND), "bf16")
    with pytest.raises(ValueError, match="precision"):
        training_loss(small_model(), "fp16")


@pytest.mark.slow
def test_compiled_bf16_training_matches_eager_fp32_and_learns(monkeypatch: pytest.MonkeyPatch):
    # The configured bf16 path through torch.compile's tracing (dynamo, dynamic shapes, AOT autograd:
    # where our code can break it), on the aot_eager backend: inductor's C++ code generation is
    # torch's, and took 2-3 minutes cold on 2 busy cores (aot_eager: ~35 s). `make bench` trains
    # with inductor (train_throughput's bf16-compiled option). A wrong trace would move the gradient
    # far beyond bf16's 3% (see the eager bf16 test).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    net = small_model(cfg=ONE_BLOCK).train()
    ref_loss, ref = gradients(net, training_loss(net, "fp32"))
    loss_fn = training_loss(net, "bf16", compile=True)  # compiled once, checked, then trained with
    loss, grad = gradients(net, loss_fn)
    assert abs(loss - ref_loss) <= 0.03 * abs(ref_loss) and (grad - ref).norm() <= 0.03 * ref.norm()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = [train_step(net, opt, batch(), 1.0, loss_fn).item() for _ in range(40)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3  # nats per target, on a repeated batch
