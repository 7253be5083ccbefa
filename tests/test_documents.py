"""Packed sequences (SPEC section 4): ``spattn.documents`` and every pass that takes one.

The expected packed mask is always built here from the independent per-pair oracle
(``tests/reference.py``): ``oracle_mask(pattern, L_d)`` for each document, placed on the
diagonal of an N×N matrix, nothing off it. Checked against it: ``to_csr`` / ``to_dense`` /
``nnz``, ``to_blocks`` (tile classes and ``to_mask``), ``stats`` figures, ``mask_mod`` on index
grids, FlexAttention block masks, ``spattn.attention(..., documents=...)`` forward and
backward (float64 dense masked softmax, autograd, gradcheck) on the cpu and reference
backends (and a tiny Triton case under the interpreter), GQA, per-head patterns, empty rows,
the ``nn`` modules, and every input error.
"""

from __future__ import annotations

import json
import math
import pickle
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import dense_attention, oracle_mask
from strategies import patterns

import spattn
from spattn.analysis.receptive import depths
from spattn.errors import LoweringError
from spattn.suite import SUITE

# --------------------------------------------------------------------------------------------
# The oracle over documents


def packed_oracle(pattern, lengths, raw: bool = True) -> np.ndarray:
    """The N×N block-diagonal mask: block d is the oracle at that document's own length."""
    lengths = [int(x) for x in lengths]
    N = sum(lengths)
    M = np.zeros((N, N), bool)
    memo: dict[int, np.ndarray] = {}
    s = 0
    for L in lengths:
        if L not in memo:
            memo[L] = oracle_mask(pattern, L, raw=raw and isinstance(pattern, str))
        M[s:s + L, s:s + L] = memo[L]
        s += L
    return M


def _lowerable(text, lengths):
    """The packed oracle mask, or None when an argument is out of range in some document."""
    try:
        return packed_oracle(text, lengths)
    except (AssertionError, ZeroDivisionError, LoweringError, ValueError):
        return None


