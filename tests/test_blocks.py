"""Block layouts (``Pattern.to_blocks``), ``mask_mod`` and FlexAttention interop, checked
against the brute-force oracle in ``tests/reference.py`` and FlexAttention's
``create_block_mask`` (CPU)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from block_rows import block_structure
from hypothesis import given
from hypothesis import strategies as st
from reference import oracle_mask
from strategies import sized_patterns

import spattn
from spattn.suite import SUITE  # noqa: E402 - the shared standard suite


def tile_classes(M: np.ndarray, bq: int, bk: int) -> np.ndarray:
    """0 empty / 1 partial / 2 full per tile of an (m, n) mask, by brute force."""
    m, n = M.shape
    nqb, nkb = -(-m // bq), -(-n // bk)
    out = np.zeros((nqb, nkb), np.uint8)
    for a in range(nqb):
        for c in range(nkb):
            t = M[a * bq:(a + 1) * bq, c * bk:(c + 1) * bk]
            out[a, c] = 0 if not t.any() else (2 if t.all() else 1)
    return out


def check_layout(pattern, n, bq, bk, m):
    L = spattn.compile(pattern).to_blocks(n, bq, bk, m=m)
    M = oracle_mask(pattern, n)[n - m:]
    assert isinstance(L, spattn.BlockLayout)
    assert (L.num_q_blocks, L.num_k_blocks) == (-(-m // bq), -(-n // bk))
    np.testing.assert_array_equal(L.to_dense(), tile_classes(M, bq, bk))
    np.testing.assert_array_equal(L.to_mask(), M)
    # indices sorted within rows, int32
    for ptr, idx in ((L.full_ptr, L.full_idx), (L.part_ptr, L.part_idx)):
        assert ptr.dtype == np.int32 and idx.dtype == np.int32
        for a in range(L.num_q_blocks):
            row = idx[ptr[a]:ptr[a + 1]]
            assert (np.diff(row) > 0).all()
    # the transpose lists the same tiles
    for ptr, idx, tptr, tidx in ((L.full_ptr, L.full_idx, L.full_t_ptr, L.full_t_idx),
                                 (L.part_ptr, L.part_idx, L.part_t_ptr, L.part_t_idx)):
        fwd = {(a, int(c)) for a in range(L.num_q_blocks) for c in idx[ptr[a]:ptr[a + 1]]}
        bwd = {(int(a), c) for c in range(L.num_k_blocks) for a in tidx[tptr[c]:tptr[c + 1]]}
        assert fwd == bwd
        for c in range(L.num_k_blocks):
            assert (np.diff(tidx[tptr[c]:tptr[c + 1]]) > 0).all()
    # agrees with the interval-based block structure
    indptr, kb, full = block_structure(spattn.compile(pattern).node, n, bq, bk, m)
    dense = np.zeros_like(L.to_dense())
    rows = np.repeat(np.arange(L.num_q_blocks), np.diff(indptr))
    dense[rows, kb] = np.where(full, 2, 1)
    np.testing.assert_array_equal(L.to_dense(), dense)
    return L


@given(sized_patterns(), st.sampled_from([1, 2, 3, 4, 8, 16]),
       st.sampled_from([1, 2, 5, 8, 16]), st.data())
def test_layout_matches_oracle(case, bq, bk, data):
    n, text = case
    try:
        spattn.compile(text).nnz(n)
    except spattn.LoweringError:
        return  # an argument out of range at this n (tested elsewhere)
    m = data.draw(st.integers(1, n))
    check_layout(text, n, bq, bk, m)


@pytest.mark.parametrize("name", sorted(SUITE))
@pytest.mark.parametrize("n,bq,bk,m", [(640, 128, 128, 640), (517, 64, 32, 517),
                                       (300, 32, 64, 77)])
def test_suite_layouts(name, n, bq, bk, m):
    check_layout(SUITE[name], n, bq, bk, m)


@pytest.mark.parametrize("text", ["stride(5) & ~stride(3)", "(local(7) | stride(9)) - causal",
                                  "dilated(4, 3) & ~local(2)", "fixed(12, 5) - block(6)",
                                  "~(global([3:9]) | sink(5))", "random(6, seed=2) - causal",
                                  "stride(200) | rows([0:300:7])", "stride(1000)"])
def test_structured_combinations(text):
    for n, bq, bk, m in ((301, 16, 16, 301), (257, 32, 8, 100), (40, 1, 1, 40)):
        check_layout(text, n, bq, bk, m)


def _flex_dense(num, idx, nqb, nkb):
    out = np.zeros((nqb, nkb), bool)
    num, idx = num[0, 0].numpy(), idx[0, 0].numpy()
    for a in range(nqb):
        out[a, idx[a, :num[a]]] = True
    return out


def _flex_classes(bm, nqb, nkb):
    part = _flex_dense(bm.kv_num_blocks, bm.kv_indices, nqb, nkb)
    full = _flex_dense(bm.full_kv_num_blocks, bm.full_kv_indices, nqb, nkb)
    assert not (part & full).any()
    return part.astype(np.uint8) + 2 * full.astype(np.uint8)


@pytest.mark.parametrize("name", sorted(SUITE))
@pytest.mark.parametrize("n,m,block", [(512, 512, 128), (1000, 1000, 128),
                                       (700, 300, (64, 128))])
def test_matches_flex_create_block_mask(name, n, m, block):
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    p = spattn.compile(SUITE[name])
    bq, bk = (block, block) if isinstance(block, int) else block
    mm = p.mask_mod(n)
    off = n - m

    def shifted(b, h, q, kv):
        return mm(b, h, q + off, kv)

    ref = fa.create_block_mask(shifted, None, None, m, n, device="cpu", BLOCK_SIZE=(bq, bk))
    L = p.to_blocks(n, bq, bk, m=m)
    mine = L.to_flex_block_mask()
    nqb, nkb = L.num_q_blocks, L.num_k_blocks
    np.testing.assert_array_equal(_flex_classes(mine, nqb, nkb), _flex_classes(ref, nqb, nkb))
    # and FlexAttention's own dense view agrees
    np.testing.assert_array_equal(mine.to_dense()[0, 0].numpy(), ref.to_dense()[0, 0].numpy())


@pytest.mark.parametrize("name", sorted(SUITE) + ["X"])
def test_mask_mod_matches_oracle(name):
    import torch

    text = SUITE.get(name, "(rows([1:9]) | random(3, seed=1)) - stride(4)")
    n = 300
    mm = spattn.compile(text).mask_mod(n)
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    got = mm(torch.tensor(0), torch.tensor(0), i, j)
    np.testing.assert_array_equal(got.numpy(), oracle_mask(text, n))


def test_flex_attention_runs_a_spattn_layout():
    """FlexAttention (eager, CPU) with our BlockMask gives the dense reference."""
    import torch

    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    from reference import dense_attention

    text, n = SUITE["S4"], 256
    p = spattn.compile(text)
    bm = p.to_blocks(n, 128).to_flex_block_mask()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
    out = fa.flex_attention(q, k, v, block_mask=bm)
    ref = dense_attention(q, k, v, oracle_mask(text, n))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_errors_are_spattn_errors():
    p = spattn.compile("local(3)")
    for kw in ({"block_size": 0}, {"block_size": 2.5}, {"key_block_size": -1},
               {"m": 0}, {"m": 11}):
        with pytest.raises(spattn.SpattnError):
            p.to_blocks(10, **{"block_size": 4, **kw})
    with pytest.raises(spattn.SpattnError):
        p.to_blocks(0)
    with pytest.raises(spattn.SpattnError):
        p.to_blocks(10, 4).tile_mask(5, 0)
    with pytest.raises(spattn.SpattnError):
        spattn.compile("stride(n // 1000)").to_blocks(500)


def test_large_n_without_quadratic_work():
    """Structured patterns lower at n = 2**24 (2**34 tiles) in time linear in the blocks."""
    for text in ("local(64) | global([0,-1])", "streaming(4, 256)", "block(256)",
                 "dilated(32, 4) | local(16)"):
        t0 = time.perf_counter()
        L = spattn.compile(text).to_blocks(1 << 24, 128)
        assert time.perf_counter() - t0 < 20
        assert L.nonzero_blocks < 8 * L.num_q_blocks
