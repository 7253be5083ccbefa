"""The few-query path of the CPU backend (m <= 16: decoding, chunked prefill) against a
float64 dense masked softmax, and its promise to read only the keys the rows attend."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spattn.backends import cpu_decode

import spattn

PATTERNS = ["causal", "streaming(4, 16)", "strided(8)", "window(7, 0) & causal",
            "local(3) | global([0, -1])", "rows([0])", "random(5, seed=3)", "block(5)",
            "fixed(6, 2) & causal", "dilated(3, 4) | sink(2)", "full", "none",
            "stride(3) - local(1)", "~local(2)", "cols([1:n:7]) | window(0, 2)"]


def dense_reference(q, k, v, patterns, scale=None):
    """Float64 masked softmax; rows without keys give zeros."""
    B, H, m, D = q.shape
    n = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    outs = []
    for h in range(H):
        M = torch.from_numpy(spattn.compile(patterns[h]).to_dense(n)[n - m:])
        s = (q[:, h].double() @ k[:, h].double().transpose(-1, -2)) * scale
        s = s.masked_fill(~M, float("-inf"))
        w = torch.softmax(s, -1).nan_to_num(0.0)
        outs.append(w @ v[:, h].double())
    return torch.stack(outs, 1)


def _inputs(B, H, m, n, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, s, D, generator=g).to(dtype).requires_grad_()
            for s in (m, n, n)]


@settings(max_examples=60, deadline=None)
@given(p=st.sampled_from(PATTERNS), n=st.sampled_from([1, 2, 7, 31, 97, 128, 131, 200]),
       m=st.integers(1, 16), B=st.integers(1, 2), seed=st.integers(0, 5))
def test_matches_dense_reference(p, n, m, B, seed):
    m = min(m, n)
    q, k, v = _inputs(B, 2, m, n, 12, seed=seed)
    out = spattn.attention(q, k, v, p)
    ref = dense_reference(q, k, v, [p, p])
    assert torch.allclose(out.double(), ref, atol=2e-6), (out.double() - ref).abs().max()
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g.double())
    for a, b in zip(got, want):
        a, b = a.double(), b.double()
        assert torch.allclose(a, b, atol=2e-5), (a - b).abs().max()


def test_per_head_patterns_and_noncontiguous_inputs():
    pats = ["causal", "streaming(2, 5)", "causal", "strided(4)"]
    q, k, v = _inputs(2, 4, 3, 61, 24)
    kt = k.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    out = spattn.attention(q, kt, v, pats)
    ref = dense_reference(q, kt, v, pats)
    assert torch.allclose(out.double(), ref, atol=2e-6)
    out.sum().backward()
    assert kt.grad is not None and torch.isfinite(kt.grad).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2),
                                       (torch.float64, 1e-12)])
def test_dtypes(dtype, tol):
    q, k, v = _inputs(1, 2, 4, 301, 32, dtype)
    for p in ["causal", "streaming(4, 40)", "strided(16)"]:
        out = spattn.attention(q, k, v, p)
        assert out.dtype == dtype
        ref = dense_reference(q, k, v, [p, p])
        assert (out.double() - ref).abs().max() < tol


def test_double_backward_is_exact():
    q, k, v = (x.double().detach().requires_grad_() for x in _inputs(1, 1, 2, 23, 4))
    for p in ["streaming(2, 4)", "local(2) | global([0])", "rows([0])"]:
        assert torch.autograd.gradgradcheck(
            lambda a, b, c, p=p: spattn.attention(a, b, c, p), (q, k, v))


def _attended(p, n, m):
    """The distinct keys rows n-m..n-1 attend, from CSR."""
    _, indices = spattn.compile(p).row_range_csr(n, n - m, n)
    return len(np.unique(indices))


@pytest.mark.parametrize("p", ["streaming(4, 256)", "window(63, 0) & causal", "strided(128)",
                               "causal", "local(5) | global([0, -1])", "random(7)"])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_reads_only_attended_keys(p, m):
    n = 100_003
    row, lo, hi = cpu_decode.rows(spattn.compile(p).node, n, n - m, n)
    plan = cpu_decode.pieces(row, lo, hi, n - m, m, cpu_decode.contiguous(n))
    assert sum(len(range(x.lo, x.hi)) for x in plan) == _attended(p, n, m)
    if p == "causal":  # dense rows are read in place: nothing gathered but the last few
        assert cpu_decode.gathered(plan) <= m


def test_large_n_streaming_runs_without_n_sized_work():
    n = 1 << 20  # 1M keys: B=1, H=1, D=8 keeps the tensors at 32 MiB
    k = torch.randn(1, 1, n, 8)
    v = torch.randn(1, 1, n, 8)
    q = torch.randn(1, 1, 1, 8)
    out = spattn.attention(q, k, v, "streaming(4, 256)")
    keys = torch.cat([torch.arange(4), torch.arange(n - 257, n)])
    s = (q.double() @ k[:, :, keys].double().transpose(-1, -2)) * 8 ** -0.5
    ref = torch.softmax(s, -1) @ v[:, :, keys].double()
    assert torch.allclose(out.double(), ref, atol=1e-6)


def test_listed_positions_are_checked_at_every_n():
    q = torch.randn(1, 1, 1, 8)
    for n, ok in [(30, True), (16, False), (21, True), (20, False)]:
        k = torch.randn(1, 1, n, 8)
        if ok:
            out = spattn.attention(q, k, k, "global([20]) & causal")
            ref = dense_reference(q, k, k, ["global([20]) & causal"])
            assert torch.allclose(out.double(), ref, atol=1e-6)
        else:
            with pytest.raises(spattn.LoweringError, match=f"n = {n}"):
                spattn.attention(q, k, k, "global([20]) & causal")
