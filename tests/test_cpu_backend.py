"""The CPU backend against the independent references (tests/reference.py).

Exactness (float32 within 1e-5 relative of a float64 dense masked softmax), gradients against
autograd through the dense reference and ``torch.autograd.gradcheck`` in float64, dtypes,
per-head patterns, m < n, empty rows, hypothesis-generated patterns up to n = 2048, and the
resource properties (plan work proportional to the pattern, S1 at n = 131,072).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import dense_attention, oracle_mask
from spattn.backends.cpu import CPUBackend, get_plan
from strategies import patterns

import spattn

SUITE = [
    "local(64) | global([0,-1])",
    "strided(128)",
    "fixed(128, 16) & causal",
    "bigbird(64, [0:4], 8)",
    "dilated(32, 4) | local(16)",
    "streaming(4, 256)",
    "block(256)",
]


def _qkv(B, H, m, n, D, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, m, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, H, n, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, H, n, D, generator=g, dtype=torch.float64).to(dtype)
    if grad:
        for x in (q, k, v):
            x.requires_grad_()
    return q, k, v


def _rel(out, ref) -> float:
    """Max abs error relative to the reference's largest magnitude (1 for an all-zero one)."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))


def _ref_grads(q, k, v, masks, g, scale=None):
    """Gradients of sum(out * g) through a float64 dense masked softmax (empty rows: 0)."""
    H, m, n = q.shape[1], q.shape[2], k.shape[2]
    if isinstance(masks, np.ndarray):
        masks = [masks] * H
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    mk = torch.stack([torch.from_numpy(np.ascontiguousarray(mm[n - m:])) for mm in masks])
    s = (q64 @ k64.transpose(-1, -2)) * scale
    s = s.masked_fill(~mk, -1e300)
    p = torch.softmax(s, -1) * mk
    out = p @ v64
    return torch.autograd.grad((out * g.double()).sum(), (q64, k64, v64))


@pytest.mark.parametrize("text", SUITE)
@pytest.mark.parametrize("n,m", [(777, 777), (777, 300)])
def test_suite_float32_exact(text, n, m):
    q, k, v = _qkv(1, 2, m, n, 32)
    out = spattn.attention(q, k, v, text, backend="cpu")
    assert out.dtype == torch.float32 and out.shape == q.shape
    ref = dense_attention(q, k, v, oracle_mask(text, n))
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("text", SUITE)
def test_suite_gradients_float32(text):
    n, m = 555, 400
    q, k, v = _qkv(1, 2, m, n, 16, grad=True)
    out = spattn.attention(q, k, v, text, backend="cpu")
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad((out * g).sum(), (q, k, v))
    rq, rk, rv = _ref_grads(q, k, v, oracle_mask(text, n), g)
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("text,n,m", [
    ("local(2) | global([0])", 20, 20),
    ("strided(4)", 19, 11),
    ("dilated(2, 3) | sink(2)", 17, 17),
    ("rows([3, 7]) & local(1)", 13, 13),  # mostly empty rows
    ("random(3, seed=1) | block(5)", 21, 9),
])
def test_gradcheck_float64(text, n, m):
    q, k, v = _qkv(2, 2, m, n, 4, torch.float64, grad=True)

    def f(q, k, v):
        return spattn.attention(q, k, v, text, backend="cpu", scale=0.7)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)


def test_gradcheck_per_head_float64():
    pats = ["local(1)", "stride(3) & causal", "none"]
    q, k, v = _qkv(1, 3, 7, 15, 4, torch.float64, grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: spattn.attention(q, k, v, pats, backend="cpu"), (q, k, v),
        eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_per_head_patterns_and_m_lt_n():
    pats = ["local(8)", "strided(16)", "bigbird(4, [0], 2)", "none"]
    n, m = 301, 120
    q, k, v = _qkv(2, 4, m, n, 16, grad=True)
    out = spattn.attention(q, k, v, pats, backend="cpu")
    masks = [oracle_mask(p, n) for p in pats]
    ref = dense_attention(q.detach(), k.detach(), v.detach(), masks)
    assert _rel(out, ref) <= 1e-5
    assert torch.all(out[:, 3] == 0)
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, _ref_grads(q, k, v, masks, g), strict=True):
        assert _rel(a, b) <= 1e-5


