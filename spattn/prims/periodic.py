"""Primitives with a period: ``stride``, ``dilated`` and Sparse Transformer's ``fixed``.

In / Out: entries of the primitive table (see :mod:`spattn.prims.base` for the hooks).
``stride`` and ``dilated`` rows are single keys in arithmetic progression (step > 1), which
lowering builds directly; their block classification comes from the differences a tile spans.
"""

from __future__ import annotations

import math

import numpy as np

from .. import intervals as iv
from .. import ir, tiles
from .base import INF, Param, Primitive, capped_add, const_values, progressions
from .windows import Block, Local, window_node

_LOCAL = Local()
_BLOCK = Block()


class Stride(Primitive):
    name = "stride"
    params = (Param("s", minimum=1),)
    doc = "(i - j) mod s == 0"
    symmetric = True
    residue_class = True

    def simplify(self, args):
        v = const_values(args)
        return ir.FULL if v is not None and v[0] == 1 else None

    def merge(self, op, vals):
        if len(vals) < 2:
            return None
        s = sorted({v[0] for v in vals})
        if op == "inter":
            return [(math.lcm(*s),)]
        # stride(a) ⊆ stride(b) when b divides a: keep the strides no other one divides
        return [(x,) for x in s if not any(t != x and x % t == 0 for t in s)]

    def mask(self, ops, i, j, d, a):
        (s,) = a
        return d % s == 0

    def est(self, a, n):
        return n / a[0] + 1

    def progression(self, a, n, i, clo, chi):
        (s,) = a
        if s == 1:
            return None
        first = clo + (i - clo) % s
        return first, np.maximum((chi - first + s - 1) // s, 0), s

    def progression_step(self, a):
        return a[0]

    def rows(self, a, n, i, clo, chi):
        prog = self.progression(a, n, i, clo, chi)
        if prog is None:  # step 1: every key
            return iv.per_row(i, clo, chi)
        return iv.progression_points(i, *prog)

    def later(self, a, j):
        return progressions(j, np.full_like(j, INF), a[0])  # j, j + s, ...

    def tiles(self, a, g):
        return tiles.stride_runs(a[0], g)

    def period(self, a):
        return a[0]


class Dilated(Primitive):
    name = "dilated"
    params = (Param("w", minimum=0), Param("d", minimum=1))
    doc = "|i - j| <= w*d and (i - j) mod d == 0"
    symmetric = True

    def clamp(self, vals, n):
        w, d = vals
        return min(w, n), min(d, n), min(w * d, n)  # w, d, reach

    def simplify(self, args):
        v = const_values(args)
        if v is None:
            return None
        w, d = v
        if d == 1 or w == 0:
            return window_node(w if d == 1 else 0, w if d == 1 else 0)
        return None

    def mask(self, ops, i, j, d, a):
        _, dil, reach = a
        return (d <= reach) & (d >= -reach) & (d % dil == 0)

    def est(self, a, n):
        w, d, _ = a
        return min(2 * w + 1, n / d + 1)

    def progression(self, a, n, i, clo, chi):
        w, d, _ = a
        if d == 1 or w == 0:
            return None
        kmin = np.maximum(-w, -((i - clo) // d))
        kmax = np.minimum(w, (chi - 1 - i) // d)
        return i + d * kmin, np.maximum(kmax - kmin + 1, 0), d

    def progression_step(self, a):
        return a[1]

    def _as_local(self, a) -> tuple[int]:
        w, d, _ = a
        return (w if d == 1 else 0,)

    def rows(self, a, n, i, clo, chi):
        prog = self.progression(a, n, i, clo, chi)
        if prog is None:  # a window: local(w) when d == 1, the diagonal when w == 0
            return _LOCAL.rows(self._as_local(a), n, i, clo, chi)
        return iv.progression_points(i, *prog)

    def later(self, a, j):
        w, d = a[:2]
        return progressions(j, capped_add(j, min(w, INF) * min(d, INF)), d)

    def tiles(self, a, g):
        w, d, reach = a
        if d == 1 or w == 0:
            return _LOCAL.tiles(self._as_local(a), g)
        return tiles.combine([tiles.window_runs(reach, reach, g), tiles.stride_runs(d, g)],
                             "inter", g)

    def period(self, a):
        return a[1]

    def structure(self, a, n, st):
        w, d, _ = a
        if 2 * w + 1 > 4096:
            return False
        for k in range(-w, w + 1):
            st.D |= {k * d, k * d + 1}
        return True


class Fixed(Primitive):
    name = "fixed"
    params = (Param("l", minimum=1), Param("c", minimum=1))
    doc = "i // l == j // l, or j mod l >= l - c  (1 <= c <= l)"

    def check(self, vals, where=""):
        l, c = vals
        if c > l:
            return (f"fixed: argument c = {c} exceeds l = {l}{where}; "
                    "fixed(l, c) needs 1 <= c <= l")
        return None

    def simplify(self, args):
        v = const_values(args)
        return ir.FULL if v is not None and v[0] == v[1] else None

    def mask(self, ops, i, j, d, a):
        l, c = a
        return (i // l == j // l) | (j % l >= l - c)

    def est(self, a, n):
        return n / a[0] + 2

    def rows(self, a, n, i, clo, chi):
        l, c = a
        if l >= n or c == l:
            return iv.per_row(i, clo, chi)
        q = np.arange((n + l - 1) // l, dtype=np.int64)
        s_lo, s_hi = q * l + (l - c), np.minimum(q * l + l, n)
        ok = s_lo < s_hi
        row, lo, hi = iv.runs_in_window(i, s_lo[ok], s_hi[ok], clo, chi)
        blo = (i // l) * l
        row = np.concatenate([row, i])
        lo = np.concatenate([lo, np.maximum(blo, clo)])
        hi = np.concatenate([hi, np.minimum(np.minimum(blo + l, n), chi)])
        return iv.normalize(row, lo, hi, n)

    def later(self, a, j):
        l = min(a[0], INF + 1)
        summary = j % l >= l - min(a[1], l)  # a summary column: every later query
        return [(j, np.where(summary, INF, capped_add(j - j % l, l - 1)), 1)]

    def tiles(self, a, g):
        l, c = a
        if l >= g.n or c == l:
            return tiles.grid_runs(g)

        def upto(x):  # summary columns below x
            return (x // l) * c + np.maximum(x % l - (l - c), 0)

        cols = tiles.col_runs(tiles.count_label(upto(g.ce) - upto(g.cs), g.span), g)
        return tiles.combine([_BLOCK.tiles((l,), g), cols], "union", g)

    def period(self, a):
        return a[0]


ENTRIES = (Stride(), Dilated(), Fixed())
