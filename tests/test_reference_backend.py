"""The ``reference`` backend and the :class:`spattn.backends.Backend` protocol.

In: random q, k, v and the patterns of ``spattn.suite.SUITE`` (plus empty-row patterns).
Out: agreement with the independent float64 oracle in ``tests/reference.py`` and with the cpu
backend, exact first and second derivatives, zero outputs and gradients for empty rows, size
refusals before allocation, and the registry's view of the new backend.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import dense_attention, oracle_mask
from spattn.backends import Backend
from spattn.backends import reference as refmod

import spattn
from spattn import backends
from spattn.suite import SUITE

PATTERNS = list(SUITE.values())
TOL = {  # one rounding of the float64 result to the dtype, with margin
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float32: dict(atol=1e-6, rtol=1e-6),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}


def _qkv(B, H, m, n, D, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, m, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, H, n, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, H, n, D, generator=g, dtype=torch.float64).to(dtype)
    return tuple(x.requires_grad_(grad) for x in (q, k, v))


def _ms(n):
    return sorted({n, 1} | ({5} if n >= 5 else set()))


@pytest.mark.parametrize("n", [1, 7, 64, 97])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_oracle_on_the_suite(pattern, n):
    mask = oracle_mask(pattern, n)
    for m in _ms(n):
        q, k, v = _qkv(2, 2, m, n, 8, seed=n + m)
        out = spattn.attention(q, k, v, pattern, backend="reference")
        assert out.dtype == torch.float64 and out.shape == (2, 2, m, 8)
        torch.testing.assert_close(out, dense_attention(q, k, v, mask), **TOL[torch.float64])


@pytest.mark.parametrize("n,m", [(7, 7), (64, 5), (97, 97), (97, 1)])
def test_per_head_patterns(n, m):
    pats = [PATTERNS[0], PATTERNS[3], "none", PATTERNS[5]]
    q, k, v = _qkv(2, 4, m, n, 4, seed=3)
    out = spattn.attention(q, k, v, pats, backend="reference")
    ref = dense_attention(q, k, v, [oracle_mask(p, n) for p in pats])
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    assert torch.all(out[:, 2] == 0)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("n,m", [(64, 64), (97, 5)])
def test_dtypes(dtype, n, m):
    for pattern in PATTERNS:
        q, k, v = _qkv(1, 2, m, n, 8, dtype=dtype, seed=7)
        out = spattn.attention(q, k, v, pattern, backend="reference")
        assert out.dtype == dtype and out.device == q.device
        ref = dense_attention(q, k, v, oracle_mask(pattern, n)).to(dtype)
        torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_empty_rows_give_zero_output_and_gradients(dtype):
    n = 9
    q, k, v = _qkv(2, 2, n, n, 4, dtype=dtype, seed=1, grad=True)
    # large scores must not leak NaN / inf through the masked entries
    out = spattn.attention(q, k, v, "none", backend="reference", scale=1e3)
    assert torch.all(out == 0)
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.all(t.grad == 0)

    q, k, v = _qkv(2, 2, n, n, 4, dtype=dtype, seed=2, grad=True)
    out = spattn.attention(q, k, v, "rows([0])", backend="reference")
    assert torch.all(out[:, :, 1:] == 0) and torch.all(torch.isfinite(out))
    assert torch.all(out[:, :, 0] != 0)
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        assert torch.all(torch.isfinite(t.grad))
    assert torch.all(q.grad[:, :, 1:] == 0) and torch.any(q.grad[:, :, 0] != 0)


def test_gradients_match_oracle():
    n, m = 33, 6
    pats = ["local(3) | global([0])", "rows([30, 31]) & causal"]
    q, k, v = _qkv(2, 2, m, n, 5, seed=4, grad=True)
    w = torch.randn(2, 2, m, 5, dtype=torch.float64)
    out = spattn.attention(q, k, v, pats, backend="reference")
    ga = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = dense_attention(q, k, v, [oracle_mask(p, n) for p in pats])
    gb = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_gradcheck_and_gradgradcheck():
    n, m = 6, 4  # rows are positions 2..5; head 1 has empty rows 2, 4 and 5
    pats = (spattn.compile("local(1) | global([0])"), spattn.compile("rows([1, 3])"))
    q, k, v = _qkv(1, 2, m, n, 3, seed=5, grad=True)

    def f(q, k, v):
        return spattn.attention(q, k, v, list(pats), backend="reference", scale=0.7)

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_grouped_query_heads_direct_call():
    n, m, H = 20, 20, 4
    pats = tuple(spattn.compile(p) for p in ("causal", "local(2)", "none", "block(5)"))
    q, _, _ = _qkv(2, H, m, n, 4, seed=6)
    _, k, v = _qkv(2, 2, m, n, 4, seed=8)
    out = backends.get("reference").attention(q, k, v, pats, 0.5)
    kr, vr = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    ref = dense_attention(q, kr, vr, [oracle_mask(p, n) for p in pats], scale=0.5)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])


def test_mask_rows_without_an_n_by_n_array():
    n = 1_000_000  # an n x n mask would be 10^12 cells
    p = spattn.compile("local(2) | global([0, -1])")
    mk = refmod.mask_rows(p, n, 3, torch.device("cpu"))
    assert mk.shape == (3, n) and mk.dtype == torch.bool
    assert mk[0].nonzero().flatten().tolist() == [0, n - 5, n - 4, n - 3, n - 2, n - 1]
    assert mk[2].sum().item() == n  # the last position is global: it attends everything
    small = refmod.mask_rows(p, 12, 12, torch.device("cpu")).numpy()
    assert np.array_equal(small, oracle_mask(p, 12))


def _expanded(m, n, D=1):
    z = torch.zeros((), dtype=torch.float32)
    return z.expand(1, 1, m, D), z.expand(1, 1, n, D), z.expand(1, 1, n, D)


def _no_alloc(monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("allocated before refusing")

    monkeypatch.setattr(refmod, "mask_rows", boom)
    monkeypatch.setattr(refmod, "csr_rows", boom)


@pytest.mark.parametrize("m,n", [(8193, 8193), (1, refmod.MAX_CELLS + 1)])
def test_refuses_over_max_cells(monkeypatch, m, n):
    assert m * n > refmod.MAX_CELLS
    _no_alloc(monkeypatch)
    q, k, v = _expanded(m, n)  # zero-stride views: no memory behind them
    with pytest.raises(spattn.ResourceError) as e:
        spattn.attention(q, k, v, "local(4)", backend="reference")
    msg = str(e.value)
    assert f"m = {m:,}" in msg and f"n = {n:,}" in msg
    assert "reference backend is for small sizes" in msg and "'cpu'" in msg


def test_refuses_over_memory_budget(monkeypatch):
    _no_alloc(monkeypatch)
    q, k, v = _expanded(64, 64, D=4)
    spattn.set_memory_budget(10_000)
    try:
        with pytest.raises(spattn.ResourceError) as e:
            spattn.attention(q, k, v, "causal", backend="reference")
    finally:
        spattn.set_memory_budget(None)
    msg = str(e.value)
    assert "reference attention" in msg and "memory budget" in msg and "KiB" in msg


def test_registry_and_protocol():
    assert "reference" in backends.names() and "reference" in backends.available()
    q = torch.zeros(1, 1, 2, 2)
    assert backends.select("auto", q).name == "cpu"
    assert backends.auto_name("cpu") == "cpu"
    ref = backends.select("reference", q)
    assert ref is backends.get("reference") and ref.name == "reference"
    assert ref.is_available()
    for dt in TOL:
        assert ref.supports(q.to(dt))
    assert not ref.supports(torch.zeros(2, dtype=torch.int64))
    assert not ref.supports(np.zeros(2))
    assert "Backend" in backends.__all__ and "BACKEND_INTERFACE" in backends.__all__
    assert isinstance(backends.get("cpu"), Backend)
    assert isinstance(ref, Backend)
    assert not isinstance(object(), Backend)


@pytest.mark.parametrize("m", [97, 5])
@pytest.mark.parametrize("name", list(SUITE))
def test_agrees_with_cpu_backend(name, m):
    n = 97
    q, k, v = _qkv(2, 2, m, n, 16, dtype=torch.float32, seed=11, grad=True)
    w = torch.randn(2, 2, m, 16)
    outs, grads = [], []
    for b in ("reference", "cpu"):
        out = spattn.attention(q, k, v, SUITE[name], backend=b)
        outs.append(out)
        grads.append(torch.autograd.grad((out * w).sum(), (q, k, v)))
    torch.testing.assert_close(outs[0], outs[1], atol=2e-6, rtol=2e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_stay_on_their_device():
    q, k, v = _qkv(1, 2, 5, 40, 8, dtype=torch.float16, seed=12)
    out = spattn.attention(q.cuda(), k.cuda(), v.cuda(), PATTERNS[0], backend="reference")
    assert out.is_cuda and out.dtype == torch.float16
    ref = spattn.attention(q, k, v, PATTERNS[0], backend="reference")
    torch.testing.assert_close(out.cpu(), ref, **TOL[torch.float16])
