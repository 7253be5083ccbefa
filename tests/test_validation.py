"""spattn.attention validates its tensors and treats NaN/Inf like SDPA with the same mask."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import torch
from reference import dense_attention, oracle_mask

import spattn
from spattn import ShapeError, SpattnError


def qkv(B=1, H=2, m=16, n=16, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, m, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, n, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, n, D, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("mutate,match", [
    (lambda q, k, v: (q[0], k, v), r"q must have 4 dimensions .* got shape \(2, 16, 8\)"),
    (lambda q, k, v: (q, k[..., :4], v[..., :4]), r"B and D must match"),
    (lambda q, k, v: (q, torch.cat([k, k[:, :1]], 1), torch.cat([v, v[:, :1]], 1)),
     r"must divide the query heads"),
    (lambda q, k, v: (q, k, v[..., :4]), r"k and v must have the same shape"),
    (lambda q, k, v: (q, k[:, :, :8], v[:, :, :8]), r"m = 16 queries but k has only n = 8"),
    (lambda q, k, v: (q.int(), k, v), r"q has dtype torch.int32"),
    (lambda q, k, v: (q.double(), k, v), r"must share a dtype"),
    (lambda q, k, v: (q.numpy(), k, v), r"q must be a torch.Tensor, got ndarray"),
    (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), r"n = 0|m = 16 queries"),
])
def test_bad_tensors(mutate, match):
    q, k, v = mutate(*qkv())
    with pytest.raises(ShapeError, match=match):
        spattn.attention(q, k, v, "local(2)")


def test_per_head_pattern_count():
    q, k, v = qkv(H=2)
    with pytest.raises(ShapeError, match="3 per-head patterns for H = 2"):
        spattn.attention(q, k, v, ["local(1)", "causal", "full"])


def test_bad_pattern_and_backend_and_scale():
    q, k, v = qkv()
    with pytest.raises(spattn.PatternNameError, match="did you mean 'local'"):
        spattn.attention(q, k, v, "locl(3)")
    with pytest.raises(SpattnError, match="unknown backend 'nope'"):
        spattn.attention(q, k, v, "local(3)", backend="nope")
    with pytest.raises(SpattnError, match="scale must be a number"):
        spattn.attention(q, k, v, "local(3)", scale="big")
    with pytest.raises(SpattnError, match="pattern must be text"):
        spattn.attention(q, k, v, 3)
    with pytest.raises(spattn.LoweringError, match="n = 16"):
        spattn.attention(q, k, v, "global([20])")


def test_non_contiguous_inputs():
    q, k, v = qkv(B=2, H=2, m=24, n=24, D=8)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    kt = k[..., ::1].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    out = spattn.attention(qt, kt, v, "local(3) | global([0])")
    ref = dense_attention(q, k, v, oracle_mask("local(3) | global([0])", 24))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def _sdpa(q, k, v, mask):
    m = q.shape[2]
    n = k.shape[2]
    return torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=torch.from_numpy(mask[n - m:]))


def test_nan_in_query_poisons_only_its_row():
    q, k, v = qkv(H=1, m=12, n=12)
    q[0, 0, 5, 2] = float("nan")
    mask = oracle_mask("local(2)", 12)
    out = spattn.attention(q, k, v, "local(2)")
    ref = _sdpa(q, k, v, mask)
    assert torch.isnan(out[0, 0, 5]).all() and torch.isnan(ref[0, 0, 5]).all()
    rows = [r for r in range(12) if r != 5]
    torch.testing.assert_close(out[0, 0, rows].double(), ref[0, 0, rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["k", "v"])
def test_nan_in_key_or_value_poisons_rows_that_attend_it(where):
    q, k, v = qkv(H=1, m=12, n=12)
    (k if where == "k" else v)[0, 0, 3, 1] = float("nan")
    mask = oracle_mask("local(1)", 12)
    out = spattn.attention(q, k, v, "local(1)")
    attends = mask[:, 3]
    assert torch.isnan(out[0, 0, attends]).any(dim=-1).all()
    # SDPA's dense CPU kernels make every row NaN (0 * NaN); spattn's tiled paths may spread
    # NaN to rows sharing a tile. Either way no row may hold a wrong finite value.
    ref = dense_attention(torch.nan_to_num(q), torch.nan_to_num(k), torch.nan_to_num(v), mask)
    for r in np.flatnonzero(~attends):
        row = out[0, 0, r].double()
        if not torch.isnan(row).any():
            torch.testing.assert_close(row, ref[0, 0, r], rtol=1e-5, atol=1e-5)


def test_inf_in_key_gives_nan_like_sdpa():
    q, k, v = qkv(H=1, m=8, n=8)
    k[0, 0, 2] = float("inf")
    mask = oracle_mask("local(1)", 8)
    out = spattn.attention(q, k, v, "local(1)")
    ref = _sdpa(q, k, v, mask)
    np.testing.assert_array_equal(torch.isnan(out).numpy(), torch.isnan(ref).numpy())
    finite = ~torch.isnan(ref)
    torch.testing.assert_close(out.double()[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_empty_rows_zero_no_nan():
    q, k, v = qkv(H=1, m=10, n=10)
    for t in (q, k, v):
        t.requires_grad_(True)
    out = spattn.attention(q, k, v, "rows([0:5]) & local(1)")
    assert torch.all(out[0, 0, 5:] == 0)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[0, 0, 5:] == 0)


def test_attention_from_many_threads_matches_serial():
    pats = ["local(3)", "strided(4)", "bigbird(2, [0:2], 2)", "fixed(6, 2) & causal",
            "streaming(2, 5)", "block(7)"]
    cases = [(p, qkv(B=1, H=2, m=29, n=29, D=8, seed=i)) for i, p in enumerate(pats * 3)]

    def run(case):
        p, (q, k, v) = case
        return spattn.attention(q, k, v, p)

    with cf.ThreadPoolExecutor(6) as ex:
        par = list(ex.map(run, cases))
    ser = [run(c) for c in cases]
    for a, b in zip(par, ser):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
