"""Row families: the rows of a pattern as affine interval families over ranges of rows.

In: a canonical pattern node and ``n``. Out: :class:`Families`: per range ``[a, c)`` of rows,
its intervals ``[lo0 + slo·(i − a), hi0 + shi·(i − a))`` with slopes 0 or 1, from which every
row figure, block figure and the KV cache follow in closed form.

How: a row's keys are sorted disjoint intervals (:func:`spattn.lower.row_intervals`). For
patterns whose primitives are piecewise affine (their table entries say so through
``Primitive.structure``) the rows split into ranges (every row where an end point ``i + d``
can meet a constant ``c``, every block boundary, every listed row) inside which each
interval's end points move with slope 0 or 1. Two rows per range are lowered and the rest
follows (``compressed``). Otherwise every row is lowered (``intervals``), the same data with
ranges of one row. Both are exact; None when both would be over budget.
"""

from __future__ import annotations

import math

import numpy as np

from .. import guard, ir
from ..bind import Bound, bind
from ..lower import chunks, eval_rows

FULL_INTERVALS = 3_000_000  #: lower every row while the estimated intervals stay under this
_CALL_COST = 1000.0  #: one lowering call, in units of one interval


class Families:
    """Per range ``[a, c)`` of rows, its intervals ``[lo0 + slo·(i − a), hi0 + shi·(i − a))``.
    Arrays are flat, one entry per (range, interval), sorted by range."""

    __slots__ = ("n", "ra", "rc", "fr", "lo0", "slo", "hi0", "shi", "mode")

    def __init__(self, n, ra, rc, fr, lo0, slo, hi0, shi, mode):
        self.n, self.ra, self.rc, self.fr = n, ra, rc, fr
        self.lo0, self.slo, self.hi0, self.shi, self.mode = lo0, slo, hi0, shi, mode

    @property
    def fa(self):
        return self.ra[self.fr]

    @property
    def fc(self):
        return self.rc[self.fr]

    def lo_at(self, i):
        return self.lo0 + self.slo * (i - self.fa)

    def hi_at(self, i):
        return self.hi0 + self.shi * (i - self.fa)


class Structure:
    """End points of a pattern's intervals: offsets ``D`` (ends at ``i + d``), constants
    ``C``, row breakpoints ``R`` and block sizes ``blocks``."""

    __slots__ = ("D", "C", "R", "blocks")

    def __init__(self, n: int):
        self.D, self.C, self.R, self.blocks = {0, 1}, {0, n}, {0, n}, set()


def structure(b: Bound, n: int):
    """``(D, C, R, blocks)`` of a bound pattern (see :class:`Structure`), from each
    primitive's table entry, or None when some primitive is not piecewise affine."""
    st = Structure(n)
    for p in b.prims():
        if not p.spec.structure(p.args, n, st):
            return None
    return st.D, st.C, st.R, st.blocks


def breakpoints(st, n: int) -> np.ndarray | None:
    D, C, R, blocks = st
    d = np.array(sorted(D), np.int64)
    c = np.array(sorted(C), np.int64)
    pts = [np.array(sorted(R), np.int64), (c[:, None] - d[None, :]).ravel()]
    pts.append(pts[-1] + 1)
    for bsz in blocks:
        q = np.arange(0, n + 1, bsz, dtype=np.int64)
        if len(q) * len(d) > 4_000_000:
            return None
        pts.append(q)
        for x in (0, bsz):
            e = ((q + x)[:, None] - d[None, :]).ravel()
            pts += [e, e + 1]
    allp = np.concatenate(pts)
    allp = allp[(allp >= 0) & (allp <= n)]
    return np.unique(np.concatenate([allp, [0, n]]))


def eval_sorted_rows(b, n, rows_sorted):
    """Lower the given sorted unique rows (grouped into contiguous runs)."""
    out = []
    if len(rows_sorted) == 0:
        return out
    brk = np.flatnonzero(np.diff(rows_sorted) != 1) + 1
    starts = rows_sorted[np.concatenate([[0], brk])]
    ends = rows_sorted[np.concatenate([brk - 1, [len(rows_sorted) - 1]])] + 1
    for s, e in zip(starts.tolist(), ends.tolist(), strict=False):
        for a, c in chunks(b, n, s, e):
            out.append(eval_rows(b, n, a, c))
    return out


def concat_rows(parts):
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z, z
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _full_families(b, n) -> Families:
    row, lo, hi = concat_rows([eval_rows(b, n, a, c) for a, c in chunks(b, n, 0, n)])
    return _run_compress(n, row, lo, hi)


