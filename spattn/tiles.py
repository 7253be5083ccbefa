"""Tile grids and labelled runs of key blocks: the algebra behind block layouts.

In: block geometry (n keys, the last m positions as queries, block sizes) and, per query
block, sorted runs of key blocks labelled ``E`` (empty), ``P`` (partial: some pairs, not all),
``F`` (full) or ``A`` (undecided). Out: the runs of unions, intersections and complements
(exact four-valued rules: ``F | x = F``, ``P | P = A``, ``F & x = x``, ``P & P = A``,
``~P = P`` …) and closed-form runs for the shapes primitives are made of: one interval per row
moving monotonically (windows, causal, sinks, blocks), a stride, per-block counts of an index
set. Nothing here knows a primitive by name; :mod:`spattn.prims` composes these.
"""

from __future__ import annotations

import numpy as np

from .ir import IndexRuns

E, P, F, A = 0, 1, 2, 3  #: run labels: empty, partial, full, undecided
_W = {P: 1, F: 1 << 20, A: 1 << 40}  # sweep weights: counts of P, F, A in 20-bit fields
_WTAB = np.array([0, _W[P], _W[F], _W[A]], np.int64)
_EMPTY = np.zeros(0, np.int64)


class Grid:
    """Block geometry: query block ``a`` holds positions ``qs[a]:qe[a]``, key block ``c`` keys
    ``cs[c]:ce[c]``."""

    def __init__(self, n: int, m: int, bq: int, bk: int):
        self.n, self.m, self.bq, self.bk = n, m, bq, bk
        self.off = n - m
        self.nqb = (m + bq - 1) // bq
        self.nkb = (n + bk - 1) // bk
        a = np.arange(self.nqb, dtype=np.int64)
        self.qs = self.off + a * bq
        self.qe = np.minimum(self.qs + bq, n)
        c = np.arange(self.nkb, dtype=np.int64)
        self.cs = c * bk
        self.ce = np.minimum(self.cs + bk, n)
        self.rows = self.qe - self.qs
        self.span = self.ce - self.cs


Runs = tuple  # (row, lo, hi, lab): int64 arrays sorted by (row, lo), disjoint, lab in P/F/A


def empty_runs() -> Runs:
    return (_EMPTY, _EMPTY, _EMPTY, _EMPTY)


def make_runs(row, lo, hi, lab) -> Runs:
    row = np.asarray(row, np.int64)
    lo = np.asarray(lo, np.int64)
    hi = np.asarray(hi, np.int64)
    lab = np.broadcast_to(np.asarray(lab, np.int64), lo.shape).copy()
    keep = (lo < hi) & (lab != E)
    if not keep.all():
        row, lo, hi, lab = row[keep], lo[keep], hi[keep], lab[keep]
    return row, lo, hi, lab


def sort_runs(r: Runs, g: Grid) -> Runs:
    row, lo, hi, lab = r
    if len(lo) > 1:
        order = np.argsort(row * (g.nkb + 1) + lo, kind="stable")
        row, lo, hi, lab = row[order], lo[order], hi[order], lab[order]
    return merge_equal((row, lo, hi, lab))


def merge_equal(r: Runs) -> Runs:
    """Merge touching runs with the same label (input sorted and disjoint)."""
    row, lo, hi, lab = r
    if len(lo) <= 1:
        return r
    start = np.ones(len(lo), bool)
    start[1:] = (row[1:] != row[:-1]) | (lo[1:] != hi[:-1]) | (lab[1:] != lab[:-1])
    if start.all():
        return r
    idx = np.flatnonzero(start)
    last = np.append(idx[1:], len(lo)) - 1
    return row[idx], lo[idx], hi[last], lab[idx]


def col_runs(labels: np.ndarray, g: Grid) -> Runs:
    """The same key-block labels (length nkb) in every query block."""
    c = np.flatnonzero(np.diff(labels, prepend=-1) != 0)
    lo = c
    hi = np.append(c[1:], len(labels))
    lab = labels[c]
    keep = lab != E
    lo, hi, lab = lo[keep], hi[keep], lab[keep]
    R, K = g.nqb, len(lo)
    if K == 0:
        return empty_runs()
    return (np.repeat(np.arange(R, dtype=np.int64), K), np.tile(lo, R), np.tile(hi, R),
            np.tile(lab, R))


