"""Every primitive through every pass, against SPEC's definition.

For each entry of the primitive table, hypothesis draws a sequence length (1, primes, sizes
that are no multiple of anything) and arguments from 0 to 10**30 (literals far beyond n, n ± 1,
small values), optionally wraps the primitive in an operator, and checks that every pass gives
SPEC's mask, computed here per pair with Python integers (exact at any size, sharing no code
with spattn): ``to_dense``, ``to_csr``, ``nnz``, the row figures of ``stats``, ``to_blocks``
(rebuilt with ``to_mask``, so the numpy element predicate of partial tiles is exercised), the
torch ``mask_mod`` and the generated Triton predicate run by the Triton interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import oracle_random_keys

import spattn
from spattn import prims
from spattn.bind import bind

SIZES = [1, 2, 3, 5, 7, 13, 31, 40]
HUGE = [10**9, 2**31 - 1, 2**31, 2**63, 10**21, 10**30]


def _positions(text: str, n: int) -> set[int]:
    """An index set's positions with Python's meaning (lists: negative from the end)."""
    inner = text[1:-1]
    if ":" in inner:
        parts = [int(x) if x else None for x in inner.split(":")]
        return set(range(n)[slice(*parts)])
    return {int(x) % n for x in inner.split(",") if x.strip()}


#: SPEC section 1, per pair, in Python integers. A new primitive needs its line here.
SPEC = {
    "local": lambda n, i, j, w: abs(i - j) <= w,
    "window": lambda n, i, j, l, r: -l <= j - i <= r,
    "causal": lambda n, i, j: j <= i,
    "stride": lambda n, i, j, s: (i - j) % s == 0,
    "dilated": lambda n, i, j, w, d: abs(i - j) <= w * d and (i - j) % d == 0,
    "block": lambda n, i, j, b: i // b == j // b,
    "fixed": lambda n, i, j, l, c: i // l == j // l or j % l >= l - c,
    "rows": lambda n, i, j, I: i in _positions(I, n),
    "cols": lambda n, i, j, I: j in _positions(I, n),
    "global": lambda n, i, j, I: i in _positions(I, n) or j in _positions(I, n),
    "sink": lambda n, i, j, k: j < k,
    "random": lambda n, i, j, r, seed: j in oracle_random_keys(n, r, seed, i),
    "full": lambda n, i, j: True,
    "none": lambda n, i, j: False,
}

#: how the primitive is combined: each exercises a different path of every pass
WRAPS = ["{}", "({}) & causal", "({}) | stride(3)", "({}) - local(1)", "~({})",
         "({}) | global([0])", "({}) & window(2, 5)"]
WRAP_SPEC = [
    lambda n, i, j, x: x, lambda n, i, j, x: x and j <= i,
    lambda n, i, j, x: x or (i - j) % 3 == 0, lambda n, i, j, x: x and abs(i - j) > 1,
    lambda n, i, j, x: not x, lambda n, i, j, x: x or i == 0 or j == 0,
    lambda n, i, j, x: x and -2 <= j - i <= 5,
]


def _int(minimum: int, n: int):
    small = st.integers(max(0, minimum), max(0, minimum) + 6)
    near = st.sampled_from([n - 1, n, n + 1, 2 * n]).filter(lambda v: v >= minimum)
    return st.one_of(small, near, st.sampled_from(HUGE))


def _index_set(n: int):
    pos = st.integers(-n, n - 1).map(str)
    lst = st.lists(pos, min_size=0, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
    bound = st.one_of(st.just(""), st.integers(-n - 3, n + 3).map(str),
                      st.sampled_from(HUGE).map(str), st.sampled_from(HUGE).map(lambda v: f"-{v}"))
    step = st.one_of(st.just(""), st.sampled_from(["1", "2", "3", "-1", "-2", str(10**30)]))
    slc = st.tuples(bound, bound, step).map(
        lambda t: f"[{t[0]}:{t[1]}" + (f":{t[2]}" if t[2] else "") + "]")
    return st.one_of(lst, slc)


@st.composite
def _case(draw, name):
    n = draw(st.sampled_from(SIZES))
    spec = prims.PRIMITIVES[name]
    vals, texts = [], []
    for par in spec.params:
        if par.kind == "index":
            v = draw(_index_set(n))
            vals.append(v)
            texts.append(v)
            continue
        lo = par.minimum if par.minimum is not None else -5
        v = draw(_int(lo, n)) if par.name != "seed" else draw(st.one_of(
            st.integers(-3, 3), st.sampled_from(HUGE)))
        if name == "fixed" and par.name == "c":  # 1 <= c <= l
            v = min(v, vals[0])
        vals.append(v)
        texts.append(f"seed={v}" if par.name == "seed" else str(v))
    text = name if not spec.params else f"{name}({', '.join(texts)})"
    w = draw(st.integers(0, len(WRAPS) - 1))
    return n, text, vals, w


def _oracle(name, n, vals, w) -> np.ndarray:
    f, g = SPEC[name], WRAP_SPEC[w]
    return np.array([[bool(g(n, i, j, f(n, i, j, *vals))) for j in range(n)]
                     for i in range(n)], bool)


_TRITON_EVAL = '''
import triton
import triton.language as tl

# @MASK_FN@

@triton.jit
def _eval(OUT, PRM, TAB, n, B: tl.constexpr):
    r = tl.arange(0, B)
    i = tl.minimum(r, n - 1)[:, None]
    j = tl.minimum(r, n - 1)[None, :]
    keep = _mask_fn(i, j, n, PRM, TAB)
    tl.store(OUT + r[:, None] * B + r[None, :], keep.to(tl.int8))
'''


def _triton_mask(node, n: int) -> np.ndarray:
    from spattn.backends.triton_codegen import generate, kernel_module

    src, prm, tab = generate(bind(node, n), n)
    mod = kernel_module(src, _TRITON_EVAL)
    B = 64
    out = torch.zeros(B * B, dtype=torch.int8)
    mod._eval[(1,)](out, torch.from_numpy(prm), torch.from_numpy(tab), n, B=B)
    return out.view(B, B).numpy()[:n, :n].astype(bool)


def _check_all_passes(text: str, n: int, want: np.ndarray, triton: bool) -> None:
    p = spattn.compile(text)
    where = f"{text} at n = {n}"
    assert np.array_equal(p.to_dense(n), want), f"to_dense: {where}"
    assert np.array_equal(p.to_csr(n).toarray(), want), f"to_csr: {where}"
    assert p.nnz(n) == int(want.sum()), f"nnz: {where}"
    s = p.stats(n, block_size=4)
    deg = want.sum(1)
    assert (s.nnz, s.empty_rows, s.row_degree["min"], s.row_degree["max"]) == (
        int(want.sum()), int((deg == 0).sum()), int(deg.min()), int(deg.max())), f"stats: {where}"
    assert s.causal == (not np.triu(want, 1).any()), f"stats.causal: {where}"
    assert s.symmetric == bool((want == want.T).all()), f"stats.symmetric: {where}"
    for bq, bk, m in ((4, 4, n), (3, 8, n), (8, 3, max(1, n // 2))):
        L = p.to_blocks(n, bq, bk, m=m)
        assert np.array_equal(L.to_mask(), want[n - m:]), f"to_blocks({bq}, {bk}, m={m}): {where}"
    i = torch.arange(n, dtype=torch.int32)
    mm = p.mask_mod(n)(0, 0, i[:, None], i[None, :])
    assert np.array_equal(mm.numpy(), want), f"mask_mod: {where}"
    if triton:
        assert np.array_equal(_triton_mask(p.node, n), want), f"triton predicate: {where}"


def test_every_primitive_has_a_definition_here():
    assert set(SPEC) == set(prims.PRIMITIVES), "add the new primitive's SPEC line to SPEC"


@pytest.mark.parametrize("name", sorted(prims.PRIMITIVES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_primitive_through_every_pass(name, data):
    n, text, vals, w = data.draw(_case(name))
    _check_all_passes(WRAPS[w].format(text), n, _oracle(name, n, vals, w), triton=False)


@pytest.mark.parametrize("name", sorted(prims.PRIMITIVES))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_primitive_triton_predicate(name, data):
    """The generated Triton predicate, run by the Triton interpreter (slow: fewer cases)."""
    pytest.importorskip("triton")
    n, text, vals, w = data.draw(_case(name))
    p = spattn.compile(WRAPS[w].format(text))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        got = _triton_mask(p.node, n)
    assert np.array_equal(got, _oracle(name, n, vals, w)), (text, n)


@pytest.mark.parametrize("text", ["local(1000000000000000000000)",
                                  "window(10**21 // 1, 3)".replace("10**21 // 1", str(10**21)),
                                  f"dilated({10**20}, {10**20})", f"stride({10**30})",
                                  f"sink({10**25}) & causal", f"fixed({10**22}, {10**21})"])
def test_huge_arguments_agree_everywhere(text):
    """Regression: ``local(10**21).mask_mod(16)`` raised a bare OverflowError while to_dense
    worked (two evaluators clamped differently; now arguments are clamped once, at binding)."""
    n = 16
    want = spattn.compile(text).to_dense(n)
    i = torch.arange(n)
    assert np.array_equal(spattn.compile(text).mask_mod(n)(0, 0, i[:, None], i[None, :]).numpy(),
                          want)
    assert np.array_equal(spattn.compile(text).to_blocks(n, 4).to_mask(), want)


def test_parameters_are_emitted_with_the_code():
    """PRM entries are appended exactly when the generated code first loads them."""
    from spattn.backends.triton_codegen import generate

    node = spattn.compile("(local(3) | stride(5) | global([1, 4])) & ~sink(2)").node
    src, prm, tab = generate(bind(node, 50), 50)
    loads = [ln for ln in src.splitlines() if "tl.load(PRM + " in ln]
    assert [int(ln.split("PRM + ")[1].rstrip(")")) for ln in loads] == list(range(len(prm) - 1))
    assert sorted(int(v) for v in prm[:-1]) == sorted([3, 5, 0, 2])  # w, s, table offset, k
