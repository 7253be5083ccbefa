"""Row intervals in normal form, and the set algebra on them.

In: per-row column intervals as three int64 arrays ``(row, lo, hi)``. Out: the same, in
*normal form* — sorted by ``(row, lo)``, disjoint and not touching (``[lo, hi)`` half-open) —
after union, intersection, difference or complement, and a few constructors that build normal
form directly (arithmetic progressions of single keys, runs clipped to a window, a progression
united with one interval).

How: ``|``, ``&``, ``-`` and ``~`` are one sweep over the intervals' end points, sorted by
``row * (n + 1) + column``; each operand is already a sorted run, so the sort is a merge. Time
and memory are proportional to the number of intervals; nothing here knows any primitive.
"""

from __future__ import annotations

import numpy as np

EMPTY = np.zeros(0, np.int64)


def empty():
    """An empty ``(row, lo, hi)``."""
    return EMPTY, EMPTY, EMPTY


def merge_sorted(row, lo, hi):
    """Merge overlapping or touching intervals; input sorted by (row, lo)."""
    if len(lo) <= 1:
        return row, lo, hi
    off = row * (int(hi.max()) + 1)
    cm = np.maximum.accumulate(off + hi) - off
    start = np.empty(len(lo), bool)
    start[0] = True
    np.logical_or(row[1:] != row[:-1], lo[1:] > cm[:-1], out=start[1:])
    if start.all():
        return row, lo, hi
    idx = np.flatnonzero(start)
    return row[idx], lo[idx], np.maximum.reduceat(hi, idx)


def normalize(row, lo, hi, n: int):
    """Sort by (row, lo), drop empty intervals and merge overlapping or touching ones."""
    keep = lo < hi
    if not keep.all():
        row, lo, hi = row[keep], lo[keep], hi[keep]
    if len(lo) > 1:
        order = np.argsort(row * (n + 1) + lo, kind="stable")
        row, lo, hi = row[order], lo[order], hi[order]
    return merge_sorted(row, lo, hi)


def merge_runs(keys, deltas):
    """Merge sorted key runs (with their deltas) into one sorted run: the small runs are
    placed into the largest by binary search, which beats a sort when one run dominates."""
    order = sorted(range(len(keys)), key=lambda t: -len(keys[t]))
    key, delta = keys[order[0]], deltas[order[0]]
    for t in order[1:]:
        k2, d2 = keys[t], deltas[t]
        pos = np.searchsorted(key, k2) + np.arange(len(k2))
        total = len(key) + len(k2)
        other = np.ones(total, bool)
        other[pos] = False
        nk = np.empty(total, np.int64)
        nd = np.empty(total, np.int64)
        nk[pos], nd[pos] = k2, d2
        nk[other], nd[other] = key, delta
        key, delta = nk, nd
    return key, delta


def union(parts, n: int):
    """Union of normal-form interval sets: merge the runs by start, then coalesce."""
    parts = [x for x in parts if len(x[1])]
    if not parts:
        return empty()
    if len(parts) == 1:
        return parts[0]
    keys = [row * (n + 1) + lo for row, lo, _ in parts]
    lens = [hi - lo for _, lo, hi in parts]
    key, ln = merge_runs(keys, lens)
    hk = key + ln  # row*(n+1) + hi: comparable across rows
    cm = np.maximum.accumulate(hk)
    start = np.empty(len(key), bool)
    start[0] = True
    np.greater(key[1:], cm[:-1], out=start[1:])
    idx = np.flatnonzero(start)
    row, lo = np.divmod(key[idx], n + 1)
    hi = np.maximum.reduceat(hk, idx) - row * (n + 1)
    return row, lo, hi


def sweep(parts, weights, keep, n: int):
    """Combine normal-form interval sets. Each part contributes ``+w`` on ``[lo, hi)``; the
    result keeps the columns whose summed weight satisfies ``keep(state)``."""
    parts = [(p, w) for p, w in zip(parts, weights) if len(p[1])]
    if not parts:
        return empty()
    keys, deltas = [], []
    for (row, lo, hi), w in parts:
        m = len(lo)
        pos = np.empty(2 * m, np.int64)
        pos[0::2], pos[1::2] = lo, hi
        keys.append(np.repeat(row, 2) * (n + 1) + pos)
        d = np.empty(2 * m, np.int64)
        d[0::2], d[1::2] = w, -w
        deltas.append(d)
    key, delta = merge_runs(keys, deltas)
    first = np.empty(len(key), bool)
    first[0] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    gidx = np.flatnonzero(first)
    ukey = key[gidx]
    state = np.cumsum(np.add.reduceat(delta, gidx))
    urow, upos = np.divmod(ukey, n + 1)
    kept = np.zeros(len(ukey), bool)
    kept[:-1] = keep(state[:-1]) & (urow[1:] == urow[:-1])
    if not kept.any():
        return empty()
    prev = np.zeros(len(kept), bool)
    prev[1:] = kept[:-1]
    nxt = np.zeros(len(kept), bool)
    nxt[:-1] = kept[1:]
    s = np.flatnonzero(kept & ~prev)
    e = np.flatnonzero(kept & ~nxt) + 1
    return urow[s], upos[s], upos[e]


