"""Block-level lowering: which (query block, key block) tiles a pattern touches, which it
covers fully, and the element mask inside the others.

In: a pattern, sequence length ``n``, query/key block sizes, optionally ``m`` queries (the last
m positions). Out: :class:`BlockLayout` (the GPU backend's input, built by :func:`to_blocks`),
:func:`mask_mod` (a FlexAttention ``mask_mod`` for a pattern) and the older
:func:`block_structure` (the same block CSR computed from row intervals).

How :func:`to_blocks` works (time proportional to the nonzero blocks, no n×n intermediate):
every query block's key blocks are kept as sorted *runs* of key blocks labelled ``E`` (empty),
``P`` (partial: some pairs, not all), ``F`` (full) or ``A`` (undecided). Each primitive
produces its runs in closed form (windows, causal, sinks and ``block`` from the union and the
intersection of their row intervals over the block's rows; ``stride`` from the differences a
tile spans; ``rows``/``cols``/``global``/the summary columns of ``fixed`` from counts per
block; ``random`` from its keys). Operators combine runs in one sweep with exact four-valued
rules (``F | x = F``, ``P | P = A``, ``F & x = x``, ``P & P = A``, ``~P = P`` …). Undecided
tiles are then settled by evaluating the element mask of one representative tile per class of
identical tiles: tiles whose translation-invariant part (windows, strides, blocks, …) sees the
same diagonal offset, phase modulo the patterns' common period and tile shape, and whose other
primitives are all empty or full there, have the same mask.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np

from . import guard, ir
from .errors import ResourceError, SpattnError
from .lower import check_n, row_intervals
from .random_keys import row_keys

E, P, F, A = 0, 1, 2, 3  #: run labels: empty, partial, full, undecided
_W = {P: 1, F: 1 << 20, A: 1 << 40}  # sweep weights: counts of P, F, A in 20-bit fields
_WTAB = np.array([0, _W[P], _W[F], _W[A]], np.int64)
_EMPTY = np.zeros(0, np.int64)
_TI = {"local", "window", "causal", "stride", "dilated", "block", "fixed", "full", "none"}


def _check_block(b, what):
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise SpattnError(f"{what} must be a positive integer, got {b!r}")
    return int(b)


def _check_m(m, n):
    m = n if m is None else m
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise SpattnError(f"m (number of queries) must be an integer, got {m!r}")
    m = int(m)
    if not 1 <= m <= n:
        raise SpattnError(f"m = {m} queries must be between 1 and n = {n}")
    return m


# --------------------------------------------------------------------------------------------
# The original interval-based block structure (kept: analysis code uses it)


def block_structure(node: ir.Node, n: int, bq: int = 128, bk: int | None = None,
                    m: int | None = None):
    """Exact block structure.

    Query rows are the last ``m`` positions (``m = n`` by default); query block ``a`` holds
    query rows ``a*bq .. min(m, (a+1)*bq) - 1`` (positions ``n - m + r``); key block ``c``
    holds keys ``c*bk .. min(n, (c+1)*bk) - 1``.

    Returns ``(indptr, kblocks, full)``: for query block ``a``, the key blocks touched are
    ``kblocks[indptr[a]:indptr[a+1]]`` (sorted), and ``full[t]`` says whether every query
    row of the block attends every key of tile ``t``.
    """
    n = check_n(n)
    bq = _check_block(bq, "query block size")
    bk = bq if bk is None else _check_block(bk, "key block size")
    m = _check_m(m, n)
    off = n - m
    nqb = (m + bq - 1) // bq
    nkb = (n + bk - 1) // bk
    touched_keys, full_keys = [], []
    for _, _, row, lo, hi in row_intervals(node, n, off, n):
        if len(lo) == 0:
            continue
        qb = (row - off) // bq
        k0, k1 = lo // bk, (hi - 1) // bk + 1
        touched_keys.append(_ranges(qb, k0, k1, nkb))
        f0 = (lo + bk - 1) // bk
        f1 = np.where(hi == n, nkb, hi // bk)
        ok = f0 < f1
        if ok.any():
            full_keys.append(_ranges(qb[ok], f0[ok], f1[ok], nkb, keep_dups=True))
    if touched_keys:
        tk = np.unique(np.concatenate(touched_keys))
    else:
        tk = np.zeros(0, np.int64)
    full = np.zeros(len(tk), bool)
    if full_keys:
        fk, cnt = np.unique(np.concatenate(full_keys), return_counts=True)
        rows_in_block = np.minimum(m - (fk // nkb) * bq, bq)
        fk = fk[cnt == rows_in_block]
        full[np.searchsorted(tk, fk)] = True
    qb_of = tk // nkb
    indptr = np.zeros(nqb + 1, np.int64)
    np.cumsum(np.bincount(qb_of, minlength=nqb), out=indptr[1:])
    return indptr, tk % nkb, full


def _ranges(qb, k0, k1, nkb, keep_dups=False):
    """Keys ``qb * nkb + k`` for k in [k0, k1) per record."""
    cnt = k1 - k0
    total = int(cnt.sum())
    offs = np.cumsum(cnt) - cnt
    k = np.arange(total, dtype=np.int64) - np.repeat(offs, cnt)
    keys = np.repeat(qb * nkb + k0, cnt) + k
    return keys if keep_dups else np.unique(keys)


# --------------------------------------------------------------------------------------------
# Grid and labelled block runs


class _Grid:
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


def _empty_runs() -> Runs:
    return (_EMPTY, _EMPTY, _EMPTY, _EMPTY)


def _mk(row, lo, hi, lab) -> Runs:
    row = np.asarray(row, np.int64)
    lo = np.asarray(lo, np.int64)
    hi = np.asarray(hi, np.int64)
    lab = np.broadcast_to(np.asarray(lab, np.int64), lo.shape).copy()
    keep = (lo < hi) & (lab != E)
    if not keep.all():
        row, lo, hi, lab = row[keep], lo[keep], hi[keep], lab[keep]
    return row, lo, hi, lab


def _sort_runs(r: Runs, g: _Grid) -> Runs:
    row, lo, hi, lab = r
    if len(lo) > 1:
        order = np.argsort(row * (g.nkb + 1) + lo, kind="stable")
        row, lo, hi, lab = row[order], lo[order], hi[order], lab[order]
    return _merge_equal((row, lo, hi, lab))


def _merge_equal(r: Runs) -> Runs:
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


def _col_runs(labels: np.ndarray, g: _Grid) -> Runs:
    """The same key-block labels (length nkb) in every query block."""
    c = np.flatnonzero(np.diff(labels, prepend=-1) != 0)
    lo = c
    hi = np.append(c[1:], len(labels))
    lab = labels[c]
    keep = lab != E
    lo, hi, lab = lo[keep], hi[keep], lab[keep]
    R, K = g.nqb, len(lo)
    if K == 0:
        return _empty_runs()
    return (np.repeat(np.arange(R, dtype=np.int64), K), np.tile(lo, R), np.tile(hi, R),
            np.tile(lab, R))


def _row_runs(labels: np.ndarray, g: _Grid) -> Runs:
    """Query-block labels (length nqb), each over every key block."""
    a = np.flatnonzero(labels != E)
    return _mk(a, np.zeros(len(a)), np.full(len(a), g.nkb), labels[a])


def _count_label(cnt, size):
    return np.where(cnt == 0, E, np.where(cnt == size, F, P)).astype(np.int64)


def _combine(parts: list, kind: str, g: _Grid) -> Runs:
    """Sweep labelled runs: ``kind`` is "union", "inter" or "not" (parts = [grid, x])."""
    K = len(parts)
    parts = [p for p in parts if len(p[1])]
    if kind == "inter" and len(parts) < K:
        return _empty_runs()
    if not parts:
        return _empty_runs()
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
    return _merge_equal(_mk(urow[s], upos[s], upos[s + 1], lab))


def _grid_runs(g: _Grid) -> Runs:
    a = np.arange(g.nqb, dtype=np.int64)
    return a, np.zeros(g.nqb, np.int64), np.full(g.nqb, g.nkb, np.int64), np.full(g.nqb, F)


# --------------------------------------------------------------------------------------------
# Primitives at block level


def _interval_prim(L, R, g: _Grid) -> Runs:
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
    return _sort_runs(_mk(row[ok3], lo[ok3], hi[ok3], lab[ok3]), g)


def _window_runs(left: int, right: int, g: _Grid) -> Runs:
    n = g.n
    left, right = min(left, n), min(right, n)
    return _interval_prim(lambda i: np.maximum(i - left, 0),
                          lambda i: np.minimum(i + right + 1, n), g)


def _stride_runs(s: int, g: _Grid) -> Runs:
    n, bk = g.n, g.bk
    s = min(s, n)
    if s == 1:
        return _grid_runs(g)
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
        return _empty_runs()
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
    return _fix_area1(_merge_equal((row, lo, hi, lab)), g)


def _fix_area1(r: Runs, g: _Grid) -> Runs:
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
        return _sort_runs((row, lo, hi, lab), g)
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
    return _sort_runs(_mk(row2, lo2, hi2, lab2), g)


def _index_counts(runs: ir.IndexRuns, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many positions of the index set fall in each ``[starts, ends)``."""
    if len(runs.starts) == 0:
        return np.zeros(len(starts), np.int64)
    cum = np.concatenate([[0], np.cumsum(runs.ends - runs.starts)])

    def upto(x):  # positions < x
        k = np.searchsorted(runs.starts, x, side="right")  # runs starting before x
        km = np.maximum(k - 1, 0)
        part = np.clip(x - runs.starts[km], 0, runs.ends[km] - runs.starts[km])
        return np.where(k > 0, cum[km] + part, 0)

    return upto(ends) - upto(starts)