def _run_compress(n: int, row, lo, hi) -> Families:
    """Families from every row's intervals, merging runs of rows where each step to the next
    row moves every interval end by the same 0 or 1 (e.g. the rows of one block)."""
    cnt = np.bincount(row, minlength=n)
    z = np.zeros(len(lo), np.int64)
    if n < 3:
        ra = np.arange(n, dtype=np.int64)
        return Families(n, ra, ra + 1, row, lo, z, hi, z.copy(), "intervals")
    eq = cnt[1:] == cnt[:-1]  # step r: row r -> r + 1 keeps the interval count
    j = np.flatnonzero(row > 0)
    j = j[eq[row[j] - 1]]
    prev = j - cnt[row[j] - 1]
    dl = np.full(len(lo), -9, np.int64)
    dh = np.full(len(lo), -9, np.int64)
    dl[j], dh[j] = lo[j] - lo[prev], hi[j] - hi[prev]
    bad = (dl[j] < 0) | (dl[j] > 1) | (dh[j] < 0) | (dh[j] > 1)
    # ... and keeps each interval's relation to the query (containing or touching it, or not)
    r1 = row[j]
    rel = (lo[j] <= r1 + 1) & (hi[j] >= r1)
    relp = (lo[prev] <= r1) & (hi[prev] >= r1 - 1)
    valid = eq.copy()
    valid[row[j[bad | (rel != relp)]] - 1] = False
    # step r moves like step r - 1: the deltas of row r + 1 equal those of row r
    same = np.ones(n - 1, bool)
    same[0] = True
    diff = (dl[j] != dl[prev]) | (dh[j] != dh[prev])
    same[row[j[diff]] - 1] = False
    same[1:] &= valid[:-1]
    brk = ~valid
    brk[1:] |= ~same[1:]
    starts = np.concatenate([[0], np.flatnonzero(brk) + 1]).astype(np.int64)
    ra, rc = starts, np.concatenate([starts[1:], [n]]).astype(np.int64)
    off = np.cumsum(cnt) - cnt
    k = cnt[ra]
    sel = expand_keys(off[ra], k)
    fr = np.repeat(np.arange(len(ra), dtype=np.int64), k)
    multi = np.repeat(rc - ra >= 2, k)
    slo = np.where(multi, dl[np.minimum(sel + k.repeat(k), len(lo) - 1)], 0)
    shi = np.where(multi, dh[np.minimum(sel + k.repeat(k), len(lo) - 1)], 0)
    return Families(n, ra, rc, fr, lo[sel], slo, hi[sel], shi, "intervals")


def _compressed_families(b, n, bp) -> Families | None:
    ra, rc = bp[:-1], bp[1:]
    L = rc - ra
    rows = np.unique(np.concatenate([ra, ra[L >= 2] + 1, rc[L >= 3] - 1]))
    row, lo, hi = concat_rows(eval_sorted_rows(b, n, rows))
    # per row start offsets
    first = np.searchsorted(row, rows, "left")
    last = np.searchsorted(row, rows, "right")
    cnt = dict(zip(rows.tolist(), zip(first.tolist(), last.tolist(), strict=False), strict=False))
    fr, lo0, slo, hi0, shi = [], [], [], [], []
    for k, (a, c) in enumerate(zip(ra.tolist(), rc.tolist(), strict=False)):
        f0, f1 = cnt[a]
        la, ha = lo[f0:f1], hi[f0:f1]
        if c - a >= 2:
            g0, g1 = cnt[a + 1]
            if g1 - g0 != f1 - f0:
                return None
            sl, sh = lo[g0:g1] - la, hi[g0:g1] - ha
            if not (np.isin(sl, (0, 1)).all() and np.isin(sh, (0, 1)).all()):
                return None
            if c - a >= 3:  # verify the extrapolation on the range's last row
                h0, h1 = cnt[c - 1]
                if h1 - h0 != f1 - f0 or not (
                        np.array_equal(lo[h0:h1], la + sl * (c - 1 - a))
                        and np.array_equal(hi[h0:h1], ha + sh * (c - 1 - a))):
                    return None
        else:
            sl = sh = np.zeros(f1 - f0, np.int64)
        fr.append(np.full(f1 - f0, k, np.int64))
        lo0.append(la)
        hi0.append(ha)
        slo.append(sl)
        shi.append(sh)
    cat = np.concatenate
    return Families(n, ra, rc, cat(fr), cat(lo0), cat(slo), cat(hi0), cat(shi), "compressed")


def families(node: ir.Node, n: int, mode: str | None = None) -> Families | None:
    """Exact families of ``node`` at ``n`` (``mode``: force "compressed" or "intervals"), or
    None when both would be over budget."""
    b = bind(node, n)
    full_cost = b.est * n
    comp_cost, bp = math.inf, None
    if mode != "intervals":
        st = structure(b, n)
        if st is not None:
            bp = breakpoints(st, n)
            if bp is not None:
                comp_cost = (len(bp) - 1) * (2 * _CALL_COST + 3 * b.est)
    if mode == "compressed" or (mode is None and bp is not None and comp_cost < full_cost):
        if bp is not None:
            f = _compressed_families(b, n, bp)
            if f is not None:
                return f
        if mode == "compressed":
            return None
    if mode == "intervals" or full_cost <= FULL_INTERVALS:
        return _full_families(b, n)
    return None


def expand_keys(start, cnt):
    """Concatenate ``range(start[k], start[k] + cnt[k])`` for every k."""
    total = int(cnt.sum())
    offs = np.cumsum(cnt) - cnt
    return np.repeat(start, cnt) + (np.arange(total, dtype=np.int64) - np.repeat(offs, cnt))


def linear_ok(n: int) -> bool:
    """Whether a few dozen int64 arrays of length n fit the memory budget."""
    return 200.0 * n <= guard.memory_budget()
