"""The split-K decode kernel (few queries, m <= 16) against a float64 dense reference.

Without CUDA the kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (set per test), so
sizes stay small. The reference is written here: a masked softmax over the dense rows
n-m .. n-1 of ``pattern.to_dense(n)``, with zero output and lse = +inf for empty rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import spattn

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
PATTERNS = ["causal", "streaming(4, 16)", "strided(8)", "window(7, 0) & causal",
            "local(3) | global([0, -1])", "rows([-2])", "random(5, seed=3) | sink(1)"]


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("SPATTN_TRITON_DECODE", raising=False)


def _dev():
    return "cuda" if CUDA else "cpu"


def _pats(patterns, H):
    if isinstance(patterns, str):
        patterns = [patterns] * H
    return tuple(spattn.compile(p) for p in patterns)


def reference(q, k, v, pats, scale):
    """float64 (out, base-2 lse) from dense masks; k/v heads shared by groups (GQA)."""
    B, H, m, D = q.shape
    n, g = k.shape[2], H // k.shape[1]
    out = torch.zeros(B, H, m, D, dtype=torch.float64)
    lse = torch.full((B, H, m), math.inf, dtype=torch.float64)
    for h, p in enumerate(pats):
        mask = torch.from_numpy(p.to_dense(n)[n - m:])
        kh, vh = k[:, h // g].double().cpu(), v[:, h // g].double().cpu()
        s = (q[:, h].double().cpu() @ kh.transpose(-1, -2)) * scale
        s = s.masked_fill(~mask, -math.inf)
        ls = torch.logsumexp(s, -1)
        pr = torch.where(mask, torch.exp(s - ls[..., None]), 0.0)
        out[:, h] = pr @ vh
        lse[:, h] = torch.where(torch.isfinite(ls), ls / math.log(2.0), math.inf)
    return out, lse


def check(o, lse, ro, rl, dtype):
    tol = TOL[dtype]
    o = o.detach().cpu().double()
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o, ro, atol=tol, rtol=tol)
    lse = lse.cpu().double()
    assert torch.equal(torch.isinf(lse), torch.isinf(rl))
    fin = torch.isfinite(rl)
    torch.testing.assert_close(lse[fin], rl[fin], atol=1e-3, rtol=1e-3)


def tensors(B, H, m, n, D, dtype, seed=0, Hk=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, m, D, generator=g)
    k = torch.randn(B, Hk or H, n, D, generator=g)
    v = torch.randn(B, Hk or H, n, D, generator=g)
    return tuple(x.to(_dev(), dtype) for x in (q, k, v))


def run(patterns, n, m, D=24, dtype=torch.float32, B=2, H=2, scale=0.3, **kw):
    from spattn.backends.triton_decode import decode_forward

    pats = _pats(patterns, H)
    q, k, v = tensors(B, H, m, n, D, dtype, Hk=kw.pop("Hk", None))
    o, lse = decode_forward(q, k, v, pats, scale, **kw)
    assert o.shape == (B, H, m, D) and o.dtype == dtype and lse.dtype == torch.float32
    check(o, lse, *reference(q, k, v, pats, scale), dtype)
    return o, lse


def test_decode_keys_match_dense():
    from spattn.backends.triton_decode import decode_keys

    for text in PATTERNS + ["rows([0])", "~causal", "none", "block(7) | stride(5)"]:
        p = spattn.compile(text)
        for n in (1, 2, 17, 97, 131):
            for m in (1, 3, 16):
                if m > n or (text == "rows([-2])" and n < 2):  # -2 is outside n = 1
                    continue
                d = p.to_dense(n)[n - m:]
                (kidx, bits, heads), = decode_keys((p, p), n, m)
                want = np.flatnonzero(d.any(0))
                assert heads == [0, 1]
                assert kidx.dtype == np.int32 and bits.dtype == np.int32
                np.testing.assert_array_equal(kidx, want, err_msg=f"{text} n={n} m={m}")
                wb = (d[:, want].astype(np.int64) << np.arange(m)[:, None]).sum(0)
                np.testing.assert_array_equal(bits, wb, err_msg=f"{text} n={n} m={m}")


def test_decode_keys_large_n_is_sparse_and_guarded():
    from spattn.backends.triton_decode import pattern_keys

    kidx, bits = pattern_keys(spattn.compile("streaming(4, 16)"), 10 ** 9, 16)
    assert len(kidx) == 4 + 32 and kidx[4] == 10 ** 9 - 32 and kidx[-1] == 10 ** 9 - 1
    assert bits[0] == (1 << 16) - 1 and bits[-1] == 1 << 15
    spattn.set_memory_budget(1 << 20)
    try:
        with pytest.raises(spattn.SpattnError, match="decode key list"):
            pattern_keys(spattn.compile("causal"), 10 ** 7, 16)
    finally:
        spattn.set_memory_budget(None)


@pytest.mark.parametrize("text", PATTERNS)
@pytest.mark.parametrize("n,m", [(97, 1), (131, 3), (131, 16)])
def test_forward_patterns(text, n, m):
    run(text, n, m)


@pytest.mark.parametrize("n,m", [(1, 1), (2, 2), (16, 16), (65, 3)])
def test_small_n(n, m):
    run("causal", n, m, B=1, H=1, D=16)


@pytest.mark.parametrize("splits,block_n", [(1, 16), (3, 16), (5, 32)])
def test_splits(splits, block_n):
    run("local(3) | global([0, -1]) | sink(40)", 150, 16, splits=splits, block_n=block_n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    run("strided(8)", 131, 16, D=64, dtype=dtype)


def test_per_head_patterns_and_empty_rows():
    o, lse = run(["causal", "rows([-2])", "rows([0])", "strided(8)"], 97, 3, H=4)
    assert (o[:, 2] == 0).all() and torch.isinf(lse[:, 2]).all()  # no row attends anything
    assert (o[:, 1, [0, 2]] == 0).all() and torch.isinf(lse[:, 1, [0, 2]]).all()
    assert torch.isfinite(lse[:, 1, 1]).all()


def test_strided_views_and_gqa():
    from spattn.backends.triton_decode import decode_forward

    B, H, m, n, D = 2, 4, 5, 83, 40
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, m, H, D, generator=g).to(_dev()).transpose(1, 2)  # (B, H, m, D) view
    k = torch.randn(B, 2, D, n, generator=g).to(_dev()).transpose(-1, -2)  # transposed view
    v = torch.randn(B, 2, n, 2 * D, generator=g).to(_dev())[..., ::2]  # strided D
    pats = _pats("window(7, 0) & causal | sink(2)", H)
    o, lse = decode_forward(q, k, v, pats, D ** -0.5)
    check(o, lse, *reference(q, k, v, pats, D ** -0.5), torch.float32)


def test_matches_block_sparse_forward(monkeypatch):
    """Same out and base-2 lse as the block-sparse kernels (which the backward consumes)."""
    from spattn import backends

    b = backends.get("triton")
    pats = _pats(["streaming(4, 16)", "local(3) | global([0, -1])"], 2)
    q, k, v = tensors(1, 2, 7, 100, 24, torch.float32, seed=5)
    o1, l1 = b.forward_lse(q, k, v, pats, 0.25)
    monkeypatch.setenv("SPATTN_TRITON_DECODE", "0")
    o2, l2 = b.forward_lse(q, k, v, pats, 0.25)
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("how", ["attention", "sparse_attention"])
def test_backward(how):
    from spattn.backends.triton_gpu import sparse_attention

    B, H, m, n, D = 2, 2, 2, 70, 24
    pats = ["local(3) | global([0, -1])", "strided(8)"]
    q, k, v = (x.requires_grad_() for x in tensors(B, H, m, n, D, torch.float32, seed=7))
    do = torch.randn(B, H, m, D, generator=torch.Generator().manual_seed(8)).to(_dev())
    if how == "attention":
        out = spattn.attention(q, k, v, pats, backend="triton")
    else:
        out = sparse_attention(q, k, v, _pats(pats, H), D ** -0.5)
    out.backward(do)
    q64, k64, v64 = (x.detach().cpu().double().requires_grad_() for x in (q, k, v))
    ref, _ = reference(q64, k64, v64, _pats(pats, H), D ** -0.5)
    torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), atol=2e-4, rtol=2e-4)
    ref.backward(do.cpu().double())
    for name, a, r in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        torch.testing.assert_close(a.grad.cpu().double(), r.grad, atol=1e-3, rtol=1e-3,
                                   msg=name)


def test_env_switch(monkeypatch):
    from spattn.backends.triton_decode import decode_enabled

    assert decode_enabled(16) and not decode_enabled(17)
    monkeypatch.setenv("SPATTN_TRITON_DECODE", "0")
    assert not decode_enabled(1)


def test_inference_through_attention_and_lse():
    """No-grad calls take the decode kernel on the tensors as given (views, any D)."""
    from spattn.backends.triton_gpu import sparse_attention

    B, H, m, n, D = 1, 2, 3, 90, 24
    pats = _pats("local(3) | global([0, -1])", H)
    q, k, v = tensors(B, H, m, n, D, torch.float16, seed=9)
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided layout
    ro, rl = reference(q, k, v, pats, D ** -0.5)
    with torch.no_grad():
        out = spattn.attention(q, k, v, "local(3) | global([0, -1])", backend="triton")
    check(out, rl.float(), ro, rl, torch.float16)
    o2, lse = sparse_attention(q, k, v, pats, D ** -0.5, return_lse=True)
    check(o2, lse / math.log(2.0), ro, rl, torch.float16)
