"""Grouped-query attention: k, v with H_kv heads dividing H (query head h reads key head
h // (H // H_kv)), against SDPA's enable_gqa and the float64 dense reference."""

import pytest
import torch

import spattn

from .test_decode import dense_reference


def _expand(x, H):
    return x.repeat_interleave(H // x.shape[1], 1)


def _inputs(B, H, Hkv, m, n, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, m, D, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(B, Hkv, n, D, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(B, Hkv, n, D, generator=g, dtype=dtype).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("m,n", [(1, 97), (5, 64), (16, 131), (40, 40), (77, 77), (33, 200)])
@pytest.mark.parametrize("Hkv", [1, 2])
def test_causal_equals_sdpa_enable_gqa(m, n, Hkv):
    q, k, v = _inputs(2, 4, Hkv, m, n, 16)
    out = spattn.attention(q, k, v, "causal")
    mask = torch.ones(m, n, dtype=torch.bool).tril(n - m)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                           enable_gqa=True)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g),
                    torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("m,n", [(3, 50), (16, 16), (24, 61)])
def test_per_head_patterns_that_split_groups(backend, m, n):
    pats = ["streaming(2, 5)", "local(3) | global([0])", "strided(4)", "strided(4)",
            "causal", "block(7)"]
    q, k, v = _inputs(1, 6, 3, m, n, 8)
    out = spattn.attention(q, k, v, pats, backend=backend)
    ref = dense_reference(q, _expand(k, 6), _expand(v, 6), pats)
    torch.testing.assert_close(out.double(), ref)
    g = torch.randn_like(out)
    ke, ve = _expand(k, 6), _expand(v, 6)
    want = torch.autograd.grad(dense_reference(q, ke, ve, pats), (q, k, v), g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), want):
        torch.testing.assert_close(a.double(), b.double())


@pytest.mark.parametrize("n", [7, 17])  # the few-query path (m <= 16) and the tile path
def test_double_backward_with_groups(n):
    q, k, v = _inputs(1, 2, 1, n, n, 2)  # gradgradcheck is quadratic in the inputs: keep it small
    assert torch.autograd.gradgradcheck(
        lambda a, b, c: spattn.attention(a, b, c, "local(1) | global([0])"), (q, k, v))


def test_kvcache_with_groups():
    q, k, v = _inputs(1, 4, 2, 60, 60, 8)
    cache = spattn.KVCache("streaming(2, 9)")
    outs, L = [], 0
    with torch.no_grad():
        for t in [20, 1, 1, 7, 1, 30]:
            outs.append(cache.attend(q[:, :, L:L + t], k[:, :, L:L + t], v[:, :, L:L + t]))
            L += t
        ref = dense_reference(q, _expand(k, 4), _expand(v, 4), ["streaming(2, 9)"] * 4)
    torch.testing.assert_close(torch.cat(outs, 2), ref.to(torch.float64))


def test_heads_that_do_not_divide_are_refused():
    q = torch.randn(1, 4, 2, 8)
    k = torch.randn(1, 3, 2, 8)
    with pytest.raises(spattn.ShapeError, match="divide"):
        spattn.attention(q, k, k, "causal")
