"""Primitives over an index set: ``rows(I)``, ``cols(I)`` and the symmetric ``global(I)``.

In / Out: entries of the primitive table (see :mod:`spattn.prims.base` for the hooks). Their
argument is resolved at n to sorted runs of positions or one arithmetic progression
(:class:`spattn.ir.IndexRuns`, never expanded); element predicates look positions up through
``ops.member`` (closed form for progressions and a few runs; a search in the runs on numpy; a
membership table on torch and in Triton kernels for many runs).
"""

from __future__ import annotations

import numpy as np

from .. import intervals as iv
from .. import ir, tiles
from .base import INF, Param, Primitive, progressions

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
        pts = a[0].points(_MAX_RUNS_AFFINE)
        if pts is None:
            return False
        for name in self._points_to:
            getattr(st, name).update(pts)
        return True


def _row_interval(runs: ir.IndexRuns, n: int, i: np.ndarray):
    """Rows of ``rows(I)``: the whole row [0, n) when i is in I, else empty."""
    return np.zeros(len(i), np.int64), np.where(runs.contains(i), n, 0).astype(np.int64)


def _keys_in_window(runs: ir.IndexRuns, i: np.ndarray, clo: np.ndarray, chi: np.ndarray):
    """Normal-form intervals of the set's positions within each row's ``[clo, chi)``."""
    if runs.step == 1:
        return iv.runs_in_window(i, runs.starts, runs.ends, clo, chi)
    if len(runs.starts) == 0:
        return iv.empty()
    s, e, c = int(runs.starts[0]), int(runs.ends[0]), runs.step
    lo, hi = np.maximum(clo, s), np.minimum(chi, e)
    first = s + (lo - s + c - 1) // c * c
    return iv.progression_points(i, first, np.maximum((hi - first + c - 1) // c, 0), c)


def _at_or_after(runs: ir.IndexRuns, j: np.ndarray) -> list[tuple]:
    """The set's positions at or after each j, as progressions (an end at INF: unbounded)."""
    lasts = [INF if e >= INF else e - 1 for e in runs.ends.tolist()]
    if runs.step > 1 and lasts:
        s, c = int(runs.starts[0]), runs.step
        lo = np.maximum(j, s)
        return progressions(lo + (s - lo) % c, np.full_like(j, lasts[0]), c)
    return [(np.maximum(j, s), np.full_like(j, e), 1) for s, e in zip(runs.starts.tolist(), lasts)]


def _row_keys_estimate(runs: ir.IndexRuns) -> float:
    """Intervals a row of ``cols(I)`` has: one per run, or one per progression position."""
    return float(len(runs.starts) if runs.step == 1 else runs.count)


class Rows(_IndexSet):
    name = "rows"
    doc = "i in I"
    single_interval = True
    _points_to = ("R",)

    def mask(self, ops, i, j, d, a):
        return ops.member(a[0], i) & (j >= 0)

    def interval(self, a, n, i):
        return _row_interval(a[0], n, i)

    def later(self, a, j):
        return _at_or_after(a[0], j)

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
        return _row_keys_estimate(a[0]) + 1

    def rows(self, a, n, i, clo, chi):
        return _keys_in_window(a[0], i, clo, chi)

    def later(self, a, j):
        return [(j, np.where(a[0].contains(j), INF, -1).astype(np.int64), 1)]

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
        return _row_keys_estimate(a[0]) + 2

    def saturates(self, a):
        return a[0].count > 0

    def rows(self, a, n, i, clo, chi):
        lo, hi = _row_interval(a[0], n, i)
        whole = iv.per_row(i, np.maximum(lo, clo), np.minimum(hi, chi))
        return iv.union([whole, _keys_in_window(a[0], i, clo, chi)], n)

    def later(self, a, j):
        return _COLS.later(a, j) + _ROWS.later(a, j)

    def tiles(self, a, g):
        return tiles.combine([_ROWS.tiles(a, g), _COLS.tiles(a, g)], "union", g)



_ROWS, _COLS = Rows(), Cols()
ENTRIES = (_ROWS, _COLS, Global())