def per_row(i, lo, hi):
    """Drop empty intervals (``lo >= hi``)."""
    keep = lo < hi
    if keep.all():
        return i, lo, hi
    return i[keep], lo[keep], hi[keep]


def progression_points(i, first, count, step):
    """Rows ``i`` each with ``count`` singletons ``first + step*k``."""
    count = np.maximum(count, 0)
    total = int(count.sum())
    if total == 0:
        return empty()
    offs = np.cumsum(count) - count
    k = np.arange(total, dtype=np.int64) - np.repeat(offs, count)
    lo = np.repeat(first, count) + step * k
    return np.repeat(i, count), lo, lo + 1


def runs_in_window(i, starts, ends, clo, chi):
    """For each row, the runs ``[starts, ends)`` (sorted, disjoint) clipped to the row's
    window ``[clo, chi)``."""
    if len(starts) == 0 or len(i) == 0:
        return empty()
    a = np.searchsorted(ends, clo, side="right")
    b = np.searchsorted(starts, chi, side="left")
    cnt = np.maximum(b - a, 0)
    total = int(cnt.sum())
    if total == 0:
        return empty()
    offs = np.cumsum(cnt) - cnt
    run = np.arange(total, dtype=np.int64) - np.repeat(offs - a, cnt)
    row = np.repeat(i, cnt)
    lo = np.maximum(starts[run], np.repeat(clo, cnt))
    hi = np.minimum(ends[run], np.repeat(chi, cnt))
    return per_row(row, lo, hi)


def union_progression_interval(i, first, count, step, a, b):
    """Normal form of (progression ∪ interval [a, b)) per row, built directly: the points
    before the interval, the interval (grown by a touching point on either side), the points
    after. No sort, no merge."""
    has = a < b
    # points strictly below a / below b
    ka = np.where(has, np.clip(-((first - a) // step), 0, count), count)
    kb = np.where(has, np.clip(-((first - b) // step), 0, count), count)
    # a point at a - 1 or at b touches the interval: absorb it
    t_lo = has & (ka > 0) & (first + (ka - 1) * step == a - 1)
    a = np.where(t_lo, a - 1, a)
    ka = ka - t_lo
    t_hi = has & (kb < count) & (first + kb * step == b)
    b = np.where(t_hi, b + 1, b)
    kb = kb + t_hi
    hv = has.astype(np.int64)
    per = ka + hv + (count - kb)
    total = int(per.sum())
    if total == 0:
        return empty()
    offs = np.cumsum(per) - per
    # lo is a running sum of increments: `step` between progression points, fixed up at row
    # starts, at the interval and just after it (O(rows) scatters, O(total) passes: 3)
    inc = np.full(total, step, np.int64)
    nz = per > 0
    after0 = first + kb * step  # first point after the interval
    v0 = np.where(ka > 0, first, np.where(has, a, after0))
    vlast = np.where(count > kb, first + (count - 1) * step,
                     np.where(has, a, first + (ka - 1) * step))
    o, v0n, vln = offs[nz], v0[nz], vlast[nz]
    inc[o] = v0n - np.concatenate([[0], vln[:-1]])
    iv = has & (ka > 0)
    inc[(offs + ka)[iv]] = (a - (first + (ka - 1) * step))[iv]
    nxt = has & (count > kb)
    inc[(offs + ka + 1)[nxt]] = (after0 - a)[nxt]
    lo = np.cumsum(inc, out=inc)
    hi = lo + 1
    hi[(offs + ka)[has]] = b[has]
    return np.repeat(i, per), lo, hi


def expand_into(out: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Write the columns of consecutive intervals into ``out`` (len = total length)."""
    if len(lo) == 0:
        return
    if len(lo) == len(out):  # all singletons
        out[:] = lo
        return
    lens = hi - lo
    starts = np.cumsum(lens)
    starts -= lens
    d = np.subtract(lo[1:], hi[:-1])  # in place from here: these arrays are nnz-sized
    d += 1
    out.fill(1)
    out[starts[0]] = lo[0]
    out[starts[1:]] = d
    np.cumsum(out, dtype=out.dtype, out=out)