def test_empty_rows_zero_output_and_grads():
    n = 64
    text = "cols([5, 9]) & rows([0:n:3])"  # two thirds of the rows attend nothing
    q, k, v = _qkv(1, 2, n, n, 8, grad=True)
    out = spattn.attention(q, k, v, text, backend="cpu")
    empty = ~oracle_mask(text, n).any(1)
    assert not torch.isnan(out).any()
    assert torch.all(out[:, :, torch.from_numpy(empty)] == 0)
    out.sum().backward()
    for x in (q, k, v):
        assert not torch.isnan(x.grad).any()
    assert torch.all(q.grad[:, :, torch.from_numpy(empty)] == 0)
    # keys nobody attends get no gradient
    assert torch.all(k.grad[:, :, [i for i in range(n) if i not in (5, 9)]] == 0)


def test_all_empty_pattern():
    q, k, v = _qkv(1, 1, 10, 10, 4, grad=True)
    out = spattn.attention(q, k, v, "none", backend="cpu")
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.all(q.grad == 0) and torch.all(k.grad == 0)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3),
                                       (torch.float64, 1e-12)])
def test_dtypes(dtype, tol):
    n, text = 333, "local(16) | stride(32)"
    q, k, v = _qkv(1, 2, n, n, 16, dtype, grad=True)
    out = spattn.attention(q, k, v, text, backend="cpu")
    assert out.dtype == dtype
    ref = dense_attention(q.detach(), k.detach(), v.detach(), oracle_mask(text, n))
    assert _rel(out, ref) <= tol
    out.float().sum().backward()
    assert q.grad.dtype == dtype and not torch.isnan(q.grad.float()).any()


def test_scale_and_any_D_B():
    n, text = 100, "local(5) | global([0])"
    q, k, v = _qkv(3, 1, n, n, 7)
    out = spattn.attention(q, k, v, text, backend="cpu", scale=0.3)
    ref = dense_attention(q, k, v, oracle_mask(text, n), scale=0.3)
    assert _rel(out, ref) <= 1e-5


