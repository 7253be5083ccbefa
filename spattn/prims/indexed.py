"""Primitives over an index set: ``rows(I)``, ``cols(I)`` and the symmetric ``global(I)``.

In / Out: entries of the primitive table (see :mod:`spattn.prims.base` for the hooks). Their
argument is resolved at n to sorted runs of positions (:class:`spattn.ir.IndexRuns`); element
predicates look positions up through ``ops.member`` (a search in the runs on numpy, a
membership table on torch and in Triton kernels).
"""

from __future__ import annotations

import numpy as np

from .. import intervals as iv
from .. import ir, tiles
from .base import Param, Primitive

_MAX_RUNS_AFFINE = 4096  #: index sets with more runs are not used as family breakpoints


class _IndexSet(Primitive):
    params = (Param("I", "index"),)

    def simplify(self, args):
        a = args[0]
        return ir.NONE if isinstance(a, ir.IndexList) and not a.items else None

    #: which end points the index set adds to the analysis structure: constants (columns
    #: ``C``) and/or row breakpoints (``R``)
    _points_to: tuple[str, ...] = ()

    def structure(self, a, n, st):
        runs = a[0]
        if len(runs.starts) > _MAX_RUNS_AFFINE:
            return False
        pts = set(runs.starts.tolist()) | set(runs.ends.tolist())
        for name in self._points_to:
            getattr(st, name).update(pts)
        return True


def _row_interval(runs: ir.IndexRuns, n: int, i: np.ndarray):
    """Rows of ``rows(I)``: the whole row [0, n) when i is in I, else empty."""
    k = np.searchsorted(runs.ends, i, side="right")
    inside = np.zeros(len(i), bool)
    ok = k < len(runs.starts)
    inside[ok] = runs.starts[k[ok]] <= i[ok]
    return np.zeros(len(i), np.int64), np.where(inside, n, 0).astype(np.int64)


class Rows(_IndexSet):
    name = "rows"
    doc = "i in I"
    single_interval = True
    _points_to = ("R",)

    def mask(self, ops, i, j, d, a):
        return ops.member(a[0], i) & (j >= 0)

    def interval(self, a, n, i):
        return _row_interval(a[0], n, i)

    def tiles(self, a, g):
        return tiles.row_runs(tiles.count_label(tiles.index_counts(a[0], g.qs, g.qe), g.rows),
                              g)



class Cols(_IndexSet):
    name = "cols"
    doc = "j in I"
    _points_to = ("C",)

    def mask(self, ops, i, j, d, a):
        return ops.member(a[0], j) & (i >= 0)

    def est(self, a, n):
        return len(a[0].starts) + 1

    def rows(self, a, n, i, clo, chi):
        return iv.runs_in_window(i, a[0].starts, a[0].ends, clo, chi)

    def tiles(self, a, g):
        return tiles.col_runs(tiles.count_label(tiles.index_counts(a[0], g.cs, g.ce), g.span),
                              g)



class Global(_IndexSet):
    name = "global"
    doc = "i in I or j in I"
    symmetric = True
    _points_to = ("C", "R")

    def mask(self, ops, i, j, d, a):
        return ops.member(a[0], i) | ops.member(a[0], j)

    def est(self, a, n):
        return len(a[0].starts) + 2

    def saturates(self, a):
        return a[0].count > 0

    def rows(self, a, n, i, clo, chi):
        lo, hi = _row_interval(a[0], n, i)
        whole = iv.per_row(i, np.maximum(lo, clo), np.minimum(hi, chi))
        return iv.union([whole, iv.runs_in_window(i, a[0].starts, a[0].ends, clo, chi)], n)

    def tiles(self, a, g):
        return tiles.combine([_ROWS.tiles(a, g), _COLS.tiles(a, g)], "union", g)



_ROWS, _COLS = Rows(), Cols()
ENTRIES = (_ROWS, _COLS, Global())
