"""The peers in bench/baselines compute what they claim, checked against independent computations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.baselines.incremental_gp import IncrementalGP
from bench.baselines.transformer_hawkes import THPConfig, TransformerHawkes
from bench.baselines.transformer_np import TNPConfig, TransformerNP
from model.data.gp import GPSampler
from model.gp_oracle import gp_predict


def gp_for(batch, capacity: int) -> IncrementalGP:
    """An empty incremental GP with the true kernel and hyperparameters of the batch's first task."""
    hyp = (batch.kernel, float(batch.length[0]), float(batch.scale[0]), float(batch.period[0]), batch.noise_std)
    return IncrementalGP(capacity, 1, *hyp)


def test_incremental_gp_matches_the_batch_cholesky_oracle():
    g = torch.Generator().manual_seed(3)
    batch = GPSampler("matern").sample(1, 60, 25, g)
    gp = gp_for(batch, capacity=80)
    gp.fit(batch.xc[0, :30], batch.yc[0, :30, 0])
    for i in range(30, 60):  # the other half one point at a time
        gp.add(batch.xc[0, i], float(batch.yc[0, i, 0]))
    mean, var = gp.predict(batch.xt[0])
    want_mean, want_var = gp_predict(batch)
    torch.testing.assert_close(mean, want_mean[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(var, want_var[0], rtol=0, atol=1e-9)
    assert gp.memory_bytes >= 8 * 80 * 80


def test_incremental_gp_truncate_forgets_points():
    g = torch.Generator().manual_seed(4)
    batch = GPSampler("rbf").sample(1, 20, 5, g)
    gp = gp_for(batch, capacity=32)
    gp.fit(batch.xc[0, :10], batch.yc[0, :10, 0])
    before = gp.predict(batch.xt[0])
    for i in range(10, 20):
        gp.add(batch.xc[0, i], float(batch.yc[0, i, 0]))
    gp.truncate(10)
    after = gp.predict(batch.xt[0])
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)


def _masked_reference(net: TransformerNP, xc, yc, xt):
    """TNP-D as one masked self-attention over context + target tokens (the textbook form)."""
    n, m = xc.shape[1], xt.shape[1]
    tokens = torch.cat(
        [
            net.embed(torch.cat([xc, yc, torch.ones(1, n, 1)], dim=-1)),
            net.embed(torch.cat([xt, torch.zeros(1, m, 2)], dim=-1)),
        ],
        dim=1,
    )
    allowed = torch.zeros(n + m, n + m, dtype=torch.bool)
    allowed[:, :n] = True  # every token attends to the context tokens only
    for layer in net.layers:
        q, k, v = (layer._split(t) for t in layer.qkv(layer.norm(tokens)).chunk(3, dim=-1))
        tokens = tokens + layer.out(
            F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).flatten(-2)
        )
        tokens = tokens + layer.ff(tokens)
    mean, raw = net.head(tokens[:, n:]).chunk(2, dim=-1)
    return mean, 1e-3 + F.softplus(raw)


def test_transformer_np_equals_the_masked_single_pass():
    torch.manual_seed(0)
    net = TransformerNP(TNPConfig(d_model=32, n_heads=4, n_layers=3, ff_width=48, embed_depth=2)).eval()
    xc, yc, xt = torch.randn(1, 17, 1), torch.randn(1, 17, 1), torch.randn(1, 9, 1)
    with torch.no_grad():
        got = net(xc, yc, xt)
        want = _masked_reference(net, xc, yc, xt)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert math.isfinite(float(got[1].min()))


def _dense_causal_reference(net: TransformerHawkes, times: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
    """The encoder with an explicit lower-triangular mask over materialised attention weights."""
    x = net.mark_embed(marks)
    d = net.cfg.d_model
    j = torch.arange(d // 2, dtype=torch.float64)
    angle = times.unsqueeze(-1) / 10000.0 ** (2 * j / d)  # THP: z(t)_{2j} = sin, z(t)_{2j+1} = cos
    encoding = torch.zeros(*times.shape, d, dtype=torch.float64)
    encoding[..., 0::2], encoding[..., 1::2] = angle.sin(), angle.cos()
    x = x + encoding.float()
    n = times.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    for layer in net.layers:
        q, k, v = (t.unflatten(-1, (layer.heads, -1)).transpose(1, 2) for t in layer.qkv(layer.norm(x)).chunk(3, -1))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        weights = scores.masked_fill(~allowed, -math.inf).softmax(-1)
        x = x + layer.out((weights @ v).transpose(1, 2).flatten(-2))
        x = x + layer.ff(x)
    return net.norm(x)


def test_transformer_hawkes_is_a_causal_thp_encoder():
    """The fused causal encoder equals a dense masked one; an event's encoding ignores later events,
    so re-encoding a longer history gives the shorter one's forecast at the shorter one's end."""
    torch.manual_seed(1)
    net = TransformerHawkes(THPConfig(num_marks=3, d_model=32, n_heads=4, n_layers=2, ff_width=48)).eval()
    times = torch.cumsum(torch.rand(2, 30, dtype=torch.float64), 1) + 1e5  # late times keep their resolution
    marks = torch.randint(0, 3, (2, 30))
    with torch.no_grad():
        got = net.encode(times, marks)
        torch.testing.assert_close(got, _dense_causal_reference(net, times, marks), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.encode(times[:, :20], marks[:, :20]), got[:, :20], rtol=1e-5, atol=1e-5)
        quantiles, mean, probs = net.forecast(times[:, :20], marks[:, :20])
        mixture, mark_logp = net.head(got[:, 19])
    assert quantiles.shape == (2, 3) and (quantiles.diff(dim=1) > 0).all() and (mean > 0).all()
    torch.testing.assert_close(probs, mark_logp.exp())
    torch.testing.assert_close(mean, mixture.double().mean_residual(torch.zeros(2, dtype=torch.float64)))