def tile_classes(M: np.ndarray, bq: int, bk: int) -> np.ndarray:
    """0 empty / 1 partial / 2 full per tile (edge tiles clipped to the matrix)."""
    m, n = M.shape
    nqb, nkb = -(-m // bq), -(-n // bk)
    out = np.zeros((nqb, nkb), np.uint8)
    for a in range(nqb):
        for c in range(nkb):
            t = M[a * bq:(a + 1) * bq, c * bk:(c + 1) * bk]
            out[a, c] = 0 if not t.any() else (2 if t.all() else 1)
    return out


# document lengths: 1, primes, and lengths that are not multiples of block sizes or arguments
DOC_SIZES = [1, 1, 2, 3, 5, 7, 11, 13, 17, 31, 37, 61, 64, 97]


@st.composite
def doc_lengths(draw, max_total: int = 300, max_docs: int = 7):
    k = draw(st.integers(1, max_docs))
    out: list[int] = []
    for _ in range(k):
        L = draw(st.one_of(st.sampled_from(DOC_SIZES), st.integers(1, 90)))
        L = min(L, max_total - sum(out))
        if L < 1:
            break
        out.append(L)
    return out


@st.composite
def packed_cases(draw, max_total: int = 300, max_docs: int = 7, max_leaves: int = 7):
    """(lengths, pattern text); the pattern's listed positions are valid in every document
    (generated for the shortest one)."""
    lengths = draw(doc_lengths(max_total, max_docs))
    return lengths, draw(patterns(min(lengths), max_leaves))


def _qkv(B, H, N, D, dtype=torch.float32, seed=0, grad=False, H_kv=None):
    g = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    q = torch.randn(B, H, N, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, H_kv, N, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, H_kv, N, D, generator=g, dtype=torch.float64).to(dtype)
    if grad:
        for x in (q, k, v):
            x.requires_grad_()
    return q, k, v


def _rel(out, ref) -> float:
    """Max abs error relative to the reference's largest magnitude (1 for a small one)."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))


def _expand(k, H):
    return k if k.shape[1] == H else k.repeat_interleave(H // k.shape[1], 1)


def _ref_grads(q, k, v, masks, g, scale=None):
    """Gradients of sum(out * g) through a float64 dense masked softmax (empty rows: 0), for
    k, v with H or fewer (GQA) heads."""
    H = q.shape[1]
    if isinstance(masks, np.ndarray):
        masks = [masks] * H
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    mk = torch.stack([torch.from_numpy(np.ascontiguousarray(mm)) for mm in masks])
    s = (q64 @ _expand(k64, H).transpose(-1, -2)) * scale
    s = s.masked_fill(~mk, -1e300)
    p = torch.softmax(s, -1) * mk
    out = p @ _expand(v64, H)
    return torch.autograd.grad((out * g.double()).sum(), (q64, k64, v64))


def _dense_ref(q, k, v, masks, scale=None):
    H = q.shape[1]
    return dense_attention(q.detach(), _expand(k.detach(), H), _expand(v.detach(), H), masks,
                           scale)


# --------------------------------------------------------------------------------------------
# Documents


@pytest.mark.parametrize("make", [list, tuple, lambda x: np.array(x, np.int64),
                                  lambda x: np.array(x, np.int32),
                                  lambda x: torch.tensor(x), lambda x: torch.tensor(x).int()])
def test_documents_accepts_sequences_arrays_and_tensors(make):
    lengths = [5, 1, 12, 3]
    docs = spattn.documents(make(lengths))
    assert isinstance(docs, spattn.Documents) and len(docs) == 4
    assert docs.total == 21 and isinstance(docs.total, int)
    assert docs.lengths == (5, 1, 12, 3)
    assert all(type(x) is int for x in docs.lengths)
    assert isinstance(docs.starts, np.ndarray) and docs.starts.dtype == np.int64
    np.testing.assert_array_equal(docs.starts, [0, 5, 6, 18])
    assert docs == spattn.documents(lengths)
    assert hash(docs) == hash(spattn.documents(tuple(lengths)))


def test_documents_value_semantics():
    a = spattn.documents([3, 4])
    b = spattn.documents((3, 4))
    c = spattn.documents([4, 3])
    assert a == b and hash(a) == hash(b) and a != c
    assert len({a, b, c}) == 2
    assert {a: 1}[b] == 1
    assert spattn.documents(a) == a
    with pytest.raises(AttributeError):
        a.lengths = (1, 2)
    one = spattn.documents([1])
    assert (len(one), one.total, one.lengths) == (1, 1, (1,))
    np.testing.assert_array_equal(one.starts, [0])
    assert pickle.loads(pickle.dumps(a)) == a


def test_documents_state_cannot_be_changed():
    # an immutable value: its arrays cannot be written through, nor attributes added
    docs = spattn.documents([3, 4])
    try:
        docs.starts[1] = 0  # a read-only array or a copy: either way the value stays
    except (ValueError, TypeError):
        pass
    np.testing.assert_array_equal(docs.starts, [0, 3])
    assert docs.total == 7
    assert spattn.compile("full").to_csr(docs).nnz == 25
    np.testing.assert_array_equal(spattn.compile("full").to_dense(docs),
                                  packed_oracle("full", [3, 4]))
    with pytest.raises(AttributeError):
        docs.extra = 1


@pytest.mark.parametrize("bad,shown", [
    ([], "[]"),
    ([0], "0"),
    ([3, 0, 2], "0"),
    ([4, -2], "-2"),
    ([1.5], "1.5"),
    ([2, 1.5], "1.5"),
    (["3"], "'3'"),
    ([True], "True"),
    ([2, False], "False"),
    (np.array([[1, 2], [3, 4]]), "(2, 2)"),
    (np.array([1.5, 2.0]), "float64"),
    (torch.tensor([[1, 2], [3, 4]]), "(2, 2)"),
    (torch.tensor([1.5, 2.0]), "float32"),
    (np.array(5), "()"),
    (torch.tensor(5), "()"),
    (torch.tensor([True, True]), "True"),
    (np.array([True]), "bool"),
    ("34", "str"),
    (7, "int"),
    (None, "NoneType"),
])
def test_documents_bad_input(bad, shown):
    with pytest.raises(spattn.SpattnError, match=re.escape(shown)):
        spattn.documents(bad)


def test_documents_too_many_tokens_is_refused():
    with pytest.raises(spattn.SpattnError):
        spattn.documents([2**31, 5])
    with pytest.raises(spattn.SpattnError):
        spattn.documents(np.full(3, 2**30, np.int64))


# --------------------------------------------------------------------------------------------
# Lowering over documents: CSR, dense, nnz


def _csr_equals(p, docs, expected):
    N = docs.total
    assert p.nnz(docs) == int(expected.sum())
    m = p.to_csr(docs)
    assert m.shape == (N, N)
    assert m.has_sorted_indices
    for r in range(N):
        cols = m.indices[m.indptr[r]:m.indptr[r + 1]]
        assert np.all(np.diff(cols) > 0), f"row {r} not sorted unique"
    np.testing.assert_array_equal(m.toarray().astype(bool), expected)
    assert p.nnz(docs) == int(expected.sum())
    d = p.to_dense(docs)
    assert d.dtype == bool and d.shape == (N, N)
    np.testing.assert_array_equal(d, expected)


@settings(max_examples=40, deadline=None)
@given(packed_cases())
def test_lowering_matches_packed_oracle(case):
    lengths, text = case
    p = spattn.compile(text)
    docs = spattn.documents(lengths)
    expected = _lowerable(text, lengths)
    if expected is None:
        with pytest.raises(spattn.SpattnError, match="document"):
            p.to_csr(docs)
        return
    _csr_equals(p, docs, expected)


@pytest.mark.parametrize("name", sorted(SUITE))
@pytest.mark.parametrize("lengths", [[300], [1, 128, 129, 1, 37], [257, 64, 3]])
def test_suite_matches_packed_oracle(name, lengths):
    _csr_equals(spattn.compile(SUITE[name]), spattn.documents(lengths),
                packed_oracle(SUITE[name], lengths))


@pytest.mark.parametrize("text", ["local(3) | global([0, -1])", "stride(sqrt(n)) & causal",
                                  "random(4, seed=3) | rows([n // 2])", "~block(5)", "none"])
@pytest.mark.parametrize("n", [1, 7, 100])
def test_single_document_is_plain_n(text, n):
    p = spattn.compile(text)
    docs = spattn.documents([n])
    np.testing.assert_array_equal(p.to_dense(docs), oracle_mask(text, n))
    assert p.nnz(docs) == p.nnz(n)
    assert (p.to_csr(docs) != p.to_csr(n)).nnz == 0


def test_global_and_sink_per_document():
    lengths = [5, 1, 7, 2]
    docs = spattn.documents(lengths)
    d = spattn.compile("global([0, -1])").to_dense(docs)
    exp = np.zeros((15, 15), bool)
    for s, L in zip(docs.starts, lengths):
        ends = {s, s + L - 1}
        for i in range(s, s + L):
            for j in range(s, s + L):
                exp[i, j] = i in ends or j in ends
    np.testing.assert_array_equal(d, exp)
    # 4L - 4 pairs per document of L >= 2, one for a one-token document
    assert spattn.compile("global([0, -1])").nnz(docs) == 16 + 1 + 24 + 4
    # sink(4): the first 4 keys of each document (all of a shorter one)
    d = spattn.compile("sink(4)").to_dense(docs)
    assert d.sum() == 5 * 4 + 1 + 7 * 4 + 2 * 2
    for s, L in zip(docs.starts, lengths):
        assert d[s:s + L, s:s + min(4, L)].all()
    np.testing.assert_array_equal(d, packed_oracle("sink(4)", lengths))


def test_arguments_larger_than_a_document_are_fine():
    # stride(64) in a 10-token document is the diagonal; local(1000) is the whole block
    lengths = [10, 64, 130]
    for text in ("stride(64)", "local(1000)", "sink(500)", "block(999)", "window(300, 0)"):
        p = spattn.compile(text)
        _csr_equals(p, spattn.documents(lengths), packed_oracle(text, lengths))
    assert spattn.compile("stride(64)").nnz(spattn.documents([10])) == 10


def test_no_pair_crosses_documents():
    lengths = [3, 9, 1, 20]
    docs = spattn.documents(lengths)
    d = spattn.compile("full").to_dense(docs)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    np.testing.assert_array_equal(d, doc[:, None] == doc[None, :])
    assert spattn.compile("full").nnz(docs) == sum(L * L for L in lengths)
    assert spattn.compile("~none").nnz(docs) == sum(L * L for L in lengths)


def test_many_documents_exact_counts():
    # 40,000 documents of 1..7 tokens: counts by formula, and the CSR agrees
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 8, 40_000)
    docs = spattn.documents(lengths)
    assert len(docs) == 40_000 and docs.total == int(lengths.sum())
    per = np.where(lengths >= 2, 4 * lengths - 4, 1)
    p = spattn.compile("global([0, -1])")
    assert p.nnz(docs) == int(per.sum())
    m = p.to_csr(docs)
    assert m.nnz == int(per.sum())
    # local(1): 3L - 2 pairs per document
    assert spattn.compile("local(1)").nnz(docs) == int((3 * lengths - 2).sum())
    # the rows of one document at its place in the sequence
    d = 12_345
    s, L = int(docs.starts[d]), int(lengths[d])
    block = m[s:s + L].toarray()
    exp = np.zeros((L, docs.total), bool)
    exp[:, s:s + L] = oracle_mask("global([0, -1])", L)
    np.testing.assert_array_equal(block.astype(bool), exp)


def test_size_limits_over_documents():
    from spattn.errors import ResourceError

    big = spattn.documents([10_000, 10_000])
    with pytest.raises(ResourceError):
        spattn.compile("local(1)").to_dense(big)
    spattn.set_memory_budget(1 << 20)
    try:
        with pytest.raises(ResourceError):
            spattn.compile("full").to_csr(spattn.documents([2048, 2048]))
    finally:
        spattn.set_memory_budget(None)


def _sparse_oracle(text, lengths):
    """The packed oracle as a scipy CSR (one dense oracle per distinct length)."""
    import scipy.sparse as sp

    memo = {L: sp.csr_array(oracle_mask(text, L)) for L in set(int(x) for x in lengths)}
    return sp.block_diag([memo[int(L)] for L in lengths], format="csr")


def _sparse_tile_classes(M, bq, bk):
    """Tile classes of a sparse (N, N) mask: full when a tile's count is its area."""
    N = M.shape[0]
    nqb, nkb = -(-N // bq), -(-N // bk)
    coo = M.tocoo()
    t = (coo.row // bq).astype(np.int64) * nkb + coo.col // bk
    cnt = np.bincount(t, minlength=nqb * nkb).reshape(nqb, nkb)
    hq = np.minimum(bq, N - np.arange(nqb) * bq)
    hk = np.minimum(bk, N - np.arange(nkb) * bk)
    out = (cnt > 0).astype(np.uint8)
    out[cnt == hq[:, None] * hk[None, :]] = 2
    out[cnt == 0] = 0
    return out


@pytest.mark.parametrize("text", ["local(3) | global([0, -1])", "strided(8)",
                                  "bigbird(2, [0:2], 3)", "block(16) - rows([0:n:5])"])
def test_many_documents_against_sparse_oracle(text):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 90, 140)
    docs = spattn.documents(lengths)
    M = _sparse_oracle(text, lengths)
    p = spattn.compile(text)
    got = p.to_csr(docs)
    assert got.shape == M.shape and p.nnz(docs) == M.nnz
    assert (got != M.astype(bool)).nnz == 0
    for bq, bk in ((64, 64), (32, 128)):
        L = p.to_blocks(docs, bq, bk)
        np.testing.assert_array_equal(L.to_dense(), _sparse_tile_classes(M, bq, bk))
    classes = _sparse_tile_classes(M, 128, 128)
    b = p.stats(docs, block_size=128).blocks
    assert (b["nonzero"], b["full"]) == (int((classes > 0).sum()), int((classes == 2).sum()))
    # mask_mod on a sample of pairs, half of them inside documents
    N = docs.total
    i = rng.integers(0, N, 4000)
    j = np.where(np.arange(4000) % 2 == 0, rng.integers(0, N, 4000),
                 np.clip(i + rng.integers(-40, 40, 4000), 0, N - 1))
    mm = p.mask_mod(docs)
    got = mm(torch.tensor(0), torch.tensor(0), torch.from_numpy(i), torch.from_numpy(j))
    np.testing.assert_array_equal(got.numpy(), M[i, j].astype(bool))


# --------------------------------------------------------------------------------------------
# Block layouts and FlexAttention


@settings(max_examples=30, deadline=None)
@given(packed_cases(max_total=200), st.sampled_from([1, 2, 3, 8, 16, 64]),
       st.sampled_from([None, 1, 5, 16]))
def test_blocks_match_packed_oracle(case, bq, bk):
    lengths, text = case
    expected = _lowerable(text, lengths)
    if expected is None:
        return  # errors: tested below
    docs = spattn.documents(lengths)
    L = spattn.compile(text).to_blocks(docs, block_size=bq, key_block_size=bk)
    bk = bq if bk is None else bk
    N = docs.total
    assert isinstance(L, spattn.BlockLayout) and (L.m, L.n) == (N, N)
    assert (L.num_q_blocks, L.num_k_blocks) == (-(-N // bq), -(-N // bk))
    classes = tile_classes(expected, bq, bk)
    np.testing.assert_array_equal(L.to_dense(), classes)
    np.testing.assert_array_equal(L.to_mask(), expected)
    assert L.nonzero_blocks == int((classes > 0).sum())
    assert L.num_full == int((classes == 2).sum())
    assert L.num_partial == int((classes == 1).sum())


def test_to_blocks_over_documents_takes_every_query():
    docs = spattn.documents([6, 10])
    p = spattn.compile("local(2)")
    np.testing.assert_array_equal(p.to_blocks(docs, 4, m=16).to_mask(),
                                  packed_oracle("local(2)", [6, 10]))
    for bad in (15, 1):
        with pytest.raises(spattn.SpattnError):
            p.to_blocks(docs, 4, m=bad)
    for kw in ({"block_size": 0}, {"block_size": 2.5}, {"key_block_size": -1}):
        with pytest.raises(spattn.SpattnError):
            p.to_blocks(docs, **{"block_size": 4, **kw})
    with pytest.raises(spattn.SpattnError):
        p.stats(docs, block_size=0)


def test_tiles_straddling_a_boundary_are_partial():
    # "full" over two documents of 6 and 10 tokens at block 8: tile (0, 0) holds rows and
    # keys 0..7, of both documents, so it is partial; tile (1, 1) lies inside document 1
    docs = spattn.documents([6, 10])
    L = spattn.compile("full").to_blocks(docs, block_size=8)
    np.testing.assert_array_equal(L.to_dense(), [[1, 1], [1, 2]])
    np.testing.assert_array_equal(L.to_mask(), packed_oracle("full", [6, 10]))
    L = spattn.compile("full").to_blocks(spattn.documents([8, 8]), block_size=8)
    np.testing.assert_array_equal(L.to_dense(), [[2, 0], [0, 2]])


@settings(max_examples=20, deadline=None)
@given(packed_cases(max_total=150))
def test_mask_mod_matches_packed_oracle(case):
    lengths, text = case
    expected = _lowerable(text, lengths)
    if expected is None:
        return
    N = sum(lengths)
    mm = spattn.compile(text).mask_mod(spattn.documents(lengths))
    i = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    got = mm(torch.tensor(0), torch.tensor(0), i, j)
    assert got.dtype == torch.bool
    np.testing.assert_array_equal(got.expand(N, N).numpy(), expected)
    # flat index vectors: pairs in any order, not a grid
    rng = np.random.default_rng(N)
    ii, jj = rng.integers(0, N, 500), rng.integers(0, N, 500)
    flat = mm(torch.tensor(0), torch.tensor(1), torch.from_numpy(ii), torch.from_numpy(jj))
    np.testing.assert_array_equal(flat.numpy(), expected[ii, jj])


@pytest.mark.parametrize("text", ["stride(3)", "random(80, seed=2)", "strided(4)",
                                  "dilated(60, 2) | sink(1)"])
def test_mask_mod_many_key_intervals_per_row(text):
    # rows with more than a few dozen separate key runs (periodic or random patterns in a
    # long document) are as valid over documents as mask_mod(n) is for one sequence
    lengths = [300, 7]
    expected = packed_oracle(text, lengths)
    N = sum(lengths)
    mm = spattn.compile(text).mask_mod(spattn.documents(lengths))
    i = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    got = mm(torch.tensor(0), torch.tensor(0), i, j)
    np.testing.assert_array_equal(got.expand(N, N).numpy(), expected)
    np.testing.assert_array_equal(
        spattn.compile(text).mask_mod(300)(torch.tensor(0), torch.tensor(0), i[:300],
                                           j[:, :300]).numpy(), expected[:300, :300])


def test_mask_mod_masks_positions_past_the_end():
    # FlexAttention pads the sequence to whole blocks: padded positions attend nothing
    lengths = [5, 1, 7]
    mm = spattn.compile("full").mask_mod(spattn.documents(lengths))
    i = torch.arange(20)[:, None]
    j = torch.arange(20)[None, :]
    got = mm(torch.tensor(0), torch.tensor(0), i, j).expand(20, 20).numpy()
    exp = np.zeros((20, 20), bool)
    exp[:13, :13] = packed_oracle("full", lengths)
    np.testing.assert_array_equal(got, exp)


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


@pytest.mark.parametrize("text,lengths,block", [
    ("local(5) | global([0, -1])", [100, 1, 155], 32),
    ("streaming(2, 16)", [64, 64, 64, 64], 64),
    ("strided(8) | sink(1)", [37, 200, 13], (16, 32)),
])
def test_flex_block_mask_matches_create_block_mask(text, lengths, block):
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    p = spattn.compile(text)
    docs = spattn.documents(lengths)
    N = docs.total
    bq, bk = (block, block) if isinstance(block, int) else block
    ref = fa.create_block_mask(p.mask_mod(docs), None, None, N, N, device="cpu",
                               BLOCK_SIZE=(bq, bk))
    L = p.to_blocks(docs, bq, bk)
    mine = L.to_flex_block_mask()
    nqb, nkb = L.num_q_blocks, L.num_k_blocks
    np.testing.assert_array_equal(_flex_classes(mine, nqb, nkb), _flex_classes(ref, nqb, nkb))
    np.testing.assert_array_equal(mine.to_dense()[0, 0].numpy(), ref.to_dense()[0, 0].numpy())


def test_flex_attention_runs_a_packed_layout():
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    text, lengths = "local(4) | global([0, -1])", [100, 1, 155]
    docs = spattn.documents(lengths)
    bm = spattn.compile(text).to_blocks(docs, 128).to_flex_block_mask()
    q, k, v = _qkv(1, 2, docs.total, 16)
    out = fa.flex_attention(q, k, v, block_mask=bm)
    ref = dense_attention(q, k, v, packed_oracle(text, lengths))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Stats


@settings(max_examples=30, deadline=None)
@given(packed_cases(max_total=200), st.sampled_from([1, 3, 8, 16, 128]))
def test_stats_match_packed_oracle(case, B):
    lengths, text = case
    m = _lowerable(text, lengths)
    if m is None:
        return
    docs = spattn.documents(lengths)
    N = docs.total
    s = spattn.compile(text).stats(docs, block_size=B)
    assert isinstance(s, spattn.Stats)
    d = s.to_dict()
    nnz = int(m.sum())
    deg = m.sum(1)
    assert d["seq_len"] == N
    assert d["nnz"] == nnz
    assert abs(d["density"] - nnz / (N * N)) <= 1e-12
    assert (d["row_degree"]["min"], d["row_degree"]["max"]) == (int(deg.min()), int(deg.max()))
    assert abs(d["row_degree"]["mean"] - nnz / N) <= 1e-12
    assert d["empty_rows"] == int((deg == 0).sum())
    assert d["causal"] == (not np.triu(m, 1).any())
    assert d["symmetric"] == bool((m == m.T).all())
    classes = tile_classes(m, B, B)
    nz, full = int((classes > 0).sum()), int((classes == 2).sum())
    blocks = d["blocks"]
    assert blocks["block_size"] == B
    assert (blocks["nonzero"], blocks["full"], blocks["partial"]) == (nz, full, nz - full)
    assert abs(blocks["density"] - nz / classes.size) <= 1e-12
    if nz:
        assert abs(blocks["efficiency"] - nnz / (nz * B * B)) <= 1e-12
    assert d["documents"]["count"] == len(lengths) if isinstance(d["documents"], dict) \
        else d["documents"] is not None
    assert json.loads(json.dumps(d)) == d


def ref_kv(m: np.ndarray) -> int:
    return max(int(m[t:, :t + 1].any(0).sum()) for t in range(len(m)))


def ref_rf(m: np.ndarray) -> dict:
    """Receptive field of the packed matrix by breadth-first search (scipy's csgraph): an
    edge j -> i when m[i, j]; every token reaches itself (the residual) at depth 0."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import shortest_path

    N = len(m)
    dist = shortest_path(csr_array(m.T.astype(np.int8)), directed=True, unweighted=True)
    fin = np.isfinite(dist)
    hops = int(dist[fin].max())
    cov = {L: float((dist <= L).sum()) / (N * N) for L in depths(hops)}
    return {"reachable": float(fin.sum()) / (N * N), "hops_to_full": hops, "coverage": cov,
            "dist": dist}


@settings(max_examples=25, deadline=None)
@given(packed_cases(max_total=160))
def test_kv_cache_and_receptive_field_of_the_packed_matrix(case):
    lengths, text = case
    m = _lowerable(text, lengths)
    if m is None:
        return
    s = spattn.compile(text).stats(spattn.documents(lengths))
    causal = not np.triu(m, 1).any()
    assert s.kv_cache == (ref_kv(m) if causal else None)
    rf = ref_rf(m)
    got = s.receptive_field
    assert got["hops_to_full"] == rf["hops_to_full"]
    assert abs(got["reachable"] - rf["reachable"]) <= 1e-12
    # every depth SPEC lists is there; every depth given is right
    assert set(rf["coverage"]) <= set(got["coverage"])
    N = len(m)
    for L, v in got["coverage"].items():
        assert abs(v - float((rf["dist"] <= L).sum()) / (N * N)) <= 1e-12


def test_coverage_depths_are_specs_over_documents():
    # SPEC: coverage at L = 1, 2, 4, 8, ... up to hops_to_full; documents of 5 and 4 tokens
    # under local(1) have hops 4 and 3: the packed matrix's depths are 1, 2, 4, as stats(n)
    # gives for a single sequence with hops_to_full = 4
    s = spattn.compile("local(1)").stats(spattn.documents([5, 4]))
    assert s.receptive_field["hops_to_full"] == 4
    assert sorted(s.receptive_field["coverage"]) == [1, 2, 4]
    assert sorted(spattn.compile("local(1)").stats(5).receptive_field["coverage"]) == [1, 2, 4]


def test_stats_figures_of_a_known_packing():
    # sink(4) | local(1) over documents 1, 2 and 9: every row attends something
    lengths = [1, 2, 9]
    s = spattn.compile("sink(4) | local(1)").stats(spattn.documents(lengths), block_size=4)
    m = packed_oracle("sink(4) | local(1)", lengths)
    assert s.seq_len == 12 and s.nnz == int(m.sum())
    assert s.row_degree["min"] == 1 and s.empty_rows == 0
    assert s.symmetric is False and s.causal is False
    # rows([0]): one row per document attends, the others are empty
    s = spattn.compile("rows([0])").stats(spattn.documents([3, 1, 5]))
    assert s.nnz == 9 and s.empty_rows == 6 and s.row_degree["min"] == 0
    assert s.row_degree["max"] == 5


# --------------------------------------------------------------------------------------------
# Out-of-range arguments name the document


_BAD = [
    ("global([50])", [60, 10, 70], 1, 10),
    ("rows([-12])", [12, 40, 11], 2, 11),
    ("stride(n // 1000)", [2000, 500], 1, 500),
    ("local(2) | block(n // 100 - 1)", [300, 250, 99, 400], 2, 99),
]


def _names_document(d, L):
    return rf"document {d}\b(?s:.*)\b{L}\b"


@pytest.mark.parametrize("text,lengths,d,L", _BAD)
@pytest.mark.parametrize("op", ["nnz", "to_csr", "to_dense", "stats", "to_blocks", "mask_mod"])
def test_out_of_range_argument_names_the_document(text, lengths, d, L, op):
    p = spattn.compile(text)
    docs = spattn.documents(lengths)
    with pytest.raises(LoweringError, match=_names_document(d, L)):
        getattr(p, op)(docs)


@pytest.mark.parametrize("text,lengths,d,L", _BAD[:2])
def test_out_of_range_argument_in_attention(text, lengths, d, L):
    q, k, v = _qkv(1, 1, sum(lengths), 4)
    with pytest.raises(spattn.SpattnError, match=_names_document(d, L)):
        spattn.attention(q, k, v, text, documents=lengths, backend="cpu")


# --------------------------------------------------------------------------------------------
# Attention over documents


@pytest.mark.parametrize("name", sorted(SUITE))
def test_suite_attention_float32(name):
    text, lengths = SUITE[name], [260, 1, 131, 37]
    q, k, v = _qkv(1, 2, sum(lengths), 16, grad=True)
    out = spattn.attention(q, k, v, text, documents=lengths, backend="cpu")
    assert out.dtype == torch.float32 and out.shape == q.shape
    M = packed_oracle(text, lengths)
    assert _rel(out, dense_attention(q.detach(), k.detach(), v.detach(), M)) <= 1e-5
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(grads, _ref_grads(q, k, v, M, g)):
        assert a.dtype == torch.float32
        assert _rel(a, b) <= 1e-5


@settings(max_examples=20, deadline=None)
@given(packed_cases(max_total=80, max_leaves=5), st.sampled_from(["cpu", "reference"]),
       st.integers(1, 2))
def test_attention_matches_packed_reference_float64(case, backend, B):
    lengths, text = case
    M = _lowerable(text, lengths)
    if M is None:
        return
    q, k, v = _qkv(B, 2, sum(lengths), 8, torch.float64, grad=True, seed=len(text))
    out = spattn.attention(q, k, v, text, documents=spattn.documents(lengths),
                           backend=backend)
    assert out.dtype == torch.float64 and out.shape == q.shape
    assert torch.isfinite(out).all()
    assert _rel(out, dense_attention(q.detach(), k.detach(), v.detach(), M)) <= 1e-10
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(grads, _ref_grads(q, k, v, M, g)):
        assert torch.isfinite(a).all()
        assert _rel(a, b) <= 1e-10


@pytest.mark.parametrize("text,lengths", [
    ("local(2) | global([0])", [7, 1, 12]),
    ("strided(4)", [19]),
    ("dilated(2, 3) | sink(2)", [2, 3, 5, 7]),
    ("rows([1, -1]) & local(1)", [6, 2, 9]),  # mostly empty rows
    ("random(3, seed=1) | block(5)", [13, 8]),
])
def test_gradcheck_float64(text, lengths):
    q, k, v = _qkv(1, 2, sum(lengths), 4, torch.float64, grad=True)

    def f(q, k, v):
        return spattn.attention(q, k, v, text, documents=lengths, backend="cpu", scale=0.7)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradgradcheck_float64(backend):
    # the cpu and reference backends are differentiable to any order
    q, k, v = _qkv(1, 2, 8, 2, torch.float64, grad=True, seed=5)

    def f(q, k, v):
        return spattn.attention(q, k, v, ["local(1) | global([0])", "rows([-1]) | sink(1)"],
                                documents=[3, 1, 4], backend=backend, scale=0.7)

    assert torch.autograd.gradgradcheck(f, (q, k, v), eps=1e-6, atol=1e-5, rtol=1e-4,
                                        fast_mode=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_half_dtypes(backend, dtype, tol):
    text, lengths = "local(3) | sink(1) | rows([0])", [30, 1, 59]
    q, k, v = _qkv(1, 2, 90, 16, dtype, grad=True)
    out = spattn.attention(q, k, v, text, documents=lengths, backend=backend)
    assert out.dtype == dtype
    assert _rel(out, dense_attention(q.detach(), k.detach(), v.detach(),
                                     packed_oracle(text, lengths))) <= tol
    out.float().sum().backward()
    for x in (q, k, v):
        assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


@pytest.fixture
def dense512(monkeypatch):
    """The dense route from 512 tokens (its default threshold is longer), to test it at
    sizes the suite can afford."""
    from spattn.backends import cpu_docs

    monkeypatch.setattr(cpu_docs, "DENSE_MIN", 512)


@pytest.mark.parametrize("text,lengths,dtype", [
    ("causal", [600, 3, 512, 1], torch.float32),
    ("full", [1, 530], torch.float64),
    ("causal | sink(1)", [520, 7], torch.float32),  # exactly causal at every length
    ("window(511, 0)", [512, 513, 3], torch.float64),  # causal at 512 and 3 only
    ("local(515)", [525, 512], torch.float32),  # full at 512, not at 525
])
def test_long_dense_documents(text, lengths, dtype, dense512):
    # long documents whose pattern is exactly causal or full at their length, next to short
    # ones and to other patterns: forward and backward against the packed oracle, GQA
    from spattn.backends import cpu_docs

    assert cpu_docs.dense_classes(spattn.compile(text).node, spattn.documents(lengths))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    N = sum(lengths)
    q, k, v = _qkv(1, 2, N, 8, dtype, grad=True, H_kv=1)
    out = spattn.attention(q, k, v, text, documents=lengths, backend="cpu")
    assert out.dtype == dtype
    M = packed_oracle(text, lengths)
    assert _rel(out, _dense_ref(q, k, v, M)) <= tol
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(grads, _ref_grads(q, k, v, M, g)):
        assert a.dtype == dtype and _rel(a, b) <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_long_dense_documents_half(dtype, tol, dense512):
    lengths = [520, 3]
    q, k, v = _qkv(2, 2, 523, 16, dtype, grad=True)
    out = spattn.attention(q, k, v, "causal", documents=lengths, backend="cpu")
    assert out.dtype == dtype
    M = packed_oracle("causal", lengths)
    assert _rel(out, dense_attention(q.detach(), k.detach(), v.detach(), M)) <= tol
    out.float().sum().backward()
    for x in (q, k, v):
        assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def _dense_f(masks, scale=None):
    """A differentiable float64 dense masked softmax (any order) for (B, H, N, D) inputs."""
    mk = torch.stack([torch.from_numpy(np.ascontiguousarray(m)) for m in masks])

    def f(q, k, v):
        sc = q.shape[-1] ** -0.5 if scale is None else scale
        s = (q @ k.transpose(-1, -2)) * sc
        p = torch.softmax(s.masked_fill(~mk, -1e300), -1) * mk
        return p @ v

    return f


def test_long_dense_documents_per_head_and_double_backward(dense512):
    lengths = [515, 2, 9]
    pats = ["causal", "local(3) | global([0])"]
    q, k, v = _qkv(1, 2, sum(lengths), 4, torch.float64, grad=True, seed=3)
    out = spattn.attention(q, k, v, pats, documents=lengths, backend="cpu")
    assert _rel(out, _dense_f([packed_oracle(p, lengths) for p in pats])(q, k, v)) <= 1e-10
    # double backward through the causal documents: d/d(q, k, v) of <grad(out . g), w>,
    # against the dense reference's
    ref_f = _dense_f([packed_oracle("causal", lengths)] * 2)
    g = torch.randn_like(out)
    ws = [torch.randn_like(x) for x in (q, k, v)]
    results = []
    for f in (lambda q, k, v: spattn.attention(q, k, v, "causal", documents=lengths,
                                               backend="cpu"), ref_f):
        gr = torch.autograd.grad((f(q, k, v) * g).sum(), (q, k, v), create_graph=True)
        results.append(torch.autograd.grad(sum((a * w).sum() for a, w in zip(gr, ws)),
                                           (q, k, v)))
    for a, b in zip(*results):
        assert _rel(a, b) <= 1e-9


def test_equals_each_document_alone():
    text = "local(3) | global([0, -1]) | stride(max(1, n // 3))"
    lengths = [40, 1, 23, 64, 9]
    q, k, v = _qkv(2, 3, sum(lengths), 8, torch.float64)
    out = spattn.attention(q, k, v, text, documents=lengths, backend="cpu")
    s = 0
    for L in lengths:
        alone = spattn.attention(q[:, :, s:s + L], k[:, :, s:s + L], v[:, :, s:s + L], text,
                                 backend="cpu")
        torch.testing.assert_close(out[:, :, s:s + L], alone, atol=1e-12, rtol=1e-12)
        s += L


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_many_documents(backend):
    # 60 documents of 1..39 tokens (N ~ 1,200), GQA
    text = "local(4) | global([0, -1]) | random(2, seed=5)"
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 40, 60).tolist()
    q, k, v = _qkv(1, 2, sum(lengths), 8, torch.float64, grad=True, H_kv=1)
    out = spattn.attention(q, k, v, text, documents=lengths, backend=backend)
    M = packed_oracle(text, lengths)
    assert _rel(out, _dense_ref(q, k, v, M)) <= 1e-10
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(grads, _ref_grads(q, k, v, M, g)):
        assert _rel(a, b) <= 1e-10


@pytest.mark.parametrize("make", [list, tuple, spattn.documents,
                                  lambda x: np.array(x), lambda x: torch.tensor(x)])
def test_documents_argument_forms(make):
    text, lengths = "local(2) | sink(1)", [5, 11, 4]
    q, k, v = _qkv(1, 2, 20, 8, torch.float64)
    out = spattn.attention(q, k, v, text, documents=make(lengths), backend="cpu")
    ref = dense_attention(q, k, v, packed_oracle(text, lengths))
    assert _rel(out, ref) <= 1e-12


def test_documents_none_is_one_sequence():
    q, k, v = _qkv(1, 2, 20, 8, torch.float64)
    # the default backend for CPU tensors
    out = spattn.attention(q, k, v, "local(2) | global([0])", documents=[7, 13])
    ref = dense_attention(q, k, v, packed_oracle("local(2) | global([0])", [7, 13]))
    assert _rel(out, ref) <= 1e-12
    a = spattn.attention(q, k, v, "local(2) | global([0])", documents=None, backend="cpu")
    b = spattn.attention(q, k, v, "local(2) | global([0])", backend="cpu")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("H_kv", [1, 2])
def test_gqa(backend, H_kv):
    text, lengths = "local(3) | global([0, -1])", [17, 1, 30]
    H = 4
    q, k, v = _qkv(2, H, sum(lengths), 8, torch.float64, grad=True, H_kv=H_kv)
    out = spattn.attention(q, k, v, text, documents=lengths, backend=backend)
    assert out.shape == q.shape
    M = packed_oracle(text, lengths)
    assert _rel(out, _dense_ref(q, k, v, M)) <= 1e-10
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    assert grads[1].shape == k.shape and grads[2].shape == v.shape
    for a, b in zip(grads, _ref_grads(q, k, v, M, g)):
        assert _rel(a, b) <= 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_per_head_patterns_with_gqa(dtype, tol):
    pats = ["local(2)", "strided(4)", "bigbird(2, [0], 2)", "none"]
    lengths = [33, 2, 1, 50]
    q, k, v = _qkv(1, 4, sum(lengths), 8, dtype, grad=True, H_kv=2)
    out = spattn.attention(q, k, v, pats, documents=lengths, backend="cpu")
    masks = [packed_oracle(p, lengths) for p in pats]
    assert _rel(out, _dense_ref(q, k, v, masks)) <= tol
    assert (out[:, 3].detach() == 0).all()
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(grads, _ref_grads(q, k, v, masks, g)):
        assert _rel(a, b) <= tol


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_rows_zero_output_and_gradients(backend, dtype):
    lengths = [3, 1, 5]
    q, k, v = _qkv(2, 2, 9, 8, dtype, grad=True)
    out = spattn.attention(q, k, v, "rows([0])", documents=lengths, backend=backend)
    assert torch.isfinite(out).all()
    starts = [0, 3, 4]
    empty = [i for i in range(9) if i not in starts]
    assert (out[:, :, empty].detach() == 0).all()
    assert (out[:, :, starts].detach() != 0).any()
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[:, :, empty] == 0).all()
    # and the gradients equal the dense reference's
    M = packed_oracle("rows([0])", lengths)
    g = torch.ones_like(out)
    for a, b in zip((q.grad, k.grad, v.grad), _ref_grads(q, k, v, M, g)):
        assert _rel(a, b) <= (1e-5 if dtype == torch.float32 else 1e-10)
    # no pair at all
    q, k, v = _qkv(1, 2, 9, 8, dtype, grad=True)
    out = spattn.attention(q, k, v, "none", documents=lengths, backend=backend)
    assert (out.detach() == 0).all()
    out.sum().backward()
    for x in (q, k, v):
        assert (x.grad == 0).all()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_one_token_documents(backend):
    # 64 documents of one token: each token attends only itself, so the output is v
    q, k, v = _qkv(1, 2, 64, 8, torch.float64)
    for text in ("full", "causal", "local(5) | global([0, -1])", "sink(3)"):
        out = spattn.attention(q, k, v, text, documents=[1] * 64, backend=backend)
        torch.testing.assert_close(out, v, atol=1e-12, rtol=1e-12)
    out = spattn.attention(q, k, v, "none", documents=[1] * 64, backend=backend)
    assert (out == 0).all()
    # and mixed with longer ones, in any order
    lengths = [1] * 10 + [20] + [1] * 14 + [3, 17]
    out = spattn.attention(q, k, v, "causal", documents=lengths, backend=backend)
    assert _rel(out, dense_attention(q, k, v, packed_oracle("causal", lengths))) <= 1e-12


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_non_contiguous_inputs(backend):
    # (B, N, H, D) tensors seen as (B, H, N, D): strided views, not copies
    text, lengths = "local(3) | global([0, -1])", [11, 1, 20, 4]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, 36, 2, 8, generator=g, dtype=torch.float64)
    q, k, v = (x[i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = spattn.attention(q, k, v, text, documents=lengths, backend=backend)
    ref = dense_attention(q, k, v, packed_oracle(text, lengths))
    assert _rel(out, ref) <= 1e-12


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_layouts_of_one_length_do_not_share_plans(backend):
    # the same N, the same pattern, different documents (and none): each call is its own
    text = "local(2) | global([0, -1]) | sink(1)"
    q, k, v = _qkv(1, 2, 20, 8, torch.float64)
    for lengths in ([5, 15], [15, 5], [20], None, [1] * 20, [5, 15]):
        out = spattn.attention(q, k, v, text, documents=lengths, backend=backend)
        M = packed_oracle(text, lengths) if lengths else oracle_mask(text, 20)
        assert _rel(out, dense_attention(q, k, v, M)) <= 1e-12, lengths


def test_scale_with_documents():
    text, lengths = "local(4) | global([0])", [10, 21]
    q, k, v = _qkv(1, 2, 31, 8, torch.float64)
    out = spattn.attention(q, k, v, text, documents=lengths, backend="cpu", scale=0.3)
    ref = dense_attention(q, k, v, packed_oracle(text, lengths), scale=0.3)
    assert _rel(out, ref) <= 1e-12


def test_torch_compile_fullgraph_with_documents():
    # as without documents (tests/test_compile.py): one opaque operator, fullgraph
    from torch._dynamo.testing import CompileCounterWithBackend

    text, lengths = "local(2) | global([0])", [5, 1, 10]

    def f(q, k, v):
        return spattn.attention(q, k, v, text, documents=lengths, backend="cpu") * 2

    torch._dynamo.reset()
    try:
        q, k, v = _qkv(1, 2, 16, 8, grad=True)
        counter = CompileCounterWithBackend("aot_eager")
        out = torch.compile(f, fullgraph=True, backend=counter)(q, k, v)
        ref = 2 * dense_attention(q.detach(), k.detach(), v.detach(),
                                  packed_oracle(text, lengths))
        assert _rel(out, ref) <= 1e-5
        g = torch.randn_like(out)
        grads = torch.autograd.grad((out * g).sum(), (q, k, v))
        for a, b in zip(grads, _ref_grads(q, k, v, packed_oracle(text, lengths), 2 * g)):
            assert _rel(a, b) <= 1e-5
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# Attention errors


def test_attention_total_must_equal_n():
    q, k, v = _qkv(1, 2, 12, 4)
    with pytest.raises(spattn.SpattnError, match=r"(?s)(\b10\b.*\b12\b|\b12\b.*\b10\b)"):
        spattn.attention(q, k, v, "local(1)", documents=[4, 6], backend="cpu")
    with pytest.raises(spattn.SpattnError, match=r"(?s)(\b13\b.*\b12\b|\b12\b.*\b13\b)"):
        spattn.attention(q, k, v, "local(1)", documents=spattn.documents([12, 1]),
                         backend="cpu")


def test_attention_documents_need_m_equal_n():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 5, 4, generator=g)
    k = torch.randn(1, 2, 10, 4, generator=g)
    with pytest.raises(spattn.SpattnError):
        spattn.attention(q, k, k, "local(1)", documents=[4, 6], backend="cpu")
    with pytest.raises(spattn.SpattnError):
        spattn.attention(q, k, k, "local(1)", documents=[5], backend="cpu")


def test_attention_per_head_count_with_documents():
    q, k, v = _qkv(1, 2, 12, 4)
    with pytest.raises(spattn.SpattnError, match="per-head"):
        spattn.attention(q, k, v, ["local(1)"] * 3, documents=[4, 8], backend="cpu")


@pytest.mark.parametrize("bad", [[], [0, 12], [6, 6.0], [True, 11], "12"])
def test_attention_bad_documents(bad):
    q, k, v = _qkv(1, 2, 12, 4)
    with pytest.raises(spattn.SpattnError):
        spattn.attention(q, k, v, "local(1)", documents=bad, backend="cpu")


# --------------------------------------------------------------------------------------------
# Triton (interpreter on CPU, as tests/test_triton.py runs it)


def test_triton_backend_with_documents(monkeypatch):
    pytest.importorskip("triton")
    cuda = torch.cuda.is_available()
    if not cuda:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    dev = "cuda" if cuda else "cpu"
    text, lengths = "local(3) | global([0, -1])", [13, 1, 26]
    q, k, v = _qkv(1, 2, 40, 16)
    qs, ks, vs = (x.to(dev).requires_grad_() for x in (q, k, v))
    out = spattn.attention(qs, ks, vs, text, documents=lengths, backend="triton")
    assert out.shape == q.shape and out.dtype == torch.float32
    M = packed_oracle(text, lengths)
    ref = dense_attention(q, k, v, M)
    torch.testing.assert_close(out.detach().cpu().double(), ref, atol=2e-4, rtol=2e-4)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * g.to(dev)).sum(), (qs, ks, vs))
    for a, b in zip(grads, _ref_grads(q, k, v, M, g)):
        torch.testing.assert_close(a.cpu().double(), b, atol=8e-4, rtol=8e-4)


# --------------------------------------------------------------------------------------------
# nn modules


def _per_document(f, x, lengths, dim=1):
    outs, s = [], 0
    for L in lengths:
        outs.append(f(x.narrow(dim, s, L)))
        s += L
    return torch.cat(outs, dim)


@pytest.mark.parametrize("pattern", [
    "local(2) | global([0, -1])",
    ["sink(2) | window(3, 0)", "stride(max(1, n // 2)) | local(1)"],
])
def test_sparse_attention_module_documents(pattern):
    from spattn.nn import SparseAttention

    torch.manual_seed(0)
    lengths = [9, 1, 14, 4]
    mod = SparseAttention(16, 2, pattern, backend="cpu", dtype=torch.float64)
    x = torch.randn(2, sum(lengths), 16, dtype=torch.float64, requires_grad=True)
    y = mod(x, documents=lengths)
    assert y.shape == x.shape
    ref = _per_document(mod, x, lengths)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(y)
    a = torch.autograd.grad((y * g).sum(), (x, mod.in_proj_weight))
    b = torch.autograd.grad((ref * g).sum(), (x, mod.in_proj_weight))
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, atol=1e-10, rtol=1e-10)
    # documents as a Documents value, and unbatched / sequence-first inputs
    torch.testing.assert_close(mod(x, documents=spattn.documents(lengths)), y)
    torch.testing.assert_close(mod(x[1], documents=lengths), y[1])
    mod_t = SparseAttention(16, 2, pattern, backend="cpu", batch_first=False,
                            dtype=torch.float64)
    mod_t.load_state_dict(mod.state_dict())
    torch.testing.assert_close(mod_t(x.transpose(0, 1), documents=lengths).transpose(0, 1), y)


def test_sparse_attention_module_documents_errors():
    from spattn.nn import SparseAttention

    mod = SparseAttention(8, 2, "local(1)", backend="cpu")
    x = torch.randn(2, 10, 8)
    with pytest.raises(spattn.SpattnError, match=r"(?s)(\b9\b.*\b10\b|\b10\b.*\b9\b)"):
        mod(x, documents=[4, 5])
    with pytest.raises(spattn.SpattnError):
        mod(x, documents=[4, 0, 6])
    with pytest.raises(spattn.SpattnError):
        mod(x, documents=[4, 6], key_padding_mask=torch.zeros(2, 10, dtype=torch.bool))


def test_sparse_encoder_documents():
    from spattn.nn import SparseEncoder

    torch.manual_seed(1)
    lengths = [7, 1, 12, 3]
    enc = SparseEncoder(8, 2, ["local(1) | global([-1])", ["causal", "sink(2) | local(2)"]],
                        backend="cpu", dtype=torch.float64)
    x = torch.randn(2, sum(lengths), 8, dtype=torch.float64)
    y = enc(x, documents=lengths)
    assert y.shape == x.shape
    torch.testing.assert_close(y, _per_document(enc, x, lengths), atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_stats_documents(capsys):
    from spattn.cli import main

    text, lengths = "local(1) | global([0, -1])", [5, 1, 7]
    assert main(["stats", text, "--documents", "5,1,7", "--block-size", "4", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    m = packed_oracle(text, lengths)
    assert d["seq_len"] == 13 and d["nnz"] == int(m.sum())
    assert d["blocks"]["nonzero"] == int((tile_classes(m, 4, 4) > 0).sum())
    # one column per packing, next to a plain length
    assert main(["stats", text, "-n", "13", "--documents", "5,1,7", "--documents", "13"]) == 0
    assert "13" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["stats", text, "--documents", "5,0,7"])
    assert e.value.code != 0
    assert "5,0,7" in capsys.readouterr().err
    assert main(["stats", "global([6])", "--documents", "5,10"]) != 0
    assert re.search(r"document 0\b.*\b5\b", capsys.readouterr().err)
