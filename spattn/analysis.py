"""Pattern analysis: the figures of SPEC section 2 (``Pattern.stats``).

In: a :class:`~spattn.Pattern` (or pattern text), a sequence length ``n`` and a block size.
Out: a frozen :class:`Stats` (``to_dict()`` is JSON-ready) with nnz, density, row degrees,
empty rows, causal, symmetric, block figures, KV cache and receptive field, and an ``exact``
map saying which figures are exact.

How, without any n×n intermediate:

* **Families.** A row's keys are sorted disjoint intervals (:func:`spattn.lower.row_intervals`).
  For patterns built from ``local window causal dilated block sink cols rows global full none``
  the rows split into *ranges* (from the pattern's structure: every row where an endpoint
  ``i + d`` can meet a constant ``c``, every block boundary, every listed row) inside which
  each interval's end points move with slope 0 or 1 in the row index. Two rows per range are
  lowered and everything else follows in closed form (``compressed``). Otherwise every row is
  lowered (``intervals``), which is the same data with ranges of one row. Both are exact.
  When even that is over budget, figures come from sampled rows (``sampled``, inexact).
* **Row figures** (nnz, degrees, empty rows, causal, diagonal) are sums of affine functions.
* **Blocks**: per (range ∩ query block) piece, the touched key tiles and, per tile, the number
  of rows that cover it; a tile is full when all rows of its query block cover it.
* **KV cache**: ``L(j)`` = the last query using key ``j``, a range-max over the families;
  ``kv_cache = max_t #{j ≤ t ≤ L(j)}`` by a difference array. It *grows with n* when the
  figure at ``2n`` is larger.
* **Receptive field**: brute force (all-source BFS) for small ``n``. Beyond, by structure:
  every row's keys are a *core* interval around the query plus a few constant *hub* keys;
  core reach sets stay intervals and are composed by doubling; hubs are handled exactly
  when they are closed (hub rows only read hubs, e.g. attention sinks) or saturating (a full
  row whose key every row reads, e.g. global tokens). Otherwise the figure is measured at a
  smaller ``n`` and marked inexact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import guard, ir, lower
from .errors import LoweringError, ResourceError, SpattnError

BRUTE_N = 1024  #: receptive field by exhaustive search up to this n
ESTIMATE_N = 512  #: where no exact method applies, the receptive field is measured at this n
BRUTE_WORK = 2e8  #: ... or while n · nnz stays under this
FULL_INTERVALS = 3_000_000  #: lower every row while the estimated intervals stay under this
SAMPLE_INTERVALS = 600_000  #: interval budget of the sampled mode
PIECES_PER_CHUNK = 1 << 21  #: block figures work on this many (family, query block) pieces
HUB_MAX = 16  #: most hub keys the structural receptive field accepts
_CALL_COST = 1000.0  #: one lowering call, in units of one interval

_SYMMETRIC_PRIMS = {"local", "stride", "dilated", "block", "global", "full", "none"}
_COMPRESSIBLE = {"local", "window", "causal", "dilated", "block", "sink", "cols", "rows",
                 "global", "full", "none"}


# --------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class Stats:
    """Figures of a pattern at one sequence length (SPEC section 2).

    ``nnz``, ``density`` (nnz / n²), ``row_degree`` (``min``/``mean``/``max`` keys per query),
    ``empty_rows``, ``causal`` (no pair with j > i), ``symmetric``; ``blocks`` at
    ``block_size``: ``nonzero`` and ``full`` tiles, ``partial``, ``density`` (nonzero / tiles)
    and ``efficiency`` (nnz / (nonzero · block_size²)); ``kv_cache`` (causal patterns only:
    max over t of the keys ≤ t still read by a query ≥ t; else None) and ``kv_cache_grows``
    (larger at 2n); ``receptive_field``: ``reachable``, ``hops_to_full`` and ``coverage``
    ({depth: mean fraction of positions within depth hops}) plus its own ``exact``.

    ``exact[name]`` says whether each figure is exact (True) or an estimate (False);
    ``method`` says how rows were read ("compressed", "intervals" or "sampled"); ``notes``
    explain estimates."""

    pattern: str
    seq_len: int
    nnz: int
    density: float
    row_degree: dict[str, float]
    empty_rows: int
    causal: bool
    symmetric: bool
    blocks: dict[str, Any]
    kv_cache: int | None
    kv_cache_grows: bool | None
    receptive_field: dict[str, Any]
    exact: dict[str, bool]
    method: str
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (SPEC section 2 keys plus ``pattern``, ``kv_cache_grows``,
        ``exact``, ``method`` and ``notes``)."""
        rf = dict(self.receptive_field)
        rf["coverage"] = {str(k): float(v) for k, v in rf["coverage"].items()}
        return {
            "pattern": self.pattern,
            "seq_len": int(self.seq_len),
            "nnz": int(self.nnz),
            "density": float(self.density),
            "row_degree": {k: (float(v) if k == "mean" else int(v))
                           for k, v in self.row_degree.items()},
            "empty_rows": int(self.empty_rows),
            "causal": bool(self.causal),
            "symmetric": bool(self.symmetric),
            "receptive_field": rf,
            "blocks": dict(self.blocks),
            "kv_cache": None if self.kv_cache is None else int(self.kv_cache),
            "kv_cache_grows": self.kv_cache_grows,
            "exact": dict(self.exact),
            "method": self.method,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        rf = self.receptive_field
        deg = self.row_degree
        b = self.blocks
        kv = "n/a (not causal)" if self.kv_cache is None else (
            f"{self.kv_cache:,}" + (" (grows with n)" if self.kv_cache_grows else ""))
        mark = {k: "" if v else " ~" for k, v in self.exact.items()}
        lines = [
            f"{self.pattern}  at n = {self.seq_len:,}",
            f"  nnz            {self.nnz:,}{mark['nnz']}   density {self.density:.4g}",
            f"  row degree     min {deg['min']:,}  mean {deg['mean']:.1f}  max {deg['max']:,}",
            f"  empty rows     {self.empty_rows:,}",
            f"  causal         {self.causal}   symmetric {self.symmetric}{mark['symmetric']}",
            f"  blocks ({b['block_size']})   nonzero {b['nonzero']:,}  full {b['full']:,}  "
            f"partial {b['partial']:,}  efficiency {b['efficiency']:.1%}{mark['blocks']}",
            f"  kv cache       {kv}{mark['kv_cache']}",
            f"  receptive      reachable {rf['reachable']:.4g}  hops_to_full "
            f"{rf['hops_to_full']}{mark['receptive_field']}",
        ]
        if self.notes:
            lines += [f"  note: {x}" for x in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Families: affine interval families over row ranges


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


def _structure(b: lower.Bound, n: int):
    """Offsets ``D`` (end points ``i + d``), constants ``C``, row breakpoints ``R`` and block
    sizes of a bound pattern, or None when some primitive is not piecewise affine."""
    D, C, R, blocks = {0, 1}, {0, n}, {0, n}, set()
    stack = [b]
    while stack:
        x = stack.pop()
        if x.kind != "prim":
            stack.extend(x.items)
            continue
        name, a = x.name, x.args
        if name not in _COMPRESSIBLE:
            return None
        if name in ("local", "window"):
            l, r = (a[0], a[0]) if name == "local" else a
            D |= {-min(l, n), min(r, n) + 1}
        elif name == "causal":
            D.add(1)
        elif name == "sink":
            C.add(min(a[0], n))
        elif name == "dilated":
            w, d = min(a[0], n), min(a[1], n)
            if (2 * w + 1) > 4096:
                return None
            for k in range(-w, w + 1):
                D |= {k * d, k * d + 1}
        elif name == "block":
            blocks.add(min(a[0], n))
        elif name in ("cols", "rows", "global"):
            runs = a[0]
            if len(runs.starts) > 4096:
                return None
            pts = set(runs.starts.tolist()) | set(runs.ends.tolist())
            if name != "rows":
                C |= pts
            if name != "cols":
                R |= pts
    return D, C, R, blocks


def _breakpoints(st, n: int) -> np.ndarray | None:
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


def _eval_rows(b, n, rows_sorted):
    """Lower the given sorted unique rows (grouped into contiguous runs)."""
    out = []
    if len(rows_sorted) == 0:
        return out
    brk = np.flatnonzero(np.diff(rows_sorted) != 1) + 1
    starts = rows_sorted[np.concatenate([[0], brk])]
    ends = rows_sorted[np.concatenate([brk - 1, [len(rows_sorted) - 1]])] + 1
    for s, e in zip(starts.tolist(), ends.tolist(), strict=False):
        for a, c in lower.chunks(b, n, s, e):
            out.append(lower.eval_rows(b, n, a, c))
    return out


def _concat_rows(parts):
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z, z
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _full_families(b, n) -> Families:
    row, lo, hi = _concat_rows([lower.eval_rows(b, n, a, c) for a, c in lower.chunks(b, n, 0, n)])
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
    sel = _expand_keys(off[ra], k)
    fr = np.repeat(np.arange(len(ra), dtype=np.int64), k)
    multi = np.repeat(rc - ra >= 2, k)
    slo = np.where(multi, dl[np.minimum(sel + k.repeat(k), len(lo) - 1)], 0)
    shi = np.where(multi, dh[np.minimum(sel + k.repeat(k), len(lo) - 1)], 0)
    return Families(n, ra, rc, fr, lo[sel], slo, hi[sel], shi, "intervals")


def _compressed_families(b, n, bp) -> Families | None:
    ra, rc = bp[:-1], bp[1:]
    L = rc - ra
    rows = np.unique(np.concatenate([ra, ra[L >= 2] + 1, rc[L >= 3] - 1]))
    row, lo, hi = _concat_rows(_eval_rows(b, n, rows))
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
    b = lower.bind(node, n)
    full_cost = b.est * n
    comp_cost, bp = math.inf, None
    if mode != "intervals":
        st = _structure(b, n)
        if st is not None:
            bp = _breakpoints(st, n)
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


# --------------------------------------------------------------------------------------------
# Row figures


def _row_figures(f: Families) -> dict[str, Any]:
    n = f.n
    nr = len(f.ra)
    L = f.rc - f.ra
    d0 = np.bincount(f.fr, weights=f.hi0 - f.lo0, minlength=nr).astype(np.int64)
    sd = np.bincount(f.fr, weights=f.shi - f.slo, minlength=nr).astype(np.int64)
    dl = d0 + sd * (L - 1)
    nnz = int((L * d0 + sd * (L * (L - 1) // 2)).sum())
    dmin = int(min(d0.min(), dl.min()))
    dmax = int(max(d0.max(), dl.max()))
    empty = np.where(sd == 0, np.where(d0 == 0, L, 0),
                     (d0 == 0).astype(np.int64) + ((dl == 0) & (L > 1)))
    # causal: every key j <= i, i.e. hi(i) - 1 - i <= 0 at both ends of each range
    fa, fc = f.fa, f.fc
    causal = True
    if len(f.lo0):
        causal = bool(((f.hi0 - 1 - fa) <= 0).all()
                      and ((f.hi_at(fc - 1) - 1 - (fc - 1)) <= 0).all())
    # diagonal: rows with lo(i) <= i < hi(i)
    lo_ok_hi = np.where(f.slo == 1, np.where(f.lo0 <= fa, fc, fa), fc)
    lo_ok_lo = np.where(f.slo == 1, fa, np.maximum(fa, f.lo0))
    hi_ok_lo = np.where(f.shi == 1, np.where(f.hi0 > fa, fa, fc), fa)
    hi_ok_hi = np.where(f.shi == 1, fc, np.minimum(fc, f.hi0))
    lo_r = np.maximum(lo_ok_lo, hi_ok_lo)
    hi_r = np.minimum(lo_ok_hi, hi_ok_hi)
    diag = int(np.maximum(hi_r - lo_r, 0).sum())
    return {"nnz": nnz, "min": dmin, "max": dmax, "mean": nnz / n, "empty": int(empty.sum()),
            "causal": causal, "diag": diag}


# --------------------------------------------------------------------------------------------
# Blocks


def _measure(qb, pos0, pos1, nkb, pred):
    """Total length, over query blocks, of the key-tile positions whose coverage count by the
    ranges ``[pos0, pos1)`` (grouped by ``qb``) satisfies ``pred(count, qb)``."""
    if len(qb) == 0:
        return 0
    key = np.concatenate([qb * (nkb + 1) + pos0, qb * (nkb + 1) + pos1])
    d = np.concatenate([np.ones(len(qb), np.int64), -np.ones(len(qb), np.int64)])
    order = np.argsort(key, kind="stable")
    key, d = key[order], d[order]
    cnt = np.cumsum(d)
    q, p = np.divmod(key, nkb + 1)
    span = np.zeros(len(key), np.int64)
    span[:-1] = np.where(q[1:] == q[:-1], p[1:] - p[:-1], 0)
    return int(span[pred(cnt, q) & (span > 0)].sum())


def _block_chunk(f: Families, B, nkb, nseg, sel, qb0, qb1):
    n = f.n
    fa, fc = f.fa[sel], f.fc[sel]
    cnt = qb1 - qb0
    idx = np.repeat(np.arange(len(sel)), cnt)
    qb = _expand_keys(qb0, cnt)
    s = np.maximum(fa[idx], qb * B)
    e = np.minimum(fc[idx], qb * B + B)
    lo0, slo = f.lo0[sel][idx], f.slo[sel][idx]
    hi0, shi, a = f.hi0[sel][idx], f.shi[sel][idx], fa[idx]
    lo_s, lo_e = lo0 + slo * (s - a), lo0 + slo * (e - 1 - a)
    hi_s, hi_e = hi0 + shi * (s - a), hi0 + shi * (e - 1 - a)
    # touched key tiles: the hull [lo(s), hi(e-1)) of each piece
    nonzero = _measure(qb, lo_s // B, (hi_e - 1) // B + 1, nkb, lambda c, q: c >= 1)
    # tiles covered at every row of the piece: [lo(e-1), hi(s))
    c0 = (lo_e + B - 1) // B
    c1 = np.where(hi_s >= n, nkb, hi_s // B)
    ok = c0 < c1
    full = _measure(qb[ok], c0[ok], c1[ok], nkb, lambda c, q: c == nseg(q))
    return nonzero, full


def _block_figures(f: Families, B: int, nnz: int | None = None) -> dict[str, Any]:
    """Exact nonzero and full tiles at block size ``B`` from interval sweeps over key-tile
    ranges: no per-tile or per-pair expansion.

    Within a range the families are disjoint, non-touching and move by at most one per row,
    so a tile fully covered at every row of a (range ∩ query block) segment is covered by
    one family throughout; a tile is full when every segment of its query block covers it."""
    n = f.n
    nkb = nqb = (n + B - 1) // B
    # segments of a query block: the ranges (with or without intervals) that meet it

    def nseg(q):
        return np.searchsorted(f.ra, (q + 1) * B) - np.searchsorted(f.rc, q * B, "right")

    # pieces: family x query block, in chunks of query blocks to bound memory
    fa, fc = f.fa, f.fc
    qb0, qb1 = fa // B, (fc - 1) // B + 1
    total = float((qb1 - qb0).sum())
    nchunks = max(1, math.ceil(total / PIECES_PER_CHUNK))
    step = max(1, math.ceil(nqb / nchunks))
    nonzero = full = 0
    for q0 in range(0, nqb, step):
        q1 = min(nqb, q0 + step)
        sel = np.flatnonzero((qb0 < q1) & (qb1 > q0)) if nchunks > 1 else np.arange(len(fa))
        c0q, c1q = np.maximum(qb0[sel], q0), np.minimum(qb1[sel], q1)
        nz, fl = _block_chunk(f, B, nkb, nseg, sel, c0q, c1q)
        nonzero += nz
        full += fl
    if nnz is None:
        nnz = _row_figures(f)["nnz"]
    return _blocks_dict(B, nonzero, full, nqb, nkb, nnz)


def _blocks_dict(B, nonzero, full, nqb, nkb, nnz):
    return {"block_size": int(B), "nonzero": int(nonzero), "full": int(full),
            "partial": int(nonzero - full),
            "density": float(nonzero / (nqb * nkb)),
            "efficiency": float(nnz / (nonzero * B * B)) if nonzero else 0.0}


def _expand_keys(start, cnt):
    total = int(cnt.sum())
    offs = np.cumsum(cnt) - cnt
    return np.repeat(start, cnt) + (np.arange(total, dtype=np.int64) - np.repeat(offs, cnt))


# --------------------------------------------------------------------------------------------
# KV cache


def _range_chmax(n: int, l, h, v, default: int) -> np.ndarray:
    """``out[j] = max(default, max{v[k] : l[k] <= j < h[k]})``: a sparse table over the
    pieces' compressed coordinates, pushed down one level at a time (memory O(n))."""
    keep = l < h
    l, h, v = l[keep], h[keep], v[keep]
    if len(l) == 0:
        return np.full(n, default, np.int64)
    coords = np.unique(np.concatenate([l, h, [0, n]]))
    m = len(coords) - 1  # segments [coords[s], coords[s + 1])
    li, hi = np.searchsorted(coords, l), np.searchsorted(coords, h)
    k = np.floor(np.log2(hi - li)).astype(np.int64)
    order = np.argsort(k, kind="stable")
    k, li, hi, v = k[order], li[order], hi[order], v[order]
    bounds = np.searchsorted(k, np.arange(int(k.max()) + 2))
    cur = None
    for lev in range(int(k.max()), -1, -1):
        nxt = np.full(m, default, np.int64)
        s0, s1 = bounds[lev], bounds[lev + 1]
        if s1 > s0:
            np.maximum.at(nxt, li[s0:s1], v[s0:s1])
            np.maximum.at(nxt, hi[s0:s1] - (1 << lev), v[s0:s1])
        if cur is not None:
            half = 1 << lev
            np.maximum(nxt, cur, out=nxt)
            np.maximum(nxt[half:], cur[:m - half], out=nxt[half:])
        cur = nxt
    return np.repeat(cur, np.diff(coords))


def _kv_cache(f: Families) -> int:
    n = f.n
    fa, fc = f.fa, f.fc
    lo_l, hi_l = f.lo_at(fc - 1), f.hi_at(fc - 1)
    # keys [lo(c-1), hi(c-1)) are last read at row c - 1
    A = _range_chmax(n, lo_l, hi_l, fc - 1, -1)
    # slope-1 lower ends: keys [lo0, lo(c-1)) are last read at row a + (j - lo0)
    m = f.slo == 1
    if m.any():
        Bd = _range_chmax(n, f.lo0[m], lo_l[m], fa[m] - f.lo0[m], -(n + 2))
        A = np.maximum(A, np.arange(n, dtype=np.int64) + Bd)
    j = np.arange(n, dtype=np.int64)
    used = A >= j
    diff = np.zeros(n + 1, np.int64)
    np.add.at(diff, j[used], 1)
    np.add.at(diff, A[used] + 1, -1)
    return int(np.cumsum(diff[:n]).max()) if n else 0


# --------------------------------------------------------------------------------------------
# Symmetric


def _prims(node):
    stack, out = [node], []
    while stack:
        x = stack.pop()
        if isinstance(x, ir.Prim):
            out.append(x)
        else:
            stack.extend(ir.children(x))
    return out


def _symmetric(node, n, rowfig, exact_rows) -> tuple[bool, bool]:
    """(symmetric, exact)."""
    if all(p.name in _SYMMETRIC_PRIMS for p in _prims(node)):
        return True, True
    if exact_rows and rowfig["causal"]:
        return rowfig["nnz"] == rowfig["diag"], True
    if exact_rows and rowfig["nnz"] <= 5_000_000:
        m = lower.to_csr(node, n)
        d = m != m.T
        return d.nnz == 0, True
    # witness search on sampled rows
    b = lower.bind(node, n)
    rows = np.unique(np.linspace(0, n - 1, 16).astype(np.int64))
    for row, lo, hi in _eval_rows(b, n, rows):
        for r, a, c in zip(row.tolist()[:16], lo.tolist()[:16], hi.tolist()[:16], strict=False):
            for j in {a, c - 1}:
                _, lo2, hi2 = lower.eval_rows(b, n, j, j + 1)
                if not ((lo2 <= r) & (r < hi2)).any():
                    return False, True
    return True, False


# --------------------------------------------------------------------------------------------
# Receptive field


def _depths(hops: int) -> list[int]:
    """1, 2, 4, ... below hops_to_full, then hops_to_full itself (always at least 1)."""
    out = [1]
    while out[-1] * 2 < hops:
        out.append(out[-1] * 2)
    if hops > out[-1]:
        out.append(hops)
    return out


def _rf_from_sizes(n, sizes_by_L, total_inf, hops):
    cov = {L: sizes_by_L(L) / (float(n) * n) for L in _depths(hops)}
    return {"reachable": total_inf / (float(n) * n), "hops_to_full": int(hops), "coverage": cov}


def _rf_brute(node, n) -> dict[str, Any]:
    """All-source search on the exact CSR (small n)."""
    m = lower.to_csr(node, n)
    nnz = m.nnz
    if nnz * n < 5e7:
        from scipy.sparse.csgraph import shortest_path

        g = m.T.tocsr().astype(np.float64)  # edge j -> i when M[i, j]
        d = shortest_path(g, directed=True, unweighted=True)  # d[j, i]
        fin = np.isfinite(d)
        hops = int(d[fin].max()) if fin.any() else 0
        dd = np.where(fin, d, np.inf)
        return _rf_from_sizes(n, lambda L: float((dd <= L).sum()), float(fin.sum()), hops)
    a = m.toarray().astype(np.float32)
    np.fill_diagonal(a, 1.0)
    r = np.eye(n, dtype=np.float32)
    sizes = [float(n)]
    while True:
        nr = ((a @ r) > 0).astype(np.float32)
        s = float(nr.sum())
        if s == sizes[-1]:
            break
        sizes.append(s)
        r = nr
    hops = len(sizes) - 1
    return _rf_from_sizes(n, lambda L: sizes[min(L, hops)], sizes[-1], hops)


def _rf_bitset(node, n: int, nnz: int, work_cap: float = 3e8) -> dict[str, Any] | None:
    """Exact search for moderate n: every query's reach set as a row of bits, one hop per
    step (``R[i] |= R[k]`` for the keys k of i), until nothing changes. None when the work
    (pairs × words × steps) would pass ``work_cap``."""
    W = (n + 63) // 64
    if (nnz + n) * W * 2 > work_cap:
        return None
    m = lower.to_csr(node, n)
    import scipy.sparse as sp

    a = (m + sp.eye_array(n, dtype=bool, format="csr")).tocsr()
    a.sort_indices()
    indptr, indices = a.indptr.astype(np.int64), a.indices.astype(np.int64)
    i = np.arange(n)
    R = np.zeros((n, W), np.uint64)
    R[i, i // 64] = np.left_shift(np.uint64(1), (i % 64).astype(np.uint64))
    sizes = [float(n)]
    work = 0.0
    step = max(1, int(4_000_000 // max(1, W * max(1, (indptr[-1] // n)))))
    while True:
        Rn = np.empty_like(R)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            p0, p1 = indptr[r0], indptr[r1]
            Rn[r0:r1] = np.bitwise_or.reduceat(R[indices[p0:p1]], indptr[r0:r1] - p0, axis=0)
        s = float(np.bitwise_count(Rn).sum())
        work += float(indptr[-1]) * W
        if s == sizes[-1]:
            break
        sizes.append(s)
        R = Rn
        if work > work_cap:
            return None
    hops = len(sizes) - 1
    return _rf_from_sizes(n, lambda L: sizes[min(L, hops)], sizes[-1], hops)


class _Core:
    """Core reach intervals composed by doubling: ``T[k]`` = reach in ``2**k`` hops."""

    def __init__(self, lo, hi):
        self.T = [(lo, hi)]
        self._mono = {}
        self._sp = {}
        while True:
            nl, nh = self.compose(self.T[-1], len(self.T) - 1)
            pl, ph = self.T[-1]
            if np.array_equal(nl, pl) and np.array_equal(nh, ph):
                break
            self.T.append((nl, nh))
        self.F = self.T[-1]

    def _rq(self, k, which, a, b):
        arr = self.T[k][which]
        key = (k, which)
        if key not in self._mono:
            self._mono[key] = bool((arr[1:] >= arr[:-1]).all())
        if self._mono[key]:
            return arr[a] if which == 0 else arr[b - 1]
        if key not in self._sp:
            op = np.minimum if which == 0 else np.maximum
            levels = [arr]
            j = 1
            while 2 * j <= len(arr):
                p = levels[-1]
                levels.append(op(p[:-j], p[j:]))
                j *= 2
            self._sp[key] = levels
        levels = self._sp[key]
        ln = b - a
        k2 = np.floor(np.log2(ln)).astype(np.int64)
        out = np.empty(len(a), arr.dtype)
        op = np.minimum if which == 0 else np.maximum
        for lev in np.unique(k2).tolist():
            sel = k2 == lev
            tab = levels[lev]
            out[sel] = op(tab[a[sel]], tab[b[sel] - (1 << lev)])
        return out

    def compose(self, cur, k):
        """Reach ``cur`` followed by ``2**k`` more hops."""
        lo, hi = cur
        return self._rq(k, 0, lo, hi), self._rq(k, 1, lo, hi)

    def reach(self, L: int):
        if L & (L - 1) == 0 and L:
            k = L.bit_length() - 1
            return self.T[k] if k < len(self.T) else self.F
        n = len(self.T[0][0])
        dt = self.T[0][0].dtype
        cur = (np.arange(n, dtype=dt), np.arange(1, n + 1, dtype=dt))
        k = 0
        while L:
            if L & 1:
                cur = self.F if k >= len(self.T) else self.compose(cur, k)
            L >>= 1
            k += 1
        return cur

    def first_depth(self, done) -> np.ndarray:
        """Per query, the smallest L with ``done(lo_L, hi_L)`` true (monotone in L); -1 when
        never (checked on the fixpoint)."""
        n = len(self.T[0][0])
        dt = self.T[0][0].dtype
        lo, hi = np.arange(n, dtype=dt), np.arange(1, n + 1, dtype=dt)
        res = np.zeros(n, np.int64)
        ok0 = done(lo, hi)
        never = ~done(*self.F)
        depth = np.zeros(n, np.int64)
        for k in range(len(self.T) - 1, -1, -1):
            nl, nh = self.compose((lo, hi), k)
            adv = ~done(nl, nh)
            lo, hi = np.where(adv, nl, lo), np.where(adv, nh, hi)
            depth += adv.astype(np.int64) << k
        res = np.where(ok0, 0, depth + 1)
        return np.where(never, -1, res)


def _rf_structural(f: Families) -> dict[str, Any] | None:
    n = f.n
    fa, fc = f.fa, f.fc
    # classify families relative to the query i (fixed within a range)
    la, ha = f.lo0, f.hi0
    core_f = (la <= fa + 1) & (ha >= fa)  # contains i or touches it
    extra = ~core_f
    # core arrays per row: {i} merged with the (at most two) families containing or touching i
    i = np.arange(n, dtype=np.int64)
    clo, chi = i.copy(), i + 1
    cf = np.flatnonzero(core_f)
    if len(cf):
        r = _expand_keys(fa[cf], fc[cf] - fa[cf])
        k = np.repeat(cf, fc[cf] - fa[cf])
        np.minimum.at(clo, r, f.lo0[k] + f.slo[k] * (r - fa[k]))
        np.maximum.at(chi, r, f.hi0[k] + f.shi[k] * (r - fa[k]))

    def rows_with_key(h):
        """Boolean over rows: h is a key of row i, or h == i."""
        lo0, slo, hi0, shi = la, f.slo, ha, f.shi
        up = np.where(slo == 1, fa + h - lo0, np.where(lo0 <= h, fc - 1, fa - 1))
        dn = np.where(shi == 1, fa + h + 1 - hi0, np.where(hi0 > h, fa, fc))
        r0, r1 = np.maximum(fa, dn), np.minimum(fc - 1, up) + 1
        ok = r1 > r0
        d = np.zeros(n + 1, np.int64)
        np.add.at(d, r0[ok], 1)
        np.add.at(d, r1[ok], -1)
        out = np.cumsum(d[:n]) > 0
        out[h] = True
        return out

    # saturating node: a full row whose key every row reads (global tokens): 2 hops to all
    full_rows = np.flatnonzero((clo == 0) & (chi == n))
    for g in full_rows[:8].tolist():
        if rows_with_key(g).all():
            hops = 0 if n == 1 else 1 if len(full_rows) == n else 2
            cov = {1: _row_cov1(f)}
            if hops == 2:
                cov[2] = 1.0
            return {"reachable": 1.0, "hops_to_full": hops, "coverage": cov}
    if (extra & ((f.slo != 0) | (f.shi != 0))).any():
        return None
    # hubs: the keys of extra families
    if extra.any():
        pairs = np.unique(np.stack([la[extra], ha[extra]], 1), axis=0)
        if int((pairs[:, 1] - pairs[:, 0]).sum()) > 64 * HUB_MAX:
            return None
        hubs = np.unique(_expand_keys(pairs[:, 0], pairs[:, 1] - pairs[:, 0]))
        if len(hubs) > HUB_MAX:
            return None
    else:
        hubs = np.zeros(0, np.int64)
    H = len(hubs)
    if H:
        use = [rows_with_key(int(h)) for h in hubs]
    if H:
        # closed hubs: every hub row reads only hubs
        hub_set = np.zeros(n + 1, np.int64)
        hub_set[hubs + 1] = 1
        cntH = np.cumsum(hub_set).astype(np.int32)
        for h in hubs.tolist():
            if cntH[chi[h]] - cntH[clo[h]] != chi[h] - clo[h]:
                return None
    core = _Core(clo.astype(np.int32), chi.astype(np.int32))  # n < 2**31: halves traffic
    if H:
        # extras of hub rows are hubs by construction; distances among hubs
        INF = 1 << 40
        DH = np.full((H, H), INF, np.int64)
        for a_ in range(H):
            for b_ in range(H):
                if a_ == b_:
                    DH[a_, b_] = 0
                elif use[a_][hubs[b_]]:
                    DH[a_, b_] = 1
        for k in range(H):
            DH = np.minimum(DH, DH[:, k:k + 1] + DH[k:k + 1, :])
        nonhub = np.ones(n, bool)
        nonhub[hubs] = False
        # e_h(i) = 1 + dcore(U_h -> i), U_h = non-hub rows reading h
        e, seen = [], {}
        for k in range(H):
            U = use[k] & nonhub
            key = U.tobytes()
            if key not in seen:
                if U[nonhub].all():
                    fd = np.zeros(n, np.int64)
                else:
                    pre = np.concatenate([[0], np.cumsum(U)])
                    fd = core.first_depth(lambda lo, hi, pre=pre: (pre[hi] - pre[lo]) > 0)
                seen[key] = np.where(fd >= 0, fd + 1, INF)
            e.append(seen[key])
        dh = np.full((H, n), INF, np.int64)  # d(h -> i) for non-hub i
        for a_ in range(H):
            for b_ in range(H):
                if DH[a_, b_] < INF:
                    dh[a_] = np.minimum(dh[a_], DH[a_, b_] + e[b_])
        dh[:, ~nonhub] = INF
    else:
        cntH = np.zeros(n + 1, np.int32)
        nonhub = np.ones(n, bool)
        dh = np.zeros((0, n), np.int64)
        DH = np.zeros((0, 0), np.int64)
        INF = 1 << 40

    def core_size(lo, hi):
        if not H:
            return hi - lo
        return (hi - lo) - (cntH[hi] - cntH[lo])

    Fsize = core_size(*core.F)

    def size_sum(Lx):
        lo, hi = core.reach(Lx)
        s = float(core_size(lo, hi)[nonhub].sum())
        if H:
            s += float((dh <= Lx).sum()) + float((DH <= Lx).sum())
        return s

    total_inf = float(Fsize[nonhub].sum())
    if H:
        total_inf += float((dh < INF).sum()) + float((DH < INF).sum())
    fd = core.first_depth(lambda lo, hi: core_size(lo, hi) == Fsize)
    hops = int(fd[nonhub].max()) if nonhub.any() else 0
    if H:
        fin = dh[dh < INF]
        if len(fin):
            hops = max(hops, int(fin.max()))
        fin = DH[DH < INF]
        hops = max(hops, int(fin.max()))
    return _rf_from_sizes(n, size_sum, total_inf, hops)


def _row_cov1(f: Families) -> float:
    r = _row_figures(f)
    n = f.n
    return (r["nnz"] + n - r["diag"]) / (n * n)


# --------------------------------------------------------------------------------------------
# Sampled mode (inexact)


def _sampled(node, n: int, B: int) -> tuple[dict, dict, int | None]:
    b = lower.bind(node, n)
    per = max(1.0, b.est)
    S = int(max(16, min(4096, SAMPLE_INTERVALS // per)))
    S = min(S, n, int(guard.memory_budget() // (per * 400)))
    if S < 1 or per > 8 * SAMPLE_INTERVALS:
        raise ResourceError(
            f"stats at n = {n:,}: one row of this pattern has about {per:,.0f} intervals; "
            "sampling rows would take too long and too much memory; use a smaller n")
    run = 32 if S >= 256 else 1  # runs of consecutive rows: fewer lowering calls
    E = min(run, n // 4)  # the first and last E rows are taken whole (global rows, edges)
    m = n - 2 * E
    starts = E + ((np.arange(S // run) + 0.5) * m / (S // run)).astype(np.int64)
    inner = np.unique(np.minimum(starts[:, None] + np.arange(run)[None, :], n - 1 - E).ravel())
    edges = np.concatenate([np.arange(E), np.arange(n - E, n)]).astype(np.int64)
    rows = np.unique(np.concatenate([edges, inner]))
    row, lo, hi = _concat_rows(_eval_rows(b, n, rows))
    deg = np.bincount(np.searchsorted(rows, row), weights=hi - lo, minlength=len(rows))
    dg = np.zeros(len(rows), bool)
    dg[np.searchsorted(rows, row[(lo <= row) & (row < hi)])] = True
    is_edge = np.isin(rows, edges)
    w = np.where(is_edge, 1.0, m / max(1, int((~is_edge).sum())))  # stratum weights

    def total(x):
        return float((w * x).sum())

    nnz = total(deg)
    causal = bool((hi - 1 <= row).all()) if len(lo) else True
    rowfig = {"nnz": int(round(nnz)), "min": int(deg.min()), "max": int(deg.max()),
              "mean": nnz / n, "empty": int(round(total(deg == 0))), "causal": causal,
              "diag": int(round(total(dg)))}
    # causal: a sampled row reading j > i proves False; the IR's structure proves True
    rowfig["causal_exact"] = (not causal) or _structurally_causal(node)
    # blocks: sampled query blocks at the midpoints of equal strata
    nqb = (n + B - 1) // B
    Q = int(max(2, min(nqb, SAMPLE_INTERVALS // (per * B))))
    qbs = np.unique(((np.arange(Q) + 0.5) * nqb / Q).astype(np.int64))
    nz = fl = 0
    for q in qbs.tolist():
        r0, r1 = q * B, min(n, q * B + B)
        row2, lo2, hi2 = _concat_rows([lower.eval_rows(b, n, x, y)
                                       for x, y in lower.chunks(b, n, r0, r1)])
        ra = np.arange(r0, r1, dtype=np.int64)
        z = np.zeros(len(lo2), np.int64)
        bf = _block_figures(Families(n, ra, ra + 1, row2 - r0, lo2, z, hi2, z, "x"), B, 0)
        nz += bf["nonzero"]
        fl += bf["full"]
    scale = nqb / len(qbs)
    blocks = _blocks_dict(B, int(round(nz * scale)), int(round(fl * scale)), nqb, nqb,
                          rowfig["nnz"])
    kv = _sampled_kv(b, n, per, rowfig["max"]) if rowfig["causal"] else None
    return rowfig, blocks, kv


def _sampled_kv(b, n: int, per: float, maxdeg: int) -> int:
    """A lower bound of the KV cache: the largest row, and the keys <= t read by the last
    rows t.. n-1 together (R of them, within the sampling budget)."""
    R = int(min(1024, max(1, 2 * SAMPLE_INTERVALS // per), n))
    if not _linear_ok(n // 8) or per * R > 4 * SAMPLE_INTERVALS:
        return maxdeg
    t = n - R
    d = np.zeros(n + 1, np.int64)
    for _, lo2, hi2 in _eval_rows(b, n, np.arange(t, n)):
        np.add.at(d, lo2, 1)
        np.add.at(d, hi2, -1)
    marked = np.cumsum(d[:t + 1]) > 0
    return max(maxdeg, int(np.count_nonzero(marked)))


def _structurally_causal(node) -> bool:
    if isinstance(node, ir.Prim):
        return node.name in ("causal", "none") or (
            node.name == "window" and isinstance(node.args[1], ir.Const)
            and node.args[1].value == 0)
    if isinstance(node, ir.Inter):
        return any(_structurally_causal(x) for x in node.items)
    if isinstance(node, ir.Union):
        return all(_structurally_causal(x) for x in node.items)
    if isinstance(node, ir.Diff):
        return _structurally_causal(node.a)
    return False


# --------------------------------------------------------------------------------------------
# Entry point


def _global_saturates(node, n: int) -> bool:
    """Whether the pattern is a union with a ``global(I)`` term, I nonempty at n."""
    items = node.items if isinstance(node, ir.Union) else (node,)
    for x in items:
        if isinstance(x, ir.Prim) and x.name == "global":
            try:
                if ir.prim_args(x, n)[0].count > 0:
                    return True
            except SpattnError:
                return False
    return False


def _check_block_size(B, n):
    if isinstance(B, bool) or not isinstance(B, (int, np.integer)) or B < 1:
        raise SpattnError(f"block size must be a positive integer, got {B!r}")
    return int(B)


def _linear_ok(n: int) -> bool:
    """Whether a few dozen int64 arrays of length n fit the memory budget."""
    return 200.0 * n <= guard.memory_budget()


def kv_cache(node: ir.Node, n: int) -> tuple[int | None, bool]:
    """(KV cache at n, exact) for a causal pattern, or (None, True) when not causal."""
    f = families(node, n)
    if f is None:
        return None, False
    if not _row_figures(f)["causal"]:
        return None, True
    return _kv_cache(f), True


def stats(pattern: Any, n: int, block_size: int = 128) -> Stats:
    """The figures of SPEC section 2 for ``pattern`` at sequence length ``n``."""
    from .pattern import compile as _compile

    p = _compile(pattern)
    node = p.node
    n = lower.check_n(n)
    B = _check_block_size(block_size, n)
    notes: list[str] = []
    kv_exact = True
    f = families(node, n)
    exact_rows = f is not None
    if f is not None:
        rowfig = _row_figures(f)
        blocks = _block_figures(f, B, rowfig["nnz"])
        kv = None
        if rowfig["causal"]:
            if _linear_ok(n):
                kv = _kv_cache(f)
            else:  # a lower bound without O(n) arrays
                kv, kv_exact = rowfig["max"], False
                notes.append(f"KV cache at n = {n:,} is a lower bound (the largest row)")
        method = f.mode
    else:
        rowfig, blocks, kv = _sampled(node, n, B)
        method = "sampled"
        notes.append("rows were sampled: nnz, degrees, blocks and KV cache are estimates")
    sym, sym_exact = _symmetric(node, n, rowfig, exact_rows)

    # KV cache growth: compare with 2n
    grows, grows_exact = None, exact_rows
    if kv is not None and kv_exact and _linear_ok(2 * n):
        try:
            n2 = 2 * n
            lower.check_n(n2)
            f2 = families(node, n2)
            if f2 is not None:
                kv2 = _kv_cache(f2)
            else:
                b2 = lower.bind(node, n2)
                kv2 = _sampled_kv(b2, n2, max(1.0, b2.est), 0)
                grows_exact = False
            grows = bool(kv2 > kv)
        except SpattnError:
            grows, grows_exact = None, False

    # receptive field
    rf, rf_exact = None, True
    if n <= BRUTE_N:
        rf = _rf_brute(node, n)
    elif f is not None and _linear_ok(n):
        rf = _rf_structural(f)
        if rf is None and n <= 2 * BRUTE_N and rowfig["nnz"] * n <= BRUTE_WORK:
            rf = _rf_brute(node, n)
        if rf is None and n <= 65536:
            rf = _rf_bitset(node, n, rowfig["nnz"])
    if rf is None and not exact_rows and _global_saturates(node, n) \
            and rowfig["min"] < n:
        # a global token: its row is full and every row reads it, so two hops reach all
        rf = {"reachable": 1.0, "hops_to_full": 2,
              "coverage": {1: (rowfig["nnz"] + n - rowfig["diag"]) / (float(n) * n), 2: 1.0}}
        rf_exact = False
        notes.append("receptive field: reachable and hops_to_full are exact (global tokens); "
                     "coverage at depth 1 is estimated from sampled rows")
    if rf is None:
        rf_exact = False
        small = min(n, ESTIMATE_N)
        try:
            rf = _rf_brute(node, small)
        except SpattnError as e:
            raise LoweringError(f"cannot estimate the receptive field at n = {small}: {e}") \
                from None
        rf["measured_at"] = small
        notes.append(f"receptive field measured at n = {small} (an estimate for n = {n:,})")
    rf["exact"] = rf_exact

    exact = {"nnz": exact_rows, "density": exact_rows, "row_degree": exact_rows,
             "empty_rows": exact_rows, "causal": exact_rows or bool(rowfig.get("causal_exact")),
             "symmetric": sym_exact, "blocks": exact_rows,
             "kv_cache": (exact_rows and kv_exact) if kv is not None else True,
             "kv_cache_grows": bool(grows_exact) if kv is not None else True,
             "receptive_field": rf_exact}
    return Stats(
        pattern=str(p), seq_len=n, nnz=int(rowfig["nnz"]),
        density=rowfig["nnz"] / (float(n) * n),
        row_degree={"min": int(rowfig["min"]), "mean": float(rowfig["mean"]),
                    "max": int(rowfig["max"])},
        empty_rows=int(rowfig["empty"]), causal=bool(rowfig["causal"]), symmetric=bool(sym),
        blocks=blocks, kv_cache=kv, kv_cache_grows=grows, receptive_field=rf, exact=exact,
        method=method, notes=tuple(notes))
