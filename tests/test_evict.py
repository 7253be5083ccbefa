"""Closed-form eviction (spattn.evict) against a brute-force oracle.

The oracle shares no code with the implementation: a per-pair predicate written from SPEC's
table, evaluated on numpy grids, and brute_last(j) = max{i in [j, N) : M[i, j]} (-1 if none).
For a length-independent pattern the column of key j is, past j + H (H: the largest argument,
position or slice bound), periodic in i with period P (the lcm of strides and slice steps), so
with N > J + H + 2P "unbounded" is "some attending query in the last P rows".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spattn
from spattn import prims
from spattn.evict import INF, MAX_PROGRESSIONS, Eviction, eviction, length_independent

J = 40  # keys checked: j = 0 .. J - 1

# --------------------------------------------------------------------------------------------
# trees: ("p", name, args) | ("|", a, b) | ("&", a, b) | ("-", a, b) | ("~", a)
# index sets: ("list", positions) | ("slice", start, stop, step) (None: omitted)


def P(name, *args):
    return ("p", name, args)


def U(a, b):
    return ("|", a, b)


def X(a, b):
    return ("&", a, b)


def iset_text(s):
    if s[0] == "list":
        return "[" + ", ".join(map(str, s[1])) + "]"
    a, b, c = ("" if v is None else str(v) for v in s[1:])
    return f"[{a}:{b}" + (f":{c}]" if c else "]")


def text(t):
    if t[0] == "p":
        _, name, args = t
        if not args:
            return name
        args = (iset_text(a) if isinstance(a, tuple) else str(a) for a in args)
        return f"{name}({', '.join(args)})"
    if t[0] == "~":
        return f"~({text(t[1])})"
    return f"({text(t[1])}) {t[0]} ({text(t[2])})"


def member(s, x):
    if s[0] == "list":
        return np.isin(x, np.array(s[1], dtype=np.int64))
    a, b, c = s[1], s[2], s[3]
    a, c = a or 0, c or 1
    inside = (x >= a) & ((x - a) % c == 0)
    return inside if b is None else inside & (x < b)


def M(t, i, j):
    """SPEC's table, pair by pair (i: column of queries, j: row of keys)."""
    zero = (i < 0) | (j < 0)  # all False, broadcast to the grid
    if t[0] == "|":
        return M(t[1], i, j) | M(t[2], i, j)
    if t[0] == "&":
        return M(t[1], i, j) & M(t[2], i, j)
    if t[0] == "-":
        return M(t[1], i, j) & ~M(t[2], i, j)
    if t[0] == "~":
        return ~M(t[1], i, j)
    _, name, a = t
    d = i - j
    table = {
        "local": lambda: np.abs(d) <= a[0],
        "window": lambda: (-a[0] <= j - i) & (j - i <= a[1]),
        "causal": lambda: j <= i,
        "stride": lambda: d % a[0] == 0,
        "dilated": lambda: (np.abs(d) <= a[0] * a[1]) & (d % a[1] == 0),
        "block": lambda: i // a[0] == j // a[0],
        "fixed": lambda: (i // a[0] == j // a[0]) | (j % a[0] >= a[0] - a[1]),
        "rows": lambda: member(a[0], i) | zero,
        "cols": lambda: member(a[0], j) | zero,
        "global": lambda: member(a[0], i) | member(a[0], j),
        "sink": lambda: (j < a[0]) | zero,
        "full": lambda: ~zero,
        "none": lambda: zero,
    }
    return table[name]()


def sizes(t):
    """(H, P): the largest argument / position, and the lcm of the periods in i."""
    if t[0] != "p":
        hs = [sizes(x) for x in t[1:]]
        return max(h for h, _ in hs), math.lcm(*(p for _, p in hs))
    _, name, a = t
    h, p = 0, 1
    for v in a:
        if isinstance(v, tuple):
            vals = v[1] if v[0] == "list" else [x for x in v[1:3] if x is not None]
            h = max([h, *vals])
            if v[0] == "slice" and (v[3] or 1) > 1:
                p = math.lcm(p, v[3])
        else:
            h = max(h, v)
    if name == "dilated":
        h = max(h, a[0] * a[1])
    if name == "stride":
        p = a[0]
    return h, p


def brute(t):
    """(brute_last over j < J, whether key j is attended in the last P rows, exactness)."""
    h, p = sizes(t)
    n = J + h + 2 * p + 8
    i, j = np.arange(n)[:, None], np.arange(J)[None, :]
    m = np.broadcast_to(M(t, i, j), (n, J)) & (i >= j)
    has = m.any(axis=0)
    last = np.where(has, n - 1 - np.argmax(m[::-1], axis=0), -1)
    return last, m[n - p:].any(axis=0)


def has_bound(t):
    return t[0] in "-~" or (t[0] != "p" and any(has_bound(x) for x in t[1:]))


def check(t, bounded=None):
    """The eviction of tree ``t`` against the oracle (``bounded``: whether it is expected to be
    an upper bound; by default when the tree has a difference or complement)."""
    ev = eviction(spattn.compile(text(t)).node)
    assert isinstance(ev, Eviction), text(t)
    got = ev.last(np.arange(J))
    assert got.dtype == np.int64 and got.shape == (J,)
    want, tail = brute(t)
    bounded = has_bound(t) if bounded is None else bounded
    if not bounded:
        assert ev.exact, text(t)
    if ev.exact:
        fin = got < INF
        assert np.array_equal(got[fin], want[fin]), (text(t), got, want)
        assert np.array_equal(~fin, tail), (text(t), got, tail)
        assert (got[fin] >= -1).all()
    else:
        assert (got >= want).all(), (text(t), got, want)
    return ev, got


# --------------------------------------------------------------------------------------------
# random trees

small = st.sampled_from([0, 1, 2, 3, 5, 7, 8, 12])
positive = st.sampled_from([1, 2, 3, 4, 5, 7])
position = st.integers(0, 30)
index_set = st.one_of(
    st.lists(position, max_size=4).map(lambda xs: ("list", tuple(xs))),
    st.tuples(st.none() | position, st.none() | st.integers(0, 40),
              st.none() | st.sampled_from([1, 2, 3, 5])).map(lambda t: ("slice", *t)),
)
leaves = st.one_of(
    small.map(lambda w: P("local", w)),
    st.tuples(small, small).map(lambda t: P("window", *t)),
    st.just(P("causal")),
    small.map(lambda k: P("sink", k)),
    positive.map(lambda b: P("block", b)),
    st.sampled_from([P("full"), P("none")]),
    positive.map(lambda s: P("stride", s)),
    st.tuples(st.integers(0, 4), positive).map(lambda t: P("dilated", *t)),
    st.tuples(positive, positive).map(lambda t: P("fixed", max(t), min(t))),
    index_set.map(lambda s: P("rows", s)),
    index_set.map(lambda s: P("cols", s)),
    index_set.map(lambda s: P("global", s)),
)
exact_trees = st.recursive(
    leaves, lambda inner: st.tuples(st.sampled_from("|&"), inner, inner), max_leaves=6)
any_trees = st.recursive(
    leaves, lambda inner: st.one_of(st.tuples(st.sampled_from("|&-"), inner, inner),
                                    inner.map(lambda a: ("~", a))), max_leaves=6)


@settings(max_examples=250)
@given(exact_trees)
def test_unions_and_intersections_are_exact(t):
    ev, _ = check(t)
    assert ev.exact


@settings(max_examples=150)
@given(any_trees)
def test_differences_and_complements_are_upper_bounds(t):
    check(t)


@settings(max_examples=100)
@given(exact_trees)
def test_causal_forms_are_exact(t):
    check(X(t, P("causal")))


# --------------------------------------------------------------------------------------------
# named cases

C = P("causal")
CASES = [
    (X(U(P("sink", 4), P("window", 256, 0)), C), lambda j: np.where(j < 4, INF, j + 256)),
    (X(U(P("window", 127, 0), P("stride", 128)), C), lambda j: np.full_like(j, INF)),
    (X(P("block", 64), C), lambda j: j // 64 * 64 + 63),
    (X(P("fixed", 16, 4), C), lambda j: np.where(j % 16 >= 12, INF, j // 16 * 16 + 15)),
    (X(P("dilated", 8, 3), C), lambda j: j + 24),
    (X(P("window", 10, 0), P("stride", 3)), lambda j: j + 9),
    (X(P("dilated", 3, 3), P("stride", 2)), lambda j: j + 6),
    (X(X(P("rows", ("slice", 1, None, 3)), P("stride", 2)), P("window", 12, 0)),
     lambda j: j + 12 - (j + 12 - np.where(j % 2 == 0, 4, 1)) % 6),  # i ≡ 1 (3), ≡ j (2)
    (P("sink", 0), lambda j: np.full_like(j, -1)),
    (P("none"), lambda j: np.full_like(j, -1)),
    (P("full"), lambda j: np.full_like(j, INF)),
    (P("stride", 1), lambda j: np.full_like(j, INF)),
    (X(P("dilated", 0, 5), C), lambda j: j),
    (P("fixed", 6, 6), lambda j: np.full_like(j, INF)),
    (P("window", 0, 0), lambda j: j),
    (P("rows", ("slice", 5, None, None)), lambda j: np.full_like(j, INF)),
    (X(P("rows", ("slice", 3, None, 4)), P("stride", 3)), lambda j: np.full_like(j, INF)),
    (X(P("rows", ("slice", 3, 50, 4)), C), lambda j: np.where(j <= 47, 47, -1)),
    (X(P("global", ("list", (3,))), C), lambda j: np.where(j < 3, 3, np.where(j == 3, INF, -1))),
    (P("cols", ("list", (2, 7))), lambda j: np.where((j == 2) | (j == 7), INF, -1)),
]


@pytest.mark.parametrize("t, want", CASES, ids=[text(t) for t, _ in CASES])
def test_named_cases(t, want):
    ev, got = check(t)
    assert ev.exact
    assert np.array_equal(got, want(np.arange(J))), (got, want(np.arange(J)))
    j = np.arange(J, 300)  # further keys: the closed form, not the oracle's horizon
    assert np.array_equal(ev.last(j), want(j))
    assert ev.last(np.array([0]))[0] == want(np.array([0]))[0]  # one key, n = 1


def test_shapes_and_bad_positions():
    ev = eviction(spattn.compile("window(3, 0) & causal").node)
    assert ev.last(np.zeros(0, np.int64)).shape == (0,)
    assert np.array_equal(ev.last(np.arange(6).reshape(2, 3)), np.arange(6).reshape(2, 3) + 3)
    assert ev.last(np.int64(5)).item() == 8
    with pytest.raises(spattn.SpattnError):
        ev.last(np.array([-1]))
    with pytest.raises(spattn.SpattnError):
        ev.last(np.array([INF]))


# --------------------------------------------------------------------------------------------
# large arguments: no int64 overflow, capped at INF

E18, E30 = 10**18, 10**30


@pytest.mark.parametrize("src, want", [
    (f"window({E18}, 0) & causal", lambda j: j + E18),
    (f"window({E30}, 0) & causal", lambda j: np.full_like(j, INF)),
    (f"local({E30})", lambda j: np.full_like(j, INF)),
    (f"stride({E18}) & window(5, 0)", lambda j: j),
    (f"stride({E30}) & window(5, 0)", lambda j: j),
    (f"stride({E30}) & causal", lambda j: np.full_like(j, INF)),
    (f"block({E30}) & causal", lambda j: np.full_like(j, INF)),
    (f"block({E18}) & causal", lambda j: np.full_like(j, E18 - 1)),
    (f"dilated(3, {E18}) & causal", lambda j: j + 3 * E18),
    (f"dilated({E30}, 2) & causal", lambda j: np.full_like(j, INF)),
    (f"dilated(2, {E30}) & window(5, 0)", lambda j: j),
    (f"fixed({E30}, 1) & causal", lambda j: np.full_like(j, INF)),
    (f"fixed({E18}, 1) & causal", lambda j: np.full_like(j, E18 - 1)),
    (f"sink({E30}) & causal", lambda j: np.full_like(j, INF)),
    (f"rows([{E18}:]) & causal", lambda j: np.full_like(j, INF)),
    (f"rows([{E18}]) & causal", lambda j: np.full_like(j, E18)),
    (f"rows([0:{E18}:{E18}]) & causal", lambda j: np.where(j == 0, 0, -1)),
    (f"rows([0::{E30}]) & causal", lambda j: np.full_like(j, INF)),
    (f"cols([0:{E30}:7]) & causal", lambda j: np.where(j % 7 == 0, INF, -1)),
])
def test_large_arguments(src, want):
    ev = eviction(spattn.compile(src).node)
    j = np.array([0, 1, 2, 7, 1000, 10**12], np.int64)
    assert ev.exact
    assert np.array_equal(ev.last(j), want(j)), (ev.last(j), want(j))


def test_wide_steps_intersect_exactly():
    """lcm of the steps over 2**31: the Chinese remainder theorem in Python integers."""
    p, q, k = 3000000019, 1000000007, 3000
    keys = 5 + q * np.arange(k, dtype=object)  # rows([5:5 + k*q:q])
    js = [int(keys[m] % p) for m in (10, 1234, 2999)] + [0, 1, 5]
    ev = eviction(spattn.compile(f"stride({p}) & rows([5:{5 + k * q}:{q}]) & causal").node)
    for j in js:
        hits = [int(i) for i in keys if i >= j and (i - j) % p == 0]
        assert ev.last(np.array([j]))[0] == (max(hits) if hits else -1)
    unbounded = eviction(spattn.compile(f"stride({p}) & rows([5::{q}])").node)
    assert (unbounded.last(np.array(js)) == INF).all()


def test_many_progressions_fall_back_to_a_bound():
    evens = ("list", tuple(range(0, 300, 2)))
    threes = ("list", tuple(range(0, 300, 3)))
    t = X(U(P("rows", evens), P("sink", 1)), U(P("rows", threes), P("sink", 1)))
    assert (len(evens[1]) + 1) * (len(threes[1]) + 1) > MAX_PROGRESSIONS
    ev, _ = check(t, bounded=True)
    assert not ev.exact
    small_t = X(U(P("rows", ("list", (4, 9, 20))), P("sink", 1)), P("rows", threes))
    ev, got = check(small_t)
    assert ev.exact and got[0] == 297 and got[1] == 9 and got[9] == 9 and got[10] == -1


# --------------------------------------------------------------------------------------------
# length independence


@pytest.mark.parametrize("src, ok", [
    ("(sink(4) | window(8, 0)) & causal", True),
    ("rows([5:]) | cols([0, 3]) | global([2:9:3])", True),
    ("local(sqrt(16)) | stride(2 + 3)", True),
    ("window(n // 2, 0) & causal", False),
    ("stride(max(1, n % 7))", False),
    ("cols([0, n // 2])", False),
    ("cols([-1])", False),
    ("global([0, -1])", False),
    ("rows([0:-1])", False),
    ("rows([-3:])", False),
    ("cols([0:n:4])", False),
    ("cols([::-1])", False),
    ("random(2)", False),
    ("(random(2, seed=1) | sink(2)) & causal", False),
    ("causal - random(1)", False),
    ("~cols([-2])", False),
])
def test_length_independent(src, ok):
    node = spattn.compile(src).node
    assert length_independent(node) is ok
    assert (eviction(node) is not None) is ok


def test_random_has_no_closed_form():
    assert prims.PRIMITIVES["random"].later((2, 0), np.arange(3)) is None
