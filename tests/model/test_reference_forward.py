"""The vectorised model (blocks stacked, norms folded into weights, batched key/value
projections) computes the CMANP maths of docs/MODEL.md section 3, checked against a plain
re-derivation from the parameters: one block at a time, explicit LayerNorms, softmax attention."""

import pytest
import torch
import torch.nn.functional as F

from model import CMANP
from tests.model.conftest import query_points, random_points


def layer_norm(x, weight=None, bias=None):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-5)
    return x if weight is None else x * weight + bias


def attention(q, k, v, heads, null_score=None, null_value=None):
    """Multi-head softmax attention, q [B, m, D], k/v [B, n, D]; optionally with one more key
    per head and query, of score null_score [H, m] and value null_value [H, m, Dh]."""
    B, m, D = q.shape
    q, k, v = (t.view(B, t.shape[1], heads, D // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / (D // heads) ** 0.5  # [B, H, m, n]
    if null_score is None:
        out = scores.softmax(-1) @ v
    else:
        w = torch.cat([scores, null_score.expand(B, -1, -1).unsqueeze(-1)], dim=-1).softmax(-1)
        out = w[..., :-1] @ v + w[..., -1:] * null_value
    return out.transpose(1, 2).reshape(B, m, D)


def reference(net: CMANP, xc, yc, xt):
    """Predictive mean and std, written out block by block from the state dict."""
    cfg, p = net.cfg, net.state_dict()  # the checkpoint's tensor names
    H, D = cfg.n_heads, cfg.d_model

    def nn_linear(x, name):
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def stacked(x, name, k):
        return x @ p[f"{name}.weight"][k] + p[f"{name}.bias"][k]

    def stacked_norm(x, name, k):
        return layer_norm(x, p[f"{name}.weight"][k], p[f"{name}.bias"][k])

    def norm(x, name):
        return layer_norm(x, p[f"{name}.weight"], p[f"{name}.bias"])

    def lift(x):  # Fourier features: x, sin, cos at periods max * (min / max)^(k / (K - 1)), dimension-major
        K = cfg.fourier_features
        if K == 0:
            return x
        low, high = cfg.fourier_periods
        periods = torch.tensor([high * (low / high) ** (k / (K - 1)) for k in range(K)])
        angles = torch.stack([2 * torch.pi * x[..., d : d + 1] / periods for d in range(cfg.dim_x)], -2).flatten(-2)
        return torch.cat([x, angles.sin(), angles.cos()], -1)

    def mlp(x, name, depth):
        for i in range(depth):
            x = nn_linear(x, f"{name}.{2 * i}")
            x = F.gelu(x) if i < depth - 1 else x
        return x

    def ff(x, name, k=None):
        if k is None:
            return x + nn_linear(F.gelu(nn_linear(norm(x, f"{name}.norm"), f"{name}.fc")), f"{name}.proj")
        h = F.gelu(stacked(stacked_norm(x, f"{name}.norm", k), f"{name}.fc", k))
        return x + stacked(h, f"{name}.proj", k)

    def cross(x, ctx, name):
        q = nn_linear(norm(x, f"{name}.norm_q"), f"{name}.q")
        k, v = nn_linear(norm(ctx, f"{name}.norm_kv"), f"{name}.kv").chunk(2, -1)
        return x + nn_linear(attention(q, k, v, H), f"{name}.out")

    def self_attn(x, name):
        q, k, v = nn_linear(norm(x, f"{name}.norm"), f"{name}.qkv").chunk(3, -1)
        return x + nn_linear(attention(q, k, v, H), f"{name}.out")

    B = xc.shape[0]
    emb = layer_norm(mlp(torch.cat([lift(xc), yc], -1), "context_embed", cfg.embed_depth))
    kv = nn_linear(emb, "data_attn.kv").view(B, -1, cfg.n_blocks, 2, D)
    y = p["input_latents"].expand(B, -1, -1)
    outputs = []
    for k in range(cfg.n_blocks):
        lat = p["data_attn.latents"][k]
        q = stacked(stacked_norm(lat, "data_attn.norm_q", k), "data_attn.q", k).expand(B, -1, -1)
        null_score, null_value = p["data_attn.null_score"][k], p["data_attn.null_value"][k]
        att = attention(q, kv[:, :, k, 0], kv[:, :, k, 1], H, null_score, null_value)
        x = lat + stacked(att, "data_attn.out", k)
        x = ff(x, "latent_stack.ff1", k)
        qkv = stacked(stacked_norm(x, "latent_stack.attn.norm", k), "latent_stack.attn.qkv", k)
        x = x + stacked(attention(*qkv.chunk(3, -1), H), "latent_stack.attn.out", k)
        x = ff(x, "latent_stack.ff2", k)
        r = f"readouts.{k}"
        y = ff(self_attn(ff(cross(y, x, f"{r}.cross"), f"{r}.ff1"), f"{r}.attn"), f"{r}.ff2")
        outputs.append(y)
    z = mlp(lift(xt), "query_embed", cfg.embed_depth)
    for k in range(cfg.n_blocks):
        z = ff(cross(z, outputs[k], f"decoder.{k}.cross"), f"decoder.{k}.ff")
    h = nn_linear(F.gelu(nn_linear(norm(z, "head.0"), "head.1")), "head.3")
    mean, raw = h.chunk(2, -1)
    return mean, cfg.min_std + F.softplus(raw)


@torch.no_grad()
@pytest.mark.parametrize("n", [1, 30])
def test_training_and_streaming_paths_match_the_reference(net, n):
    xc, yc = random_points(n, net.cfg, batch=2, seed=11)
    xt = query_points(7, net.cfg.dim_x, batch=2)
    ref_mean, ref_std = reference(net, xc, yc, xt)
    mean, std = net(xc, yc, xt)
    stream_mean, stream_var = net.predict(net.condition(xc, yc, chunk_size=4), xt)
    for m, s2 in ((mean, std.square()), (stream_mean, stream_var)):
        assert (m - ref_mean).abs().max().item() < 1e-4
        assert ((s2 - ref_std.square()).abs() / ref_std.square()).max().item() < 1e-3
