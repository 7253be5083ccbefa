"""Primitives whose rows are one interval: windows around the diagonal, causal, sinks, blocks,
and the trivial ``full`` and ``none``.

In / Out: entries of the primitive table (see :mod:`spattn.prims.base` for the hooks).
"""

from __future__ import annotations

import numpy as np

from .. import ir, tiles
from .base import INF, Param, Primitive, capped_add, const_values


def window_node(l: int, r: int) -> ir.Prim:
    """``window(l, r)`` in canonical spelling (``local(l)`` when l == r)."""
    if l == r:
        return ir.Prim("local", (ir.Const(l),))
    return ir.Prim("window", (ir.Const(l), ir.Const(r)))


class Local(Primitive):
    name = "local"
    params = (Param("w", minimum=0),)
    doc = "|i - j| <= w"
    symmetric = True
    single_interval = True

    def window(self, args):
        v = const_values(args)
        return None if v is None else (v[0], v[0])

    def mask(self, ops, i, j, d, a):
        (w,) = a
        return (d <= w) & (d >= -w)

    def interval(self, a, n, i):
        (w,) = a
        return np.maximum(i - w, 0), np.minimum(i + w + 1, n)

    def later(self, a, j):
        return [(j, capped_add(j, a[0]), 1)]  # i - j <= w

    def tiles(self, a, g):
        return tiles.window_runs(a[0], a[0], g)

    def period(self, a):
        return 1

    def structure(self, a, n, st):
        st.D |= {-a[0], a[0] + 1}
        return True


class Window(Primitive):
    name = "window"
    params = (Param("l", minimum=0), Param("r", minimum=0))
    doc = "-l <= j - i <= r"
    single_interval = True

    def simplify(self, args):
        v = const_values(args)
        return window_node(*v) if v is not None and v[0] == v[1] else None

    def window(self, args):
        return const_values(args)

    def causal_form(self, args):
        return isinstance(args[1], ir.Const) and args[1].value == 0

    def mask(self, ops, i, j, d, a):
        l, r = a
        return (d <= l) & (d >= -r)

    def interval(self, a, n, i):
        l, r = a
        return np.maximum(i - l, 0), np.minimum(i + r + 1, n)

    def later(self, a, j):
        return [(j, capped_add(j, a[0]), 1)]  # i - j <= l

    def tiles(self, a, g):
        return tiles.window_runs(a[0], a[1], g)

    def period(self, a):
        return 1

    def structure(self, a, n, st):
        st.D |= {-a[0], a[1] + 1}
        return True


class Causal(Primitive):
    name = "causal"
    doc = "j <= i"
    single_interval = True

    def causal_form(self, args):
        return True

    def mask(self, ops, i, j, d, a):
        return d >= 0

    def interval(self, a, n, i):
        return np.zeros(len(i), np.int64), i + 1

    def later(self, a, j):
        return [(j, np.full_like(j, INF), 1)]

    def tiles(self, a, g):
        return tiles.window_runs(g.n, 0, g)

    def period(self, a):
        return 1

    def structure(self, a, n, st):
        st.D.add(1)
        return True


class Sink(Primitive):
    name = "sink"
    params = (Param("k", minimum=0),)
    doc = "j < k"
    single_interval = True

    def simplify(self, args):
        v = const_values(args)
        return ir.NONE if v is not None and v[0] == 0 else None

    def merge(self, op, vals):
        if len(vals) < 2:
            return None
        return [((max if op == "union" else min)(v[0] for v in vals),)]

    def mask(self, ops, i, j, d, a):
        (k,) = a
        return (j < k) & (i >= 0)

    def interval(self, a, n, i):
        return np.zeros(len(i), np.int64), np.full(len(i), a[0], np.int64)

    def later(self, a, j):
        return [(j, np.where(j < min(a[0], INF), INF, -1).astype(np.int64), 1)]

    def tiles(self, a, g):
        (k,) = a
        if k == 0:
            return tiles.empty_runs()
        return tiles.interval_runs(lambda i: np.zeros_like(i), lambda i: np.full_like(i, k), g)

    def structure(self, a, n, st):
        st.C.add(a[0])
        return True


class Block(Primitive):
    name = "block"
    params = (Param("b", minimum=1),)
    doc = "i // b == j // b"
    symmetric = True
    single_interval = True

    def simplify(self, args):
        v = const_values(args)
        return window_node(0, 0) if v is not None and v[0] == 1 else None

    def mask(self, ops, i, j, d, a):
        (b,) = a
        return i // b == j // b

    def interval(self, a, n, i):
        (b,) = a
        lo = (i // b) * b
        return lo, np.minimum(lo + b, n)

    def later(self, a, j):
        b = min(a[0], INF + 1)
        return [(j, capped_add(j - j % b, b - 1), 1)]  # to the end of j's block

    def tiles(self, a, g):
        (b,) = a
        n = g.n
        return tiles.interval_runs(lambda i: (i // b) * b,
                                lambda i: np.minimum((i // b) * b + b, n), g)

    def period(self, a):
        return a[0]

    def structure(self, a, n, st):
        st.blocks.add(a[0])
        return True


class Full(Primitive):
    name = "full"
    doc = "always"
    symmetric = True
    single_interval = True

    def mask(self, ops, i, j, d, a):
        return d == d

    def interval(self, a, n, i):
        return np.zeros(len(i), np.int64), np.full(len(i), n, np.int64)

    def later(self, a, j):
        return [(j, np.full_like(j, INF), 1)]

    def tiles(self, a, g):
        return tiles.grid_runs(g)

    def period(self, a):
        return 1

    def structure(self, a, n, st):
        return True


class NoPairs(Primitive):
    name = "none"
    doc = "never"
    symmetric = True
    single_interval = True

    def causal_form(self, args):
        return True

    def mask(self, ops, i, j, d, a):
        return d != d

    def interval(self, a, n, i):
        z = np.zeros(len(i), np.int64)
        return z, z

    def later(self, a, j):
        return []

    def tiles(self, a, g):
        return tiles.empty_runs()

    def period(self, a):
        return 1

    def structure(self, a, n, st):
        return True


ENTRIES = (Local(), Window(), Causal(), Sink(), Block(), Full(), NoPairs())
