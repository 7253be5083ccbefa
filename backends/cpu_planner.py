"""The CPU backend's planner: an exact partition of a pattern into dense tiles.

In: a canonical pattern node, ``n`` keys and ``m`` queries (the last m positions). Out: a
:class:`~.cpu_plan.Plan`, a list of *components*; each component is a set of *tiles*, a tile
being a few query rows and the sorted union of the keys those rows attend in that component, with an
additive mask (0 / -inf) that keeps exactly the component's pairs. Every (query, key) pair of
the pattern lies in exactly one tile of exactly one component, and a query row appears in at
most one tile per component, so each component yields a softmax partial ``(out, lse)`` per row
and the components combine by a log-sum-exp merge: a set union, never a double count.

How: the pattern is lowered to its exact per-row column intervals (:func:`spattn.lower.
row_intervals`) for the query rows, and the intervals are split by structure that the planner
measures, not guesses:

* *heavy rows* (degree far above the typical row: ``global`` rows) form their own component;
* the *band*: the run of diagonals ``j - i`` around 0 that at least half the rows cover
  (``local``, ``window``, and the dense part of ``block``/``fixed``/``streaming``);
* *periodic* pairs: single keys on diagonals that are multiples of a period ``s`` taken from
  the pattern's ``stride``/``dilated`` arguments; ordering the query rows by ``(i mod s, i)``
  turns a stride into dense tiles (a strided component is dense attention over a permuted
  sequence);
* the *rest* (global columns, random keys, summary columns, ...).

Each component is tiled under several row orders (natural order, by residue mod ``s``, one row
per tile) and tile heights (32, 64, 128 rows), and the cheapest by a small cost model (score
area, key gathers, per-tile overhead) wins; the whole pattern as one component is a candidate
too. A tile's key set is the union of its rows' intervals, computed with a bitmap over
(tiles x n) cells or by sorting the intervals, whichever is cheaper; a pattern's plan therefore
costs time and memory proportional to its intervals plus the tiles' area, never n x n.

Tiles of a component are bucketed by padded key count (about 12 % padding at most); each
bucket runs as one batched fused attention call with a 0 / -inf mask written straight as
float32 bit patterns from each row's slot intervals. Runs of tiles whose query rows and keys
are arithmetic progressions (band, residue-class tiles) are read through strided views
(:class:`Strides`) instead of gathered.
"""

from __future__ import annotations

import numpy as np
import torch

from spattn import guard, ir, packed
from spattn.bind import bind
from spattn.checks import check_n
from spattn.documents import Documents
from spattn.lower import row_intervals

from .cpu_plan import Component, Group, Plan, Segment, Strides

#: Cost model constants (nanoseconds-ish per unit; only ratios matter).
_AREA_NS_PER_D = 1.0 / 12.0  # one score element, per unit of head dim (fwd+bwd-ish)
_GATHER_NS_PER_D = 1.0  # one gathered key row (k and v), per unit of head dim
_TILE_NS = 1500.0  # fixed cost of a tile (bookkeeping, short loops in the fused kernel)
_COMPONENT_NS_PER_ROW = 40.0  # merge cost per query row of each extra component
_BITMAP_CELLS = 1 << 24  # tiles x n cells per bitmap chunk (16 MiB of bool)
_TILE_HEIGHTS = (32, 64, 128)
_EXACT_ROWS = 64  # single-row tiles up to this many get exact key counts


