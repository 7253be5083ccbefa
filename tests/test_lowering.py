"""Lowering is exact: CSR, nnz and dense masks equal the independent per-pair oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import oracle_mask, oracle_random_keys
from strategies import sized_patterns

import spattn
from spattn.errors import LoweringError, ResourceError
from spattn.lower import MAX_DENSE_N
from spattn.random_keys import row_keys
from spattn.suite import SUITE  # noqa: E402 - the shared standard suite


def _csr_equals(p, n, expected):
    m = p.to_csr(n)
    assert m.shape == (n, n)
    assert m.has_sorted_indices
    for r in range(n):
        cols = m.indices[m.indptr[r]:m.indptr[r + 1]]
        assert np.all(np.diff(cols) > 0), f"row {r} not sorted unique"
    np.testing.assert_array_equal(m.toarray(), expected)
    assert p.nnz(n) == int(expected.sum())
    np.testing.assert_array_equal(p.to_dense(n), expected)


def _lowerable(text, n):
    try:
        return oracle_mask(text, n, raw=True)
    except (AssertionError, ZeroDivisionError, LoweringError, ValueError):
        return None


@settings(max_examples=150)
@given(sized_patterns())
def test_csr_matches_oracle(case):
    n, text = case
    p = spattn.compile(text)
    expected = _lowerable(text, n)
    if expected is None:  # an argument or index out of range at this n: must be a SpattnError
        with pytest.raises(spattn.SpattnError):
            p.to_csr(n)
        return
    _csr_equals(p, n, expected)


@pytest.mark.parametrize("name", sorted(SUITE))
@pytest.mark.parametrize("n", [1, 127, 300, 513])
def test_suite_matches_oracle(name, n):
    p = spattn.compile(SUITE[name])
    _csr_equals(p, n, oracle_mask(SUITE[name], n, raw=True))


def test_index_dtype_and_int32():
    m = spattn.compile("local(2)").to_csr(50)
    assert m.indices.dtype == np.int32 and m.indptr.dtype == np.int32


@pytest.mark.parametrize("n", [1, 2, 7, 64, 301])
@pytest.mark.parametrize("r,seed", [(0, 0), (1, 0), (3, 7), (8, 1), (40, 2), (500, 3)])
def test_random_keys_match_pure_python_definition(n, r, seed):
    rows = np.arange(n)
    got = row_keys(n, r, seed, rows)
    for i in range(0, n, max(1, n // 17)):
        assert got[i].tolist() == oracle_random_keys(n, r, seed, i)
    assert got.shape == (n, min(r, n))


def test_random_is_deterministic_and_row_local():
    p = spattn.compile("random(5, seed=11)")
    a = p.to_csr(200)
    b = p.to_csr(200)
    assert (a != b).nnz == 0
    # rows computed for a sub-range equal the same rows of the full matrix
    indptr, indices = p.row_range_csr(200, 150, 200)
    np.testing.assert_array_equal(indices, a.indices[a.indptr[150]:a.indptr[200]])
    assert np.all(np.diff(a.indptr) == 5)


def test_random_seed_changes_keys():
    a = spattn.compile("random(5, seed=1)").to_csr(300)
    b = spattn.compile("random(5, seed=2)").to_csr(300)
    assert (a != b).nnz > 0


@given(sized_patterns(sizes=[5, 37, 100]), st.data())
def test_row_range_matches_full(case, data):
    n, text = case
    if _lowerable(text, n) is None:
        return
    p = spattn.compile(text)
    full = p.to_csr(n)
    r0 = data.draw(st.integers(0, n))
    r1 = data.draw(st.integers(r0, n))
    indptr, indices = p.row_range_csr(n, r0, r1)
    np.testing.assert_array_equal(indptr, full.indptr[r0:r1 + 1] - full.indptr[r0])
    np.testing.assert_array_equal(indices, full.indices[full.indptr[r0]:full.indptr[r1]])


def test_large_n_is_linear_in_pairs():
    # 2**20 rows of a band: never n×n (n×n would be 1 TiB); exact count by formula
    n, w = 1 << 20, 3
    p = spattn.compile(f"local({w})")
    expected = n * (2 * w + 1) - w * (w + 1)
    assert p.nnz(n) == expected
    assert p.to_csr(n).nnz == expected


def test_global_and_stride_counts_at_scale():
    n = 100_003  # prime
    assert spattn.compile("global([0, -1])").nnz(n) == 4 * n - 4
    i = np.arange(n)
    # row i holds the j < n with j = i (mod s): ceil((n - i mod s) / s) of them
    s = 1000
    assert spattn.compile(f"stride({s})").nnz(n) == int(((n - i % s + s - 1) // s).sum())


def test_to_dense_refuses_large_n():
    with pytest.raises(ResourceError, match=r"to_dense\(n = 16,385\)"):
        spattn.compile("local(1)").to_dense(MAX_DENSE_N + 1)


def test_memory_budget_refuses_with_estimate():
    spattn.set_memory_budget(1 << 20)
    try:
        with pytest.raises(ResourceError, match=r"CSR mask .* pairs.*MiB"):
            spattn.compile("full").to_csr(4096)
    finally:
        spattn.set_memory_budget(None)


@pytest.mark.parametrize("bad", [0, -3, 1.5, "10", True])
def test_bad_n(bad):
    with pytest.raises(spattn.SpattnError, match="sequence length n"):
        spattn.compile("local(1)").nnz(bad)


_PROG = st.one_of(st.integers(1, 9).map(lambda s: f"stride({s})"),
                  st.tuples(st.integers(0, 6), st.integers(1, 6)).map(
                      lambda t: f"dilated({t[0]}, {t[1]})"))
_SINGLE = st.sampled_from(["local(0)", "local(2)", "window(5, 0)", "window(0, 3)", "causal",
                           "full", "none", "sink(3)", "block(4)", "rows([1, -1])",
                           "rows([0:n:3])", "sink(0)", "block(9)"])
_CLIP = st.sampled_from(["", " & causal", " & local(7)", " & window(3, 9)", " & block(5)"])


@settings(max_examples=300)
@given(_PROG, _SINGLE, _CLIP, st.sampled_from([2, 3, 7, 13, 31, 64, 97]))
def test_progression_union_fast_path(prog, single, clip, n):
    # (stride | dilated) ∪ a one-interval-per-row primitive is built without a merge
    text = f"({prog} | {single}){clip}"
    np.testing.assert_array_equal(spattn.compile(text).to_csr(n).toarray(),
                                  oracle_mask(text, n, raw=True))
