"""``random(r, seed=0)``: min(r, n) distinct keys per row, a documented function of
(seed, n, row) (:mod:`spattn.random_keys`).

In / Out: an entry of the primitive table (see :mod:`spattn.prims.base` for the hooks). Its
element predicate is ``ops.random``: the array module looks a row's keys up (drawn for the
rows at hand on numpy, a per-row key table on torch and in Triton kernels).
"""

from __future__ import annotations

import numpy as np

from .. import guard, ir, tiles
from .. import intervals as iv
from ..errors import ResourceError
from ..random_keys import MAX_PASSES, draw_passes, row_keys
from .base import Param, Primitive, const_values


class Random(Primitive):
    name = "random"
    params = (Param("r", minimum=0), Param("seed", default=0))
    doc = "j in R_i: min(r, n) distinct keys drawn for row i"
    n_dependent = True

    def clamp(self, vals, n):
        r, seed = vals
        return min(r, n), seed  # k keys per row; the draw depends on (seed, n, row) only

    def simplify(self, args):
        v = const_values(args)
        return ir.NONE if v is not None and v[0] == 0 else None

    def mask(self, ops, i, j, d, a):
        return ops.random(a, i, j)

    def key_table(self, a, n):
        k, seed = a
        return row_keys(n, k, seed, np.arange(n)) if 0 < k < n else None

    def passes(self, a, n, rows):
        return float(draw_passes(n, a[0], rows))

    def est(self, a, n):
        return a[0]

    def rows(self, a, n, i, clo, chi):
        k, seed = a
        keys = row_keys(n, k, seed, i)
        if keys.shape[1] == 0:
            return iv.empty()
        lo = keys.ravel()
        row = np.repeat(i, k)
        ok = (lo >= np.repeat(clo, k)) & (lo < np.repeat(chi, k))
        if not ok.all():
            row, lo = row[ok], lo[ok]
        return iv.merge_sorted(row, lo, lo + 1)

    def later(self, a, j):
        return None  # the keys depend on n: no closed form

    def tiles(self, a, g):
        k, seed = a
        n = g.n
        if k == 0:
            return tiles.empty_runs()
        if k == n:
            return tiles.grid_runs(g)
        guard.check(float(g.m) * k * 24, f"the keys of random({k}) at n = {n:,}")
        W = g.nkb
        keys_of = []
        step = max(1, (1 << 22) // k)
        passes = -(-g.m // step) * draw_passes(n, k, step)
        if passes > MAX_PASSES:
            raise ResourceError(f"the block layout of random({k}) at n = {n:,} would take "
                                f"about {passes:,} sequential numpy passes to draw its keys "
                                f"(limit {MAX_PASSES:,}); use fewer random keys or a smaller n")
        for r0 in range(g.off, n, step):
            r1 = min(n, r0 + step)
            keys = row_keys(n, k, seed, np.arange(r0, r1, dtype=np.int64))
            qb = (np.arange(r0, r1, dtype=np.int64) - g.off) // g.bq
            keys_of.append((qb[:, None] * W + keys // g.bk).ravel())
        t, cnt = np.unique(np.concatenate(keys_of), return_counts=True)
        qa, c = np.divmod(t, W)
        lab = np.where(cnt == g.rows[qa] * g.span[c], tiles.F, tiles.P)
        return tiles.merge_equal(tiles.make_runs(qa, c, c + 1, lab))


ENTRIES = (Random(),)