def _prim_runs(name: str, a: tuple, g: _Grid) -> Runs:
    n = g.n
    if name == "local":
        return _window_runs(a[0], a[0], g)
    if name == "window":
        return _window_runs(a[0], a[1], g)
    if name == "causal":
        return _window_runs(n, 0, g)
    if name == "full":
        return _grid_runs(g)
    if name == "none":
        return _empty_runs()
    if name == "sink":
        k = min(a[0], n)
        if k == 0:
            return _empty_runs()
        return _interval_prim(lambda i: np.zeros_like(i), lambda i: np.full_like(i, k), g)
    if name == "block":
        b = min(a[0], n)
        return _interval_prim(lambda i: (i // b) * b, lambda i: np.minimum((i // b) * b + b, n),
                              g)
    if name == "stride":
        return _stride_runs(a[0], g)
    if name == "dilated":
        w, d = min(a[0], n), min(a[1], n)
        if d == 1 or w == 0:
            return _window_runs(w if d == 1 else 0, w if d == 1 else 0, g)
        return _combine([_window_runs(w * d, w * d, g), _stride_runs(d, g)], "inter", g)
    if name == "fixed":
        l, c = a
        if l >= n or c == l:
            return _grid_runs(g)

        def upto(x):
            return (x // l) * c + np.maximum(x % l - (l - c), 0)

        cols = _col_runs(_count_label(upto(g.ce) - upto(g.cs), g.span), g)
        return _combine([_prim_runs("block", (l,), g), cols], "union", g)
    if name == "rows":
        return _row_runs(_count_label(_index_counts(a[0], g.qs, g.qe), g.rows), g)
    if name == "cols":
        return _col_runs(_count_label(_index_counts(a[0], g.cs, g.ce), g.span), g)
    if name == "global":
        return _combine([_prim_runs("rows", a, g), _prim_runs("cols", a, g)], "union", g)
    if name == "random":
        return _random_runs(a[0], a[1], g)
    raise TypeError(name)  # pragma: no cover


def _random_runs(r: int, seed: int, g: _Grid) -> Runs:
    n = g.n
    k = min(r, n)
    if k == 0:
        return _empty_runs()
    if k == n:
        return _grid_runs(g)
    guard.check(float(g.m) * k * 24, f"the keys of random({r}) at n = {n:,}")
    W = g.nkb
    tiles = []
    step = max(1, (1 << 22) // k)
    for r0 in range(g.off, n, step):
        r1 = min(n, r0 + step)
        keys = row_keys(n, r, seed, np.arange(r0, r1, dtype=np.int64))
        qb = (np.arange(r0, r1, dtype=np.int64) - g.off) // g.bq
        tiles.append((qb[:, None] * W + keys // g.bk).ravel())
    t, cnt = np.unique(np.concatenate(tiles), return_counts=True)
    a, c = np.divmod(t, W)
    lab = np.where(cnt == g.rows[a] * g.span[c], F, P)
    return _merge_equal(_mk(a, c, c + 1, lab))


# --------------------------------------------------------------------------------------------
# Whole-pattern block classification


def _classify(node: ir.Node, g: _Grid, leaves: dict) -> Runs:
    if isinstance(node, ir.Prim):
        r = _prim_runs(node.name, ir.prim_args(node, g.n), g)
        if node.name not in _TI:
            leaves[node] = r
        return r
    if isinstance(node, ir.Union):
        return _combine([_classify(x, g, leaves) for x in node.items], "union", g)
    if isinstance(node, ir.Inter):
        return _combine([_classify(x, g, leaves) for x in node.items], "inter", g)
    if isinstance(node, ir.Not):
        return _combine([_grid_runs(g), _classify(node.a, g, leaves)], "not", g)
    if isinstance(node, ir.Diff):
        a = _classify(node.a, g, leaves)
        b = _combine([_grid_runs(g), _classify(node.b, g, leaves)], "not", g)
        return _combine([a, b], "inter", g)
    raise TypeError(node)


def _period(node: ir.Node, n: int) -> int:
    """Common period of the translation-invariant primitives (shifting i and j together by a
    multiple of it preserves them)."""
    per = 1
    stack = [node]
    while stack:
        x = stack.pop()
        stack.extend(ir.children(x))
        if isinstance(x, ir.Prim) and x.name in ("stride", "dilated", "block", "fixed"):
            args = ir.prim_args(x, n)
            v = {"stride": args[0], "dilated": args[-1], "block": args[0], "fixed": args[0]}[
                x.name]
            per = math.lcm(per, min(v, 2 * n))
            if per > 4 * n:
                return 0  # no useful period
    return per


def _lookup(r: Runs, a: np.ndarray, c: np.ndarray, W: int) -> np.ndarray:
    row, lo, hi, lab = r
    if len(lo) == 0:
        return np.zeros(len(a), np.int64)
    k = np.searchsorted(row * W + lo, a * W + c, side="right") - 1
    kk = np.maximum(k, 0)
    ok = (k >= 0) & (row[kk] == a) & (hi[kk] > c)
    return np.where(ok, lab[kk], E)


def _expand(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenate ``range(lo[t], hi[t])`` for every run (int32)."""
    lens = hi - lo
    total = int(lens.sum())
    out = np.ones(total, np.int32)
    if total == 0:
        return out
    nz = lens > 0
    lo, hi, lens = lo[nz], hi[nz], lens[nz]
    offs = np.cumsum(lens) - lens
    out[offs[0]] = lo[0]
    out[offs[1:]] = lo[1:] - hi[:-1] + 1
    np.cumsum(out, out=out)
    return out


def _resolve(node: ir.Node, g: _Grid, a: np.ndarray, c: np.ndarray, leaves: dict) -> np.ndarray:
    """Exact labels of undecided tiles ``(a, c)``: one element-level evaluation per class of
    identical tiles."""
    if len(a) == 0:
        return _EMPTY
    per = _period(node, g.n)
    cols = [g.qs[a] - g.cs[c], g.rows[a], g.span[c]]
    cols.append(g.cs[c] % per if per else g.cs[c])
    exact = np.ones(len(a), bool)
    for r in leaves.values():
        lab = _lookup(r, a, c, g.nkb)
        cols.append(lab)
        exact &= lab != P
    # tiles where a non-translation-invariant primitive is partial are their own class
    cols.append(np.where(exact, -1, a))
    cols.append(np.where(exact, -1, c))
    sig = np.stack(cols, axis=1)
    _, rep, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    labs = tile_labels(node, g, a[rep], c[rep])
    return labs[inv.ravel()]


def tile_labels(node: ir.Node, g: _Grid, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """E/P/F of tiles ``(a, c)`` by evaluating their element masks (chunked)."""
    out = np.empty(len(a), np.int64)
    per = max(1, (1 << 22) // (g.bq * g.bk))
    xq = np.arange(g.bq, dtype=np.int64)
    xk = np.arange(g.bk, dtype=np.int64)
    for s in range(0, len(a), per):
        aa, cc = a[s:s + per], c[s:s + per]
        i = g.qs[aa][:, None, None] + xq[None, :, None]
        j = g.cs[cc][:, None, None] + xk[None, None, :]
        valid = (i < g.qe[aa][:, None, None]) & (j < g.ce[cc][:, None, None])
        i = np.minimum(i, g.n - 1).astype(np.int32)
        j = np.minimum(j, g.n - 1).astype(np.int32)
        v = eval_mask(node, i, j, g.n) & valid
        cnt = v.sum(axis=(1, 2))
        out[s:s + per] = _count_label(cnt, g.rows[aa] * g.span[cc])
    return out


# --------------------------------------------------------------------------------------------
# Element masks (numpy), shared by the tile resolution and BlockLayout.tile_mask


def _membership(runs: ir.IndexRuns, n: int) -> np.ndarray:
    t = np.zeros(n, bool)
    for s, e in zip(runs.starts.tolist(), runs.ends.tolist(), strict=True):
        t[s:e] = True
    return t


def _random_tiles(i, j, n, r, seed):
    """random's mask on tiles ``i`` (..., X, 1) × ``j`` (..., 1, Y) whose keys are
    consecutive (clipped at n - 1): scatter each row's keys instead of searching."""
    if i.ndim < 2 or i.ndim != j.ndim or i.shape[-1] != 1 or j.shape[-2] != 1:
        return None
    lead = np.broadcast_shapes(i.shape[:-2], j.shape[:-2])
    X, Y = i.shape[-2], j.shape[-1]
    rows = np.broadcast_to(i[..., 0], lead + (X,)).reshape(-1, X)
    jr = np.broadcast_to(j[..., 0, :], lead + (Y,)).reshape(-1, Y)
    j0 = jr[:, :1]
    if not ((jr == np.minimum(j0 + np.arange(Y), n - 1)).all()):
        return None
    keys = row_keys(n, r, seed, rows.ravel())
    k = keys.shape[1]
    G = rows.shape[0]
    out = np.zeros((G, X, Y), bool)
    if k:
        rel = keys.reshape(G, X, k) - j0[:, :, None]
        g, x, t = np.nonzero((rel >= 0) & (rel < Y))
        col = rel[g, x, t]
        out[g, x, col] = True
        # a clipped tail repeats key n - 1: mirror its value there
        last = np.minimum(j0[:, 0] + np.arange(Y)[:, None], n - 1).T == n - 1
        if last.any():
            gl, yl = np.nonzero(last)
            y0 = np.argmax(last, axis=1)
            out[gl, :, yl] = out[gl, :, y0[gl]]
    return out.reshape(lead + (X, Y))


def eval_mask(node: ir.Node, i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """The pattern at positions ``(i, j)`` (broadcastable int64 arrays inside ``[0, n)``)."""
    if isinstance(node, ir.Union):
        out = eval_mask(node.items[0], i, j, n)
        for x in node.items[1:]:
            out = out | eval_mask(x, i, j, n)
        return out
    if isinstance(node, ir.Inter):
        out = eval_mask(node.items[0], i, j, n)
        for x in node.items[1:]:
            out = out & eval_mask(x, i, j, n)
        return out
    if isinstance(node, ir.Diff):
        return eval_mask(node.a, i, j, n) & ~eval_mask(node.b, i, j, n)
    if isinstance(node, ir.Not):
        return ~eval_mask(node.a, i, j, n)
    a = ir.prim_args(node, n)
    name = node.name
    d = i - j
    cap = n + 1  # |i - j| < n: larger arguments act like n + 1 (keeps int32 arithmetic safe)
    if name == "local":
        w = min(a[0], cap)
        return (d <= w) & (d >= -w)
    if name == "window":
        lft, rgt = min(a[0], cap), min(a[1], cap)
        return (d <= lft) & (d >= -rgt)
    if name == "causal":
        return d >= 0
    if name == "stride":
        return d % min(a[0], n) == 0
    if name == "dilated":
        w = min(a[0] * a[1], cap)
        return (d <= w) & (d >= -w) & (d % min(a[1], n) == 0)
    if name == "block":
        b = min(a[0], n)
        return i // b == j // b
    if name == "fixed":
        if a[0] >= n:
            return np.ones(np.broadcast_shapes(i.shape, j.shape), bool)
        return (i // a[0] == j // a[0]) | (j % a[0] >= a[0] - a[1])
    if name == "rows":
        return _membership(a[0], n)[i] & (j >= 0)
    if name == "cols":
        return _membership(a[0], n)[j] & (i >= 0)
    if name == "global":
        t = _membership(a[0], n)
        return t[i] | t[j]
    if name == "sink":
        return (j < min(a[0], cap)) & (i >= 0)
    if name == "full":
        return np.ones(np.broadcast_shapes(i.shape, j.shape), bool)
    if name == "none":
        return np.zeros(np.broadcast_shapes(i.shape, j.shape), bool)
    if name == "random":
        tiled = _random_tiles(i, j, n, a[0], a[1])
        if tiled is not None:
            return tiled
        shape = np.broadcast_shapes(i.shape, j.shape)
        ib, jb = np.broadcast_to(i, shape).ravel(), np.broadcast_to(j, shape).ravel()
        rows, inv = np.unique(ib, return_inverse=True)
        keys = row_keys(n, a[0], a[1], rows)
        k = keys.shape[1]
        if k == 0:
            return np.zeros(shape, bool)
        flat = (np.arange(len(rows), dtype=np.int64)[:, None] * n + keys).ravel()
        q = inv.ravel() * n + jb
        pos = np.minimum(np.searchsorted(flat, q), len(flat) - 1)
        return (flat[pos] == q).reshape(shape)
    raise TypeError(name)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# BlockLayout


class BlockLayout:
    """A pattern lowered to tiles for a block-sparse kernel.

    Geometry: ``m`` queries (positions ``n - m .. n - 1``, bottom-right aligned) and ``n`` keys;
    query block ``a`` holds query rows ``a*block_q .. min(m, (a+1)*block_q) - 1``, key block
    ``c`` holds keys ``c*block_k .. min(n, (c+1)*block_k) - 1``; ``num_q_blocks`` and
    ``num_k_blocks`` count them.

    Format (compressed block rows, int32 numpy arrays, indices sorted within a row):

    * ``full_ptr`` (num_q_blocks + 1), ``full_idx``: the key blocks of query block ``a`` in
      which every (query, key) pair is attended are ``full_idx[full_ptr[a]:full_ptr[a+1]]``;
    * ``part_ptr``, ``part_idx``: likewise the *partial* key blocks, where some but not all
      pairs are attended; their element mask is :meth:`tile_mask` (on GPU: a predicate
      generated from the pattern IR, evaluated inside the kernel);
    * ``full_t_ptr`` / ``full_t_idx`` and ``part_t_ptr`` / ``part_t_idx``: the transpose (for
      key block ``c``, its query blocks), used by the backward pass; computed on first use.

    Every other tile is empty. The contract, as a loop that rebuilds the token-level mask
    (this is :meth:`to_mask`)::

        M = np.zeros((m, n), bool)
        for a in range(L.num_q_blocks):
            r = slice(a * L.block_q, min(m, (a + 1) * L.block_q))
            for c in L.full_idx[L.full_ptr[a]:L.full_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = True
            for c in L.part_idx[L.part_ptr[a]:L.part_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = L.tile_mask(a, c)

    ``M`` equals rows ``n - m:`` of ``pattern.to_dense(n)``.
    """

    def __init__(self, pattern, n: int, m: int, block_q: int, block_k: int,
                 full_ptr: np.ndarray, full_idx: np.ndarray, part_ptr: np.ndarray,
                 part_idx: np.ndarray):
        self.pattern = pattern
        self.n, self.m, self.block_q, self.block_k = n, m, block_q, block_k
        self.num_q_blocks = (m + block_q - 1) // block_q
        self.num_k_blocks = (n + block_k - 1) // block_k
        self.full_ptr, self.full_idx = full_ptr, full_idx
        self.part_ptr, self.part_idx = part_ptr, part_idx
        self._cache: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return (f"BlockLayout({str(self.pattern)!r}, n={self.n}, m={self.m}, "
                f"block=({self.block_q}, {self.block_k}), full={self.num_full}, "
                f"partial={self.num_partial})")

    @property
    def num_full(self) -> int:
        """Number of full tiles (every pair attended)."""
        return len(self.full_idx)

    @property
    def num_partial(self) -> int:
        """Number of partial tiles (need the element mask)."""
        return len(self.part_idx)

    @property
    def nonzero_blocks(self) -> int:
        """Number of tiles with at least one pair."""
        return self.num_full + self.num_partial

    def _rows(self, ptr):
        return np.repeat(np.arange(self.num_q_blocks, dtype=np.int32), np.diff(ptr))

    def _transpose(self, ptr, idx):
        a = self._rows(ptr)
        dt = np.uint16 if self.num_k_blocks <= 65535 else np.int64
        order = np.argsort(idx.astype(dt), kind="stable")  # radix sort for 16-bit keys
        tptr = np.zeros(self.num_k_blocks + 1, np.int32)
        np.cumsum(np.bincount(idx, minlength=self.num_k_blocks), out=tptr[1:])
        return tptr, a[order].astype(np.int32)

    @cached_property
    def _full_t(self):
        return self._transpose(self.full_ptr, self.full_idx)

    @cached_property
    def _part_t(self):
        return self._transpose(self.part_ptr, self.part_idx)

    @property
    def full_t_ptr(self) -> np.ndarray:
        """Transposed form: key block c's full query blocks are
        ``full_t_idx[full_t_ptr[c]:full_t_ptr[c + 1]]``."""
        return self._full_t[0]

    @property
    def full_t_idx(self) -> np.ndarray:
        """Query-block indices of full tiles, grouped by key block (see full_t_ptr)."""
        return self._full_t[1]

    @property
    def part_t_ptr(self) -> np.ndarray:
        """Transposed form of the partial tiles: offsets per key block."""
        return self._part_t[0]

    @property
    def part_t_idx(self) -> np.ndarray:
        """Query-block indices of partial tiles, grouped by key block (see part_t_ptr)."""
        return self._part_t[1]

    def to_dense(self) -> np.ndarray:
        """Block-level matrix (num_q_blocks, num_k_blocks), uint8: 0 empty, 1 partial,
        2 full."""
        guard.check(float(self.num_q_blocks) * self.num_k_blocks,
                    f"a dense {self.num_q_blocks}×{self.num_k_blocks} block matrix")
        out = np.zeros((self.num_q_blocks, self.num_k_blocks), np.uint8)
        out[self._rows(self.part_ptr), self.part_idx] = 1
        out[self._rows(self.full_ptr), self.full_idx] = 2
        return out

    def tile_mask(self, a: int, c: int) -> np.ndarray:
        """The exact element mask of tile ``(a, c)``: (rows, keys) bool."""
        g = _Grid(self.n, self.m, self.block_q, self.block_k)
        if not (0 <= a < g.nqb and 0 <= c < g.nkb):
            raise SpattnError(f"tile ({a}, {c}) is outside the {g.nqb}×{g.nkb} block grid")
        i = np.arange(g.qs[a], g.qe[a], dtype=np.int64)[:, None]
        j = np.arange(g.cs[c], g.ce[c], dtype=np.int64)[None, :]
        return eval_mask(self.pattern.node, i, j, self.n)

    def to_mask(self) -> np.ndarray:
        """The token-level (m, n) mask rebuilt from the layout (small sizes only)."""
        from .lower import MAX_DENSE_N

        if self.n > MAX_DENSE_N:
            raise ResourceError(f"to_mask at n = {self.n:,} would build an m×n matrix; the "
                                f"limit is n <= {MAX_DENSE_N:,}")
        m, n, L = self.m, self.n, self
        M = np.zeros((m, n), bool)
        for a in range(L.num_q_blocks):
            r = slice(a * L.block_q, min(m, (a + 1) * L.block_q))
            for c in L.full_idx[L.full_ptr[a]:L.full_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = True
            for c in L.part_idx[L.part_ptr[a]:L.part_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = L.tile_mask(a, c)
        return M

    def to_flex_block_mask(self, device: Any = "cpu"):
        """A FlexAttention ``BlockMask`` with this layout (partial blocks evaluate
        :func:`mask_mod`), for ``flex_attention`` with Q_LEN = m and KV_LEN = n.

        As in ``create_block_mask``, a tile that reaches past the end of the sequence (the
        last query block when block_q does not divide m, the last key block when block_k does
        not divide n) is listed as partial even when all its in-range pairs are attended."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        dense = self.to_dense()
        if self.m % self.block_q:
            dense[-1][dense[-1] == 2] = 1
        if self.n % self.block_k:
            col = dense[:, -1]
            col[col == 2] = 1

        def enc(sel):
            cnt = sel.sum(axis=1).astype(np.int32)
            idx = np.argsort(~sel, axis=1, kind="stable").astype(np.int32)
            return (torch.from_numpy(cnt)[None, None].to(device),
                    torch.from_numpy(np.ascontiguousarray(idx))[None, None].to(device))

        kv_num, kv_idx = enc(dense == 1)
        f_num, f_idx = enc(dense == 2)
        mm = _mask_mod(self.pattern.node, self.n, self.n - self.m, device)
        return BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx,
                                        BLOCK_SIZE=(self.block_q, self.block_k), mask_mod=mm,
                                        seq_lengths=(self.m, self.n))


def to_blocks(pattern, n: int, block_size: int = 128, key_block_size: int | None = None,
              m: int | None = None) -> BlockLayout:
    """Lower ``pattern`` to a :class:`BlockLayout` with query blocks of ``block_size`` and key
    blocks of ``key_block_size`` (default: the same), for ``m`` queries (default ``n``)."""
    from .pattern import compile as _compile

    pattern = _compile(pattern)
    n = check_n(n)
    bq = _check_block(block_size, "block_size")
    bk = bq if key_block_size is None else _check_block(key_block_size, "key_block_size")
    m = _check_m(m, n)
    g = _Grid(n, m, bq, bk)
    leaves: dict = {}
    row, lo, hi, lab = _classify(pattern.node, g, leaves)
    total = int((hi - lo).sum())
    guard.check(total * 8.0, f"a block layout of {total:,} tiles at n = {n:,}")
    und = lab == A
    if und.any():
        # settle undecided tiles, then splice them back as one-tile runs
        ua, uc = row[und], lo[und]
        lens = hi[und] - lo[und]
        ta = np.repeat(ua, lens)
        tc = _expand(uc, hi[und]).astype(np.int64)
        tl = _resolve(pattern.node, g, ta, tc, leaves)
        keep = ~und
        row, lo, hi, lab = _sort_runs((np.concatenate([row[keep], ta]),
                                       np.concatenate([lo[keep], tc]),
                                       np.concatenate([hi[keep], tc + 1]),
                                       np.concatenate([lab[keep], tl])), g)
        keep = lab != E
        row, lo, hi, lab = row[keep], lo[keep], hi[keep], lab[keep]

    def csr(label):
        sel = lab == label
        r, a, b = row[sel], lo[sel], hi[sel]
        ptr = np.zeros(g.nqb + 1, np.int64)
        np.cumsum(np.bincount(r, weights=b - a, minlength=g.nqb).astype(np.int64), out=ptr[1:])
        return ptr.astype(np.int32), _expand(a, b)

    fp, fi = csr(F)
    pp, pi = csr(P)
    return BlockLayout(pattern, n, m, bq, bk, fp, fi, pp, pi)


# --------------------------------------------------------------------------------------------
# FlexAttention interop


def _mask_mod(node: ir.Node, n: int, off: int = 0, device: Any = "cpu"):
    import torch

    tables: dict = {}
    args: dict = {}

    def prepare(x: ir.Node):
        for c in ir.children(x):
            prepare(c)
        if isinstance(x, ir.Prim):
            a = args[x] = ir.prim_args(x, n)
            if x.name in ("rows", "cols", "global"):
                tables[x] = torch.from_numpy(_membership(a[0], n)).to(device)
            elif x.name == "random":
                k = min(a[0], n)
                if 0 < k < n:
                    tables[x] = torch.from_numpy(
                        row_keys(n, a[0], a[1], np.arange(n))).to(device)

    prepare(node)

    def ev(x: ir.Node, i, j):
        if isinstance(x, ir.Union):
            out = ev(x.items[0], i, j)
            for y in x.items[1:]:
                out = out | ev(y, i, j)
            return out
        if isinstance(x, ir.Inter):
            out = ev(x.items[0], i, j)
            for y in x.items[1:]:
                out = out & ev(y, i, j)
            return out
        if isinstance(x, ir.Diff):
            return ev(x.a, i, j) & ~ev(x.b, i, j)
        if isinstance(x, ir.Not):
            return ~ev(x.a, i, j)
        a = args[x]  # evaluated once, outside any tracing
        name = x.name
        d = i - j
        if name == "local":
            return (d <= a[0]) & (d >= -a[0])
        if name == "window":
            return (d <= a[0]) & (-d <= a[1])
        if name == "causal":
            return d >= 0
        if name == "stride":
            return torch.remainder(d, a[0]) == 0
        if name == "dilated":
            return (d <= a[0] * a[1]) & (-d <= a[0] * a[1]) & (torch.remainder(d, a[1]) == 0)
        if name == "block":
            return torch.div(i, a[0], rounding_mode="floor") == torch.div(
                j, a[0], rounding_mode="floor")
        if name == "fixed":
            return (torch.div(i, a[0], rounding_mode="floor")
                    == torch.div(j, a[0], rounding_mode="floor")) | (
                torch.remainder(j, a[0]) >= a[0] - a[1])
        if name == "rows":
            return tables[x][i] & (j >= 0)
        if name == "cols":
            return tables[x][j] & (i >= 0)
        if name == "global":
            return tables[x][i] | tables[x][j]
        if name == "sink":
            return (j < a[0]) & (i >= 0)
        if name == "full":
            return (i >= 0) & (j >= 0)
        if name == "none":
            return (i < 0) & (j < 0)
        if name == "random":
            k = min(a[0], n)
            if k == 0:
                return (i < 0) & (j < 0)
            if k == n:
                return (i >= 0) & (j >= 0)
            t = tables[x]
            out = t[i, 0] == j
            for s in range(1, k):
                out = out | (t[i, s] == j)
            return out
        raise TypeError(name)  # pragma: no cover

    def mask_mod_fn(b, h, q_idx, kv_idx):
        i = q_idx + off
        j = kv_idx
        # positions past the ends (FlexAttention pads to whole blocks) are masked out
        i_c = torch.clamp(i, 0, n - 1)
        j_c = torch.clamp(j, 0, n - 1)
        return ev(node, i_c, j_c) & (i < n) & (j < n)

    return mask_mod_fn


def mask_mod(pattern, n: int):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` evaluating ``pattern`` at sequence
    length ``n`` (torch-traceable; index sets and random keys are captured tensors)."""
    from .pattern import compile as _compile

    pattern = _compile(pattern)
    n = check_n(n)
    return _mask_mod(pattern.node, n)