def _bucket(L: np.ndarray) -> np.ndarray:
    """Pad key counts to at most ~12.5 % more, so that tiles fall into few shape buckets."""
    L = np.maximum(L, 1)
    step = np.maximum(8, 2 ** np.maximum(0, np.floor(np.log2(L)).astype(np.int64) - 3))
    return ((L + step - 1) // step) * step


def _periods(node: ir.Node, n: int) -> list[int]:
    """Steps of the pattern's key progressions (``stride``, ``dilated``) at ``n``
    (2 <= s < n), from the primitive table."""
    out: set[int] = set()
    for p in bind(node, n).prims():
        s = p.spec.progression_step(p.args)
        if s is not None and 2 <= s < n:
            out.add(int(s))
    return sorted(out)


class _Iv:
    """Column intervals ``[lo, hi)`` of query rows ``r`` (0..m-1), disjoint within a row."""

    __slots__ = ("r", "lo", "hi")

    def __init__(self, r: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        self.r, self.lo, self.hi = r, lo, hi

    def sub(self, keep: np.ndarray) -> _Iv:
        return _Iv(self.r[keep], self.lo[keep], self.hi[keep])

    def __len__(self) -> int:
        return len(self.r)

    @property
    def nnz(self) -> int:
        return int((self.hi - self.lo).sum())

    def rows(self, m: int) -> np.ndarray:
        return np.flatnonzero(np.bincount(self.r, minlength=m))

    def degrees(self, m: int) -> np.ndarray:
        return np.bincount(self.r, weights=self.hi - self.lo, minlength=m).astype(np.int64)


def _cat(*ivs: _Iv) -> _Iv:
    ivs = tuple(x for x in ivs if len(x))
    if not ivs:
        return _Iv(_EMPTY, _EMPTY, _EMPTY)
    if len(ivs) == 1:
        return ivs[0]
    return _Iv(*(np.concatenate([getattr(x, a) for x in ivs]) for a in ("r", "lo", "hi")))


_EMPTY = np.zeros(0, np.int64)


def _tiles(iv: _Iv, order: str, s: int, bq: int, off: int, n: int, m: int):
    """Tile and row slot of every interval, the query rows in tile order, the tile count."""
    rows = iv.rows(m)
    if order == "mod":
        pos = rows + off
        rows = rows[np.argsort((pos % s) * n + pos, kind="stable")]
    where = np.empty(m, np.int64)
    where[rows] = np.arange(len(rows))
    pos = where[iv.r]
    return pos // bq, pos % bq, rows, (len(rows) + bq - 1) // bq


def _coverage(tile: np.ndarray, iv: _Iv, T: int, n: int, multiple: int = 1):
    """Yield ``(a, b, idx, cover)``: tiles a:b, the intervals in them and the (b-a, n) bool
    coverage (which keys the tile's rows attend), in chunks of bounded size."""
    order = None
    if len(tile) > 1 and not (tile[1:] >= tile[:-1]).all():
        order = np.argsort(tile, kind="stable")
        tile = tile[order]
    per = max(multiple, (_BITMAP_CELLS // (n + 1)) // multiple * multiple)
    bounds = np.searchsorted(tile, np.arange(0, T + per, per))
    for k, a in enumerate(range(0, T, per)):
        b = min(T, a + per)
        i0, i1 = int(bounds[k]), int(bounds[k + 1])
        idx = np.arange(i0, i1) if order is None else order[i0:i1]
        base = (tile[i0:i1] - a) * (n + 1)
        size = (b - a) * (n + 1)
        diff = (np.bincount(base + iv.lo[idx], minlength=size)
                - np.bincount(base + iv.hi[idx], minlength=size))
        cover = np.cumsum(diff.reshape(b - a, n + 1)[:, :n], axis=1) > 0
        yield a, b, idx, cover


def _merge(tile: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int):
    """Union of each tile's intervals by sorting: ``(order, group, mt, mlo, mhi)`` where
    ``order`` sorts the intervals by (tile, lo), ``group[k]`` is the merged interval holding
    sorted interval k, and ``mt, mlo, mhi`` are the merged intervals (sorted)."""
    key = tile * (n + 1) + lo
    order = np.argsort(key, kind="stable")
    t, lo, hi = tile[order], lo[order], hi[order]
    base = t * (n + 1)
    cm = np.maximum.accumulate(base + hi) - base
    start = np.ones(len(t), bool)
    if len(t) > 1:
        start[1:] = (t[1:] != t[:-1]) | (lo[1:] > cm[:-1])
    idx = np.flatnonzero(start)
    group = np.cumsum(start) - 1
    return order, group, t[idx], lo[idx], np.maximum.reduceat(hi, idx) if len(idx) else hi[:0]


def _use_bitmap(T: int, n: int, intervals: int) -> bool:
    """Bitmap unions cost ~T*n cell operations, sorting ~log(I) per interval: pick the
    cheaper."""
    return T * (n + 1) <= 8 * max(intervals, 1)


def _cost(L: np.ndarray, bq: int, D: int) -> float:
    Lp = _bucket(L)
    return float(Lp.sum() * bq * D * _AREA_NS_PER_D + Lp.sum() * D * _GATHER_NS_PER_D
                 + len(L) * _TILE_NS)


def _choose(iv: _Iv, orders: list[tuple[str, int]], off: int, n: int, m: int, D: int,
            rows_order: bool = True):
    """The cheapest ``(order, s, bq)`` for a component, and its cost."""
    if len(iv) == 0:
        return ("natural", 1, 1), 0.0
    best = (np.inf, ("natural", 1, _TILE_HEIGHTS[0]))
    if rows_order:
        deg = iv.degrees(m)
        best = (_cost(deg[deg > 0], 1, D), ("rows", 1, 1))
    base = _TILE_HEIGHTS[0]
    for order, s in orders:
        tile, _, _, T = _tiles(iv, order, s, base, off, n, m)
        if not _use_bitmap(T, n, len(iv)):
            t, lo, hi, prev = tile, iv.lo, iv.hi, base
            for h in _TILE_HEIGHTS:
                t, prev = t // (h // prev), h
                _, _, t, lo, hi = _merge(t, lo, hi, n)
                L = np.bincount(t, weights=hi - lo).astype(np.int64)
                c = _cost(L[L > 0], h, D)
                if c < best[0]:
                    best = (c, (order, s, h))
            continue
        counts = {h: np.zeros((T * base + h - 1) // h, np.int64) for h in _TILE_HEIGHTS}
        f = _TILE_HEIGHTS[-1] // base
        for a, _b, _, cover in _coverage(tile, iv, T, n, multiple=f):
            for h in _TILE_HEIGHTS:
                c = cover
                for _ in range(int(np.log2(h // base))):
                    if len(c) % 2:
                        c = np.concatenate([c, np.zeros((1, n), bool)])
                    c = c[0::2] | c[1::2]
                counts[h][a * base // h:a * base // h + len(c)] = c.sum(1)
        for h in _TILE_HEIGHTS:
            c = _cost(counts[h][counts[h] > 0], h, D)
            if c < best[0]:
                best = (c, (order, s, h))
    return best[1], best[0]


def _merge_buckets(Lp: np.ndarray, bq: int) -> np.ndarray:
    """Fold sparsely used shape buckets into the next larger one (at most twice as long) when
    that costs under 5 % more area: fewer, larger batched calls."""
    if len(Lp) == 0:
        return Lp
    vals, counts = np.unique(Lp, return_counts=True)
    budget = 0.05 * float((Lp * bq).sum())
    vals, counts = list(vals), list(counts)
    i = 0
    while i < len(vals) - 1:
        extra = counts[i] * bq * (vals[i + 1] - vals[i])
        if vals[i + 1] <= 2 * vals[i] and extra <= budget and counts[i] * 8 <= counts[i + 1]:
            budget -= extra
            Lp = np.where(Lp == vals[i], vals[i + 1], Lp)
            counts[i + 1] += counts[i]
            del vals[i], counts[i]
        else:
            i += 1
    return Lp


_MIN_RUN = 2


def _segments(kid: np.ndarray, qs: np.ndarray, Lt: np.ndarray, m: int, n: int):
    """Order tiles so that runs of arithmetic tiles (band and residue-class tiles) come first
    and can be read through strided views; returns (permutation, segments)."""
    Tg, Lv = kid.shape
    bq = qs.shape[1]
    qa, ka = qs[:, 0], kid[:, 0]
    qstep = qs[:, 1] - qa if bq > 1 else np.ones(Tg, np.int64)
    kstep = np.where(Lt > 1, kid[:, min(1, Lv - 1)] - ka, 1)
    ok = (qs < m).all(1) & (qstep >= 1) & (kstep >= 1)
    ok &= (qs == qa[:, None] + qstep[:, None] * np.arange(bq)).all(1)
    expect = ka[:, None] + kstep[:, None] * np.arange(Lv)
    ok &= ((kid == expect) | (np.arange(Lv) >= Lt[:, None])).all(1)
    ok &= expect[:, -1] < n
    runs, t = [], 0
    while t < Tg:
        if not ok[t]:
            t += 1
            continue
        u = t + 1
        if (u < Tg and ok[u] and qstep[u] == qstep[t] and kstep[u] == kstep[t]
                and qa[u] > qa[t] and ka[u] >= ka[t]):
            dq, dk = qa[u] - qa[t], ka[u] - ka[t]
            while (u < Tg and ok[u] and qstep[u] == qstep[t] and kstep[u] == kstep[t]
                   and qa[u] - qa[u - 1] == dq and ka[u] - ka[u - 1] == dk):
                u += 1
        else:
            dq = dk = 0
        if u - t >= _MIN_RUN or bq * Lv >= 4096:
            runs.append((t, u, Strides(int(qa[t]), int(dq), int(qstep[t]), int(ka[t]),
                                       int(dk), int(kstep[t]))))
        t = u
    used = np.zeros(Tg, bool)
    perm, segments, pos = [], [], 0
    for a, b, st in runs:
        perm.append(np.arange(a, b))
        used[a:b] = True
        segments.append(Segment(pos, pos + b - a, st))
        pos += b - a
    rest = np.flatnonzero(~used)
    if len(rest):
        perm.append(rest)
        segments.append(Segment(pos, Tg, None))
    return np.concatenate(perm) if perm else np.arange(Tg), segments


def _build(iv: _Iv, kind: str, how: tuple, off: int, n: int, m: int,
           bitmap: bool | None = None) -> Component:
    order, s, bq = how
    if order == "rows":
        o = np.argsort(iv.r * (n + 1) + iv.lo, kind="stable")
        iv = iv.sub(o)
        rows = iv.rows(m)
        T = len(rows)
        where = np.empty(m, np.int64)
        where[rows] = np.arange(T)
        tile = where[iv.r]
        islot = np.zeros(len(iv), np.int64)
        lens = iv.hi - iv.lo
        L = np.bincount(tile, weights=lens, minlength=T).astype(np.int64)
        cum = np.cumsum(lens) - lens
        tstart = np.cumsum(L) - L
        kstart = cum - tstart[tile]  # key slot of each interval's first column
        total = int(lens.sum())
        kcol = np.ones(total, np.int64)
        if total:
            kcol[cum[0]] = iv.lo[0]
            kcol[cum[1:]] = iv.lo[1:] - iv.hi[:-1] + 1
            np.cumsum(kcol, out=kcol)
    else:
        tile, islot, rows, T = _tiles(iv, order, s, bq, off, n, m)
    if bitmap is None:
        bitmap = _use_bitmap(T, n, len(iv))
    if order != "rows" and not bitmap:
        o, group, mt, mlo, mhi = _merge(tile, iv.lo, iv.hi, n)
        mlen = mhi - mlo
        L = np.bincount(mt, weights=mlen, minlength=T).astype(np.int64)
        mcum = np.cumsum(mlen) - mlen
        tstart = np.cumsum(L) - L
        mslot = mcum - tstart[mt]  # key slot of each merged interval's first column
        kstart = np.empty(len(iv), np.int64)
        kstart[o] = mslot[group] + (iv.lo[o] - mlo[group])
        total = int(mlen.sum())
        kcol = np.ones(total, np.int64)
        if total:
            kcol[mcum[0]] = mlo[0]
            kcol[mcum[1:]] = mlo[1:] - mhi[:-1] + 1
            np.cumsum(kcol, out=kcol)
    elif order != "rows":
        L = np.zeros(T, np.int64)
        kstart = np.zeros(len(iv), np.int64)
        kc_parts = []
        for a, b, idx, cover in _coverage(tile, iv, T, n):
            L[a:b] = cover.sum(1)
            rank = np.cumsum(cover, axis=1, dtype=np.int32)
            kstart[idx] = rank[tile[idx] - a, iv.lo[idx]] - 1
            _, c = np.nonzero(cover)
            kc_parts.append(c)
        kcol = np.concatenate(kc_parts) if kc_parts else _EMPTY
    if order == "rows" and T <= _EXACT_ROWS:
        # a few long single rows (global rows): their own exact shapes, so that each reads
        # its keys through a strided view instead of gathering thousands of padded slots
        Lp = np.maximum(L, 1)
    else:
        Lp = _merge_buckets(_bucket(L), bq)
    area = int((Lp * bq).sum())
    guard.check(area * 12 + len(kcol) * 16, f"a CPU attention plan with {area:,} score "
                "slots", "use a sparser pattern or a smaller n")
    tstart = np.cumsum(L) - L
    rows_padded = np.full(T * bq, m, np.int64)
    rows_padded[: len(rows)] = rows
    lens = iv.hi - iv.lo
    # tiles and intervals by bucket, once (keys of a tile are contiguous in kcol, in order)
    vals = np.unique(Lp)
    tgrp = np.searchsorted(vals, Lp)
    igrp = tgrp[tile]
    iorder = np.argsort(igrp, kind="stable")
    ibounds = np.searchsorted(igrp[iorder], np.arange(len(vals) + 1))
    groups = []
    for gi, Lv in enumerate(vals):
        tiles = np.flatnonzero(tgrp == gi)
        Tg, Lv = len(tiles), int(Lv)
        Lt = L[tiles]
        slot = np.arange(Lv)
        at = np.minimum(tstart[tiles][:, None] + slot, max(len(kcol) - 1, 0))
        kid = np.where(slot < Lt[:, None], kcol[at] if len(kcol) else 0, 0)
        qs = rows_padded.reshape(T, bq)[tiles]
        perm, segments = _segments(kid, qs, Lt, m, n)
        kid, qs = kid[perm], qs[perm].reshape(-1)
        qg = np.where(qs == m, 0, qs)
        isel = iorder[ibounds[gi]:ibounds[gi + 1]]
        glen = lens[isel]
        if int(glen.sum()) == Tg * bq * Lv:  # intervals are disjoint: every slot is live
            bias = None
        else:
            # the live slots of each row (tiles in run order), then the 0 / -inf mask
            local = np.full(T, -1, np.int64)
            local[tiles[perm]] = np.arange(Tg)
            rk = local[tile[isel]] * bq + islot[isel]  # row of each interval in the group
            st = kstart[isel]
            R = Tg * bq
            lo = np.full(R, Lv, np.int64)
            hi = np.zeros(R, np.int64)
            np.minimum.at(lo, rk, st)
            np.maximum.at(hi, rk, st + glen)
            tot = np.bincount(rk, weights=glen, minlength=R)
            if (tot == np.maximum(hi - lo, 0)).all():
                # every row's slots are one run [lo, hi): slot - lo (unsigned) < hi - lo
                b = np.empty((R, Lv), np.uint32)
                np.subtract(np.arange(Lv, dtype=np.int64).astype(np.uint32),
                            lo.astype(np.uint32)[:, None], out=b)
                w = np.maximum(hi - lo, 0).astype(np.uint32)[:, None]
                np.greater_equal(b, w, out=b, casting="unsafe")  # 1: dead, 0: live
                b *= np.uint32(0xFF800000)  # dead -> bits of -inf, live -> 0.0
            else:
                # live slots from interval starts/ends (distinct per row: disjoint
                # intervals) in one flat running sum: a row's starts and ends cancel within it
                cell = rk * Lv + st
                d = np.zeros(R * Lv + 1, np.int8)
                d[cell] = 1
                d[cell + glen] -= 1
                live = np.cumsum(d, dtype=np.int8)[:-1]
                # 0 / -inf by bit pattern: live 1 -> 0x00000000, dead 0 -> 0xFF800000
                b = live.view(np.uint8).astype(np.uint32)
                b -= 1
                b &= np.uint32(0xFF800000)
            b = b.view(np.float32)
            bias = torch.from_numpy(b.reshape(Tg, 1, bq, Lv))  # numpy: no thread pool here
        groups.append(Group(Tg, bq, Lv, torch.from_numpy(qg), torch.from_numpy(qs),
                            torch.from_numpy(kid.reshape(-1)), bias, segments))
    name = {"natural": "natural", "mod": f"mod {s}", "rows": "rows"}[order]
    return Component(kind, f"{name}, {bq} rows/tile", groups, iv.nnz, area)


def _band(iv: _Iv, off: int, n: int, m: int) -> tuple[int, int] | None:
    """The run of diagonals ``j - i`` containing 0 that at least half the rows cover."""
    if len(iv) == 0:
        return None
    i = iv.r + off
    cnt = np.cumsum(np.bincount(iv.lo - i + n, minlength=2 * n + 1)
                    - np.bincount(iv.hi - i + n, minlength=2 * n + 1))
    pos = iv.rows(m) + off
    offs = np.arange(-n, n + 1)
    elig = np.searchsorted(pos, n - offs) - np.searchsorted(pos, -offs)
    ok = cnt * 2 >= np.maximum(elig, 1)
    z = n
    if not ok[z]:
        return None
    a = z
    while a > 0 and ok[a - 1]:
        a -= 1
    b = z
    while b + 1 < len(ok) and ok[b + 1]:
        b += 1
    return a - n, b - n


def _split_band(iv: _Iv, band: tuple[int, int], off: int) -> tuple[_Iv, _Iv]:
    i = iv.r + off
    blo, bhi = i + band[0], i + band[1] + 1
    inner = _Iv(iv.r, np.maximum(iv.lo, blo), np.minimum(iv.hi, bhi))
    left = _Iv(iv.r, iv.lo, np.minimum(iv.hi, blo))
    right = _Iv(iv.r, np.maximum(iv.lo, bhi), iv.hi)
    parts = [x.sub(x.lo < x.hi) for x in (inner, left, right)]
    return parts[0], _cat(parts[1], parts[2])


def build_plan(node: ir.Node, n: int, m: int, D: int = 64, *, tiling: tuple | None = None,
               bitmap: bool | None = None, docs: Documents | None = None,
               skip: frozenset = frozenset()) -> Plan:
    """Plan attention for pattern ``node`` with ``n`` keys and the last ``m`` rows as queries.
    With ``docs`` (m = n = ``docs.total``) the pattern is planned over the packed sequence:
    the packed intervals are tiled as one pattern, so tiles run across document boundaries
    and short documents share batched calls; documents of the lengths in ``skip`` are left
    out (their rows are empty). ``tiling`` = (order, s, rows per tile) and
    ``bitmap`` (union tile keys by bitmap or by sorting) override the cost model's choices
    for every component (for tests)."""
    import time

    t0 = time.perf_counter()
    n = check_n(n)
    off = n - m
    hint = "use a sparser pattern, a smaller n or fewer queries"
    if docs is not None:
        allv = _Iv(*packed.row_intervals(node, docs, skip))
        periods = _periods(node, packed.main_length(docs))
    else:
        est = max(1.0, bind(node, n).est)  # before lowering: the query rows' intervals
        guard.check(m * est * 96.0, f"planning sparse attention at n = {n:,} ({m:,} query "
                    f"rows × ~{est:,.0f} intervals)", hint)
        chunks = [(row - off, lo, hi) for _, _, row, lo, hi in row_intervals(node, n, off, n)]
        allv = _Iv(*(np.concatenate([c[k] for c in chunks]).astype(np.int64)
                     for k in range(3)))
        periods = _periods(node, n)
    allv = allv.sub(allv.lo < allv.hi)
    deg = allv.degrees(m)
    nnz = int(deg.sum())
    empty = torch.from_numpy(deg == 0)
    if nnz == 0:
        return Plan(n, m, 0, [], empty, time.perf_counter() - t0)
    # before tiling: key slots (int64), masks (float32) and planning work arrays per pair
    guard.check(nnz * 32.0, f"a CPU attention plan of {nnz:,} pairs at n = {n:,}", hint)
    nat = [("natural", 1)]
    mods = [("mod", s) for s in periods]
    comps: list[tuple[str, _Iv, list, bool]] = []
    # heavy rows: far above the typical degree (global rows)
    typical = float(np.median(deg[deg > 0]))
    heavy_rows = deg > max(8.0 * typical, 512.0)
    if heavy_rows.any() and not heavy_rows[deg > 0].all():
        hv = heavy_rows[allv.r]
        comps.append(("heavy", allv.sub(hv), nat, True))
        light = allv.sub(~hv)
    else:
        light = allv
    # candidate decompositions of the light rows
    cands: list[list[tuple[str, _Iv, list, bool]]] = [[("all", light, nat + mods, False)]]
    band = _band(light, off, n, m)
    if band is not None:
        bp, rest = _split_band(light, band, off)
        if len(rest):
            cands.append([("band", bp, nat, False), ("rest", rest, nat + mods, True)])
            i = rest.r + off
            single = rest.hi - rest.lo == 1
            for s in periods:
                per = single & ((rest.lo - i) % s == 0)
                if per.any() and not per.all():
                    cands.append([("band", bp, nat, False),
                                  (f"periodic({s})", rest.sub(per), nat + mods, True),
                                  ("rest", rest.sub(~per), nat + mods, True)])
    memo: dict[int, tuple] = {}

    def choose(c):
        if tiling is not None:
            return tiling, 1.0
        k = id(c[1])
        if k not in memo:
            memo[k] = _choose(c[1], c[2], off, n, m, D, c[3])
        return memo[k]

    best = None
    for cand in cands:
        cost = sum(choose(c)[1] + _COMPONENT_NS_PER_ROW * m for c in cand)
        if best is None or cost < best[0]:
            best = (cost, cand)
    chosen = comps + best[1]
    components = [_build(c[1], c[0], choose(c)[0], off, n, m, bitmap) for c in chosen
                  if len(c[1])]
    return Plan(n, m, nnz, components, empty, time.perf_counter() - t0)