def row_runs(labels: np.ndarray, g: Grid) -> Runs:
    """Query-block labels (length nqb), each over every key block."""
    a = np.flatnonzero(labels != E)
    return make_runs(a, np.zeros(len(a)), np.full(len(a), g.nkb), labels[a])


def count_label(cnt, size):
    return np.where(cnt == 0, E, np.where(cnt == size, F, P)).astype(np.int64)


def combine(parts: list, kind: str, g: Grid) -> Runs:
    """Sweep labelled runs: ``kind`` is "union", "inter" or "not" (parts = [grid, x])."""
    K = len(parts)
    parts = [p for p in parts if len(p[1])]
    if kind == "inter" and len(parts) < K:
        return empty_runs()
    if not parts:
        return empty_runs()
    if kind == "union" and len(parts) == 1:
        return parts[0]
    W = g.nkb + 1
    keys, deltas = [], []
    for row, lo, hi, lab in parts:
        w = _WTAB[lab]
        k = np.empty(2 * len(lo), np.int64)
        k[0::2], k[1::2] = row * W + lo, row * W + hi
        d = np.empty(2 * len(lo), np.int64)
        d[0::2], d[1::2] = w, -w
        keys.append(k)
        deltas.append(d)
    key = np.concatenate(keys)
    delta = np.concatenate(deltas)
    order = np.argsort(key, kind="stable")
    key, delta = key[order], delta[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    gidx = np.flatnonzero(first)
    ukey = key[gidx]
    state = np.cumsum(np.add.reduceat(delta, gidx))
    urow = ukey // W
    upos = ukey - urow * W
    seg = np.zeros(len(ukey), bool)
    seg[:-1] = (urow[1:] == urow[:-1]) & (state[:-1] != 0)
    s = np.flatnonzero(seg)
    st = state[s]
    nA = st >> 40
    nF = (st >> 20) & 0xFFFFF
    nP = st & 0xFFFFF
    if kind == "union":
        lab = np.where(nF > 0, F, np.where((nA > 0) | (nP >= 2), A, np.where(nP == 1, P, E)))
    elif kind == "inter":
        cov = nP + nF + nA
        lab = np.where(cov < K, E, np.where(nF == K, F,
                       np.where((nP == 1) & (nA == 0), P, A)))
    else:  # not: parts[0] is the grid labelled F
        lab = np.where(nF == 2, E, np.where(nP == 1, P, np.where(nA == 1, A, F)))
    return merge_equal(make_runs(urow[s], upos[s], upos[s + 1], lab))


def grid_runs(g: Grid) -> Runs:
    a = np.arange(g.nqb, dtype=np.int64)
    return a, np.zeros(g.nqb, np.int64), np.full(g.nqb, g.nkb, np.int64), np.full(g.nqb, F)


# --------------------------------------------------------------------------------------------
# Primitives at block level


def interval_runs(L, R, g: Grid) -> Runs:
    """Rows whose keys are one interval ``[L(i), R(i))``, L and R non-decreasing, consecutive
    intervals overlapping or touching: the block's touched keys are the union
    ``[L(qs), R(qe-1))``, its fully covered keys the intersection ``[L(qe-1), R(qs))``."""
    n, bk = g.n, g.bk
    tl, th = L(g.qs), R(g.qe - 1)
    fl, fh = L(g.qe - 1), R(g.qs)
    ok = tl < th
    a = np.arange(g.nqb, dtype=np.int64)
    t0 = tl // bk
    t1 = (th - 1) // bk + 1
    f0 = np.minimum(np.maximum((fl + bk - 1) // bk, t0), t1)
    f1 = np.where(fh >= n, g.nkb, fh // bk)
    f1 = np.maximum(np.minimum(f1, t1), f0)
    hasf = (fl < fh) & (f0 < f1)
    f0 = np.where(hasf, f0, t1)
    f1 = np.where(hasf, f1, t1)
    row = np.concatenate([a, a, a])
    lo = np.concatenate([t0, f0, f1])
    hi = np.concatenate([f0, f1, t1])
    lab = np.concatenate([np.full(g.nqb, P), np.full(g.nqb, F), np.full(g.nqb, P)])
    ok3 = np.concatenate([ok, ok, ok])
    return sort_runs(make_runs(row[ok3], lo[ok3], hi[ok3], lab[ok3]), g)


def window_runs(left: int, right: int, g: Grid) -> Runs:
    n = g.n
    left, right = min(left, n), min(right, n)
    return interval_runs(lambda i: np.maximum(i - left, 0),
                          lambda i: np.minimum(i + right + 1, n), g)


def stride_runs(s: int, g: Grid) -> Runs:
    n, bk = g.n, g.bk
    s = min(s, n)
    if s == 1:
        return grid_runs(g)
    # tile (a, c) touched iff a multiple of s lies in [qs - ce + 1, qe - 1 - cs]
    a_all = np.arange(g.nqb, dtype=np.int64)
    dense = g.rows + bk - 1 >= s  # every full-width key block is touched
    rows, los, his, labs = [], [], [], []
    da = a_all[dense]
    if len(da):
        last = g.nkb - 1
        lo_d = g.qs[da] - g.ce[last] + 1
        hi_d = g.qe[da] - 1 - g.cs[last]
        tail_hit = (hi_d // s) * s >= lo_d
        full_w = g.span[last] == bk
        end = np.where(tail_hit | full_w, g.nkb, last)
        rows.append(da)
        los.append(np.zeros(len(da), np.int64))
        his.append(end)
        labs.append(np.full(len(da), P))
    sa = a_all[~dense]
    if len(sa):
        # touched keys: [qs + t*s, qe + t*s) for all t, clipped to [0, n)
        qs, qe = g.qs[sa], g.qe[sa]
        t0 = -((qe - 1) // s)
        t1 = (n - 1 - qs) // s
        cnt = t1 - t0 + 1
        offs = np.cumsum(cnt) - cnt
        t = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(offs, cnt) + np.repeat(t0, cnt)
        r = np.repeat(sa, cnt)
        plo = np.maximum(np.repeat(qs, cnt) + t * s, 0)
        phi = np.minimum(np.repeat(qe, cnt) + t * s, n)
        keep = plo < phi
        r, plo, phi = r[keep], plo[keep], phi[keep]
        rows.append(r)
        los.append(plo // bk)
        his.append((phi - 1) // bk + 1)
        labs.append(np.full(len(r), P))
    if not rows:
        return empty_runs()
    row, lo, hi = np.concatenate(rows), np.concatenate(los), np.concatenate(his)
    lab = np.concatenate(labs)
    # merge overlapping block ranges (same label P)
    order = np.argsort(row * (g.nkb + 1) + lo, kind="stable")
    row, lo, hi, lab = row[order], lo[order], hi[order], lab[order]
    if len(lo) > 1:
        off = row * (g.nkb + 1)
        cm = np.maximum.accumulate(off + hi) - off
        start = np.ones(len(lo), bool)
        start[1:] = (row[1:] != row[:-1]) | (lo[1:] > cm[:-1])
        idx = np.flatnonzero(start)
        row, lo, hi, lab = row[idx], lo[idx], np.maximum.reduceat(hi, idx), lab[idx]
    return fix_area1(merge_equal((row, lo, hi, lab)), g)


def fix_area1(r: Runs, g: Grid) -> Runs:
    """A touched tile holding a single pair is full: relabel such tiles (one-row query blocks
    against one-key key blocks) from P to F."""
    row, lo, hi, lab = r
    if not len(lo):
        return r
    one = (g.rows[row] == 1) & (lab == P)
    if not one.any():
        return r
    if g.bk == 1:
        lab = np.where(one, F, lab)
        return sort_runs((row, lo, hi, lab), g)
    last = g.nkb - 1
    if g.span[last] != 1:
        return r
    hit = one & (hi > last)
    if not hit.any():
        return r
    k = np.flatnonzero(hit)
    row2 = np.concatenate([row, row[k]])
    lo2 = np.concatenate([lo, np.full(len(k), last)])
    hi2 = np.concatenate([np.where(hit, last, hi), np.full(len(k), last + 1)])
    lab2 = np.concatenate([lab, np.full(len(k), F)])
    return sort_runs(make_runs(row2, lo2, hi2, lab2), g)


def index_counts(runs: IndexRuns, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many positions of the index set fall in each ``[starts, ends)`` (closed form)."""
    return runs.count_below(ends) - runs.count_below(starts)


def lookup(r: Runs, a: np.ndarray, c: np.ndarray, W: int) -> np.ndarray:
    row, lo, hi, lab = r
    if len(lo) == 0:
        return np.zeros(len(a), np.int64)
    k = np.searchsorted(row * W + lo, a * W + c, side="right") - 1
    kk = np.maximum(k, 0)
    ok = (k >= 0) & (row[kk] == a) & (hi[kk] > c)
    return np.where(ok, lab[kk], E)