def test_noncontiguous_inputs():
    n, text = 90, "strided(8)"
    q, k, v = _qkv(1, 2, n, n, 8)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    out = spattn.attention(qt, k[..., ::1], v, text, backend="cpu")
    assert _rel(out, dense_attention(q, k, v, oracle_mask(text, n))) <= 1e-5


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_hypothesis_patterns(data):
    n = data.draw(st.sampled_from([1, 7, 61, 129, 200, 513, 1000, 2047]))
    text = data.draw(patterns(n, max_leaves=5))
    m = data.draw(st.sampled_from([n, max(1, n // 3), 1]))
    try:
        mask = oracle_mask(text, n)
    except (spattn.SpattnError, AssertionError):
        return  # out-of-range arguments: lowering errors are tested elsewhere
    q, k, v = _qkv(1, 2, m, n, 8, seed=n)
    try:
        out = spattn.attention(q, k, v, text, backend="cpu")
    except spattn.SpattnError:
        return
    assert not torch.isnan(out).any()
    assert _rel(out, dense_attention(q, k, v, mask)) <= 1e-5


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_hypothesis_gradients(data):
    n = data.draw(st.sampled_from([5, 33, 130]))
    text = data.draw(patterns(n, max_leaves=4))
    m = data.draw(st.sampled_from([n, max(1, n // 2)]))
    try:
        mask = oracle_mask(text, n)
        q, k, v = _qkv(1, 1, m, n, 4, seed=n, grad=True)
        out = spattn.attention(q, k, v, text, backend="cpu")
    except (spattn.SpattnError, AssertionError):
        return
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, _ref_grads(q, k, v, mask, g), strict=True):
        assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("how", [("natural", 1, 32), ("natural", 1, 128), ("mod", 3, 32),
                                 ("mod", 7, 64), ("rows", 1, 1)])
@pytest.mark.parametrize("bitmap", [True, False])
def test_every_tiling_is_exact(how, bitmap):
    """Force each row order / tile height and both union algorithms; all must be exact."""
    from spattn.backends import cpu

    cpu.PLANS.clear()
    try:
        n, m = 301, 200
        for text in ("strided(16) | global([3])", "dilated(3, 7) | random(2)",
                     "fixed(32, 4) & causal | sink(2)"):
            p = spattn.compile(text)
            cpu.PLANS.put((p, n, m, None), cpu.build_plan(p.node, n, m, tiling=how, bitmap=bitmap))
            q, k, v = _qkv(1, 2, m, n, 8, grad=True)
            out = spattn.attention(q, k, v, text, backend="cpu")
            mask = oracle_mask(text, n)
            assert _rel(out, dense_attention(q, k, v, mask)) <= 1e-5
            g = torch.randn_like(out)
            got = torch.autograd.grad((out * g).sum(), (q, k, v))
            for a, b in zip(got, _ref_grads(q, k, v, mask, g), strict=True):
                assert _rel(a, b) <= 1e-5
    finally:
        cpu.PLANS.clear()


@pytest.mark.parametrize("text", ["block(256)", "block(64)", "block(32)", "block(256) & causal",
                                  "local(16) | block(128)"])
@pytest.mark.parametrize("n,m", [(1024, 1024), (1024, 512)])
def test_head_major_fast_path(text, n, m):
    """Plans whose tiles are all strided read (B, H, S, D) in place (fused block runs
    included): exact forward and gradients against the float64 dense reference."""
    from spattn.backends.cpu import all_strided

    assert all_strided(get_plan(spattn.compile(text), n, m))
    q, k, v = _qkv(2, 2, m, n, 16, grad=True)
    out = spattn.attention(q, k, v, text, backend="cpu")
    mask = oracle_mask(text, n)
    assert _rel(out, dense_attention(q.detach(), k.detach(), v.detach(), mask)) <= 1e-5
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, _ref_grads(q, k, v, mask, g), strict=True):
        assert _rel(a, b) <= 1e-5


def test_head_major_fused_runs_heads_dtypes_strides():
    from spattn.backends.cpu import fast_runs

    n = 1024
    plan = get_plan(spattn.compile("block(256)"), n, n)
    (g,) = plan.components[0].groups
    assert [(t, s) for t, s, _, _ in fast_runs(g)] == [(4, 256)]  # one call, 4 blocks
    # heads sharing an all-strided plan among others; half precision; non-contiguous input
    pats = ["block(128)", "local(8)", "block(128)", "none"]
    masks = [oracle_mask(p, n) for p in pats]
    q, k, v = _qkv(1, 4, n, n, 16, grad=True)
    out = spattn.attention(q, k, v, pats, backend="cpu")
    assert _rel(out, dense_attention(q.detach(), k.detach(), v.detach(), masks)) <= 1e-5
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, _ref_grads(q, k, v, masks, g), strict=True):
        assert _rel(a, b) <= 1e-5
    qt, kt, vt = (x.detach().transpose(2, 3).contiguous().transpose(2, 3) for x in (q, k, v))
    assert not qt.is_contiguous()
    ref = dense_attention(q.detach(), k.detach(), v.detach(), oracle_mask("block(64)", n))
    assert _rel(spattn.attention(qt, kt, vt, "block(64)", backend="cpu"), ref) <= 1e-5
    qh, kh, vh = (x.detach().half() for x in (q, k, v))
    out = spattn.attention(qh, kh, vh, "block(64)", backend="cpu")
    ref = dense_attention(qh.float(), kh.float(), vh.float(), oracle_mask("block(64)", n))
    assert out.dtype == torch.float16 and _rel(out, ref) <= 2e-3


@pytest.mark.parametrize("text", SUITE)
def test_plan_work_proportional_to_pattern(text):
    """Tiles cover each pair exactly once; their area is a small multiple of nnz, not n^2."""
    n = 8192
    p = spattn.compile(text)
    plan = get_plan(p, n, n)
    assert plan.nnz == p.nnz(n)
    assert plan.area <= 4 * plan.nnz
    live = 0
    for c in plan.components:
        for g in c.groups:
            live += g.T * g.bq * g.L if g.bias is None else int(torch.isfinite(g.bias).sum())
            assert g.kidx.numel() == g.T * g.L
    assert live == plan.nnz


def test_s1_at_131072_runs():
    n = 131_072
    q, k, v = _qkv(1, 1, n, n, 16)
    out = spattn.attention(q, k, v, "local(64) | global([0,-1])", backend="cpu")
    assert out.shape == q.shape and not torch.isnan(out).any()
    # spot-check rows against the definition
    for r in (0, 1, 70_000, n - 1):
        keys = sorted({0, n - 1} | set(range(max(0, r - 64), min(n, r + 65)))
                      if r not in (0, n - 1) else range(n))
        kk = torch.tensor(list(keys))
        s = (q[0, 0, r].double() @ k[0, 0, kk].double().T) / 4.0
        want = torch.softmax(s, 0) @ v[0, 0, kk].double()
        assert float((out[0, 0, r].double() - want).abs().max()) <= 1e-5


def test_backend_interface():
    b = CPUBackend()
    assert b.name == "cpu" and b.is_available()
    assert b.supports(torch.zeros(1, 1, 1, 1))
    assert not b.supports(torch.zeros(1, 1, 1, 1, dtype=torch.int32))
    assert spattn.backends.get("cpu").name == "cpu"
    q, k, v = _qkv(1, 1, 4, 4, 2)
    with pytest.raises(spattn.SpattnError):
        b.attention(q.int(), k, v, (spattn.compile("full"),), 1.0)
