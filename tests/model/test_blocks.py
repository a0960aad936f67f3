"""The building blocks of ``model/blocks.py``, checked against independent computations: stacked
maps against one plain module per block, attention against a float64 softmax written out, and
cross-attention against ``torch.nn.MultiheadAttention`` with the same weights."""

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import (
    CrossAttention,
    FeedForward,
    SelfAttention,
    StackedLayerNorm,
    StackedLinear,
    attend,
    merge_heads,
    mlp_layers,
    split_heads,
)

K, D = 3, 8


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn afresh (norms too, which start at ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def plain_linear(stacked: StackedLinear, k: int) -> nn.Linear:
    """Block k of a stacked map as an nn.Linear (StackedLinear keeps weights as [in, out])."""
    lin = nn.Linear(*stacked.weight.shape[1:])
    with torch.no_grad():
        lin.weight.copy_(stacked.weight[k].T)
        lin.bias.copy_(stacked.bias[k, 0])
    return lin


def plain_norm(stacked: StackedLayerNorm, k: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(stacked.weight.shape[-1])
    with torch.no_grad():
        norm.weight.copy_(stacked.weight[k, 0])
        norm.bias.copy_(stacked.bias[k, 0])
    return norm


@torch.no_grad()
def test_a_stacked_linear_map_with_its_norm_is_one_layernorm_and_linear_per_block():
    lin, norm = randomise(StackedLinear(K, D, 5)), randomise(StackedLayerNorm(K, D), seed=1)
    x = torch.randn(K, 2, 7, D)
    got = lin(x, norm=norm)
    for k in range(K):
        torch.testing.assert_close(got[k], plain_linear(lin, k)(plain_norm(norm, k)(x[k])), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lin(x)[k], plain_linear(lin, k)(x[k]), rtol=1e-5, atol=1e-5)


def softmax_attention(q, k, v):
    """Attention written out in float64."""
    q, k, v = q.double(), k.double(), v.double()
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v


def test_attention_is_the_scaled_softmax_in_float32_and_close_in_bf16():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(K, 2, 4, n, 6, generator=g) for n in (5, 9, 9))  # 5-D: block, batch, head
    want = softmax_attention(q, k, v)
    torch.testing.assert_close(attend(q, k, v).double(), want, rtol=1e-5, atol=1e-6)
    bf16 = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    torch.testing.assert_close(bf16.double(), want, rtol=0.05, atol=0.05)


def test_splitting_and_merging_heads_are_inverse():
    x = torch.randn(2, 7, D)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 7, 2) and torch.equal(heads[:, 1, :, :], x[..., 2:4])
    assert torch.equal(merge_heads(heads), x)


@torch.no_grad()
def test_stacked_self_attention_and_feed_forward_are_independent_per_block():
    attn, ff = randomise(SelfAttention(D, 2, stack=K)), randomise(FeedForward(D, 16, stack=K), seed=3)
    x = torch.randn(K, 2, 5, D)
    got_attn, got_ff = attn(x), ff(x)
    for k in range(K):
        plain = SelfAttention(D, 2)
        plain.norm, plain.qkv, plain.out = (
            plain_norm(attn.norm, k),
            plain_linear(attn.qkv, k),
            plain_linear(attn.out, k),
        )
        torch.testing.assert_close(got_attn[k], plain(x[k]), rtol=1e-5, atol=1e-5)
        fc, proj = plain_linear(ff.fc, k), plain_linear(ff.proj, k)
        want_ff = x[k] + proj(F.gelu(fc(plain_norm(ff.norm, k)(x[k]))))  # pre-LN GELU MLP, residual
        torch.testing.assert_close(got_ff[k], want_ff, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_cross_attention_is_torchs_multihead_attention_with_a_residual():
    cross = randomise(CrossAttention(D, 2), seed=4)
    mha = nn.MultiheadAttention(D, 2, batch_first=True)
    mha.in_proj_weight.copy_(torch.cat([cross.q.weight, cross.kv.weight]))  # q, then k and v
    mha.in_proj_bias.copy_(torch.cat([cross.q.bias, cross.kv.bias]))
    mha.out_proj.weight.copy_(cross.out.weight)
    mha.out_proj.bias.copy_(cross.out.bias)
    x, context = torch.randn(2, 4, D), torch.randn(2, 11, D)
    keys = cross.norm_kv(context)
    want = x + mha(cross.norm_q(x), keys, keys, need_weights=False)[0]
    torch.testing.assert_close(cross(x, context), want, rtol=1e-5, atol=1e-5)


def test_an_mlp_has_depth_linear_layers_with_gelus_between():
    net = nn.Sequential(*mlp_layers(3, D, depth=3))
    assert [type(m) for m in net] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert list(dict(net.named_parameters())) == [f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    assert net(torch.randn(5, 3)).shape == (5, D)
