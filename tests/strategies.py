"""Hypothesis strategies for pattern text and sequence lengths, shared by the test files."""

from __future__ import annotations

from hypothesis import strategies as st

# n = 1, primes, and sizes that are not multiples of any parameter or block size
SIZES = [1, 2, 3, 5, 7, 11, 13, 17, 31, 37, 61, 64, 97, 100, 127, 128, 129, 131, 200]


def _small_int(lo=0, hi=12):
    return st.integers(lo, hi).map(str)


def _arg(lo=0, hi=12):
    # constants, plus a few expressions in n
    return st.one_of(
        _small_int(lo, hi),
        st.sampled_from([f"max({lo}, n // 3)", f"max({lo}, sqrt(n))", f"min({hi}, n)",
                         f"max({lo}, log2(n))", f"max({lo}, n % 7)"]),
    )


def _index_set(n: int):
    pos = st.integers(-n, n - 1).map(str)
    lst = st.lists(pos, min_size=0, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
    bound = st.one_of(st.just(""), st.integers(-n - 3, n + 3).map(str), st.just("n // 2"))
    step = st.one_of(st.just(""), st.sampled_from(["1", "2", "3", "-1", "-2", "5"]))
    slc = st.tuples(bound, bound, step).map(
        lambda t: f"[{t[0]}:{t[1]}" + (f":{t[2]}" if t[2] else "") + "]")
    return st.one_of(lst, slc, st.just("[0, -1]"), st.just("[0:n:4]"))


def leaves(n: int):
    return st.one_of(
        _arg().map(lambda w: f"local({w})"),
        st.tuples(_arg(), _arg()).map(lambda t: f"window({t[0]}, {t[1]})"),
        st.just("causal"),
        _arg(1, 9).map(lambda s: f"stride({s})"),
        st.tuples(_small_int(0, 5), _small_int(1, 5)).map(lambda t: f"dilated({t[0]}, {t[1]})"),
        _arg(1, 9).map(lambda b: f"block({b})"),
        st.tuples(st.integers(1, 9), st.integers(1, 9)).map(
            lambda t: f"fixed({max(t)}, {min(t)})"),
        _index_set(n).map(lambda s: f"rows({s})"),
        _index_set(n).map(lambda s: f"cols({s})"),
        _index_set(n).map(lambda s: f"global({s})"),
        _arg(0, 9).map(lambda k: f"sink({k})"),
        st.tuples(_small_int(0, 6), st.integers(0, 3)).map(
            lambda t: f"random({t[0]}, seed={t[1]})"),
        st.sampled_from(["full", "none"]),
    )


def patterns(n: int, max_leaves: int = 8):
    return st.recursive(
        leaves(n),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) | ({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) & ({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) - ({t[1]})"),
            inner.map(lambda a: f"~({a})"),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def sized_patterns(draw, sizes=SIZES, max_leaves: int = 8):
    n = draw(st.sampled_from(sizes))
    return n, draw(patterns(n, max_leaves))
