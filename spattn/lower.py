"""Exact lowering of pattern IR to sparse structures (CSR, counts, dense for small n).

In: a canonical :class:`~spattn.ir.Node` and a sequence length ``n``. Out: row intervals,
``scipy.sparse.csr_array`` masks, exact ``nnz`` and (small n only) dense masks.

How: every row of a pattern is a sorted list of disjoint, non-touching column intervals
``[lo, hi)`` (the *normal form*). Primitives generate the normal form for a range of rows
directly (``stride`` and ``dilated`` as length-1 intervals); ``|``, ``&``, ``-`` and ``~`` are
one sweep over the intervals' end points (sorted by ``row * (n + 1) + column``; each operand is
already a sorted run, so the sort is a merge) that keeps the segments whose coverage satisfies
the operator. Rows are processed in chunks sized from an estimate of intervals per row, and the
CSR indices are written straight from the intervals by a cumulative sum, so time and memory are
proportional to the number of intervals plus the number of pairs: there is no n×n intermediate
and no Python loop over rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from . import guard, ir
from .errors import LoweringError, ResourceError
from .random_keys import row_keys

MAX_DENSE_N = 16_384  #: largest n that ``to_dense`` accepts (a 256 MiB boolean matrix)
MAX_N = 2**31 - 1  #: largest sequence length that can be lowered
CHUNK_INTERVALS = 1 << 21  #: target number of intervals per chunk of rows

_EMPTY = np.zeros(0, np.int64)


class Bound:
    """A pattern node with its arguments evaluated at ``n`` and an estimate of the number of
    intervals per row (to size chunks)."""

    __slots__ = ("kind", "name", "args", "items", "est")

    def __init__(self, kind, name=None, args=(), items=(), est=1.0):
        self.kind, self.name, self.args, self.items, self.est = kind, name, args, items, est


def check_n(n) -> int:
    """Validate a sequence length (an int, 1 <= n <= MAX_N) and return it as int."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise LoweringError(f"sequence length n must be an integer, got {type(n).__name__} "
                            f"{n!r:.40}")
    n = int(n)
    if n < 1:
        raise LoweringError(f"sequence length n must be >= 1, got {n}")
    if n > MAX_N:
        raise ResourceError(f"sequence length n = {n:,} is over the largest supported "
                            f"({MAX_N:,})")
    return n


def bind(node: ir.Node, n: int) -> Bound:
    """Evaluate every argument at ``n`` (raising range errors before any work)."""
    if isinstance(node, ir.Prim):
        args = ir.prim_args(node, n)
        return Bound("prim", node.name, args, est=_est(node.name, args, n))
    if isinstance(node, (ir.Union, ir.Inter)):
        items = tuple(bind(x, n) for x in node.items)
        kind = "union" if isinstance(node, ir.Union) else "inter"
        return Bound(kind, items=items, est=sum(x.est for x in items))
    if isinstance(node, ir.Diff):
        items = (bind(node.a, n), bind(node.b, n))
        return Bound("diff", items=items, est=items[0].est + items[1].est)
    if isinstance(node, ir.Not):
        a = bind(node.a, n)
        return Bound("not", items=(a,), est=a.est + 1)
    raise TypeError(node)


def _est(name: str, a: tuple, n: int) -> float:
    if name == "stride":
        return n / a[0] + 1
    if name == "dilated":
        return min(2 * a[0] + 1, n / a[1] + 1)
    if name == "fixed":
        return n / a[0] + 2
    if name == "random":
        return min(a[0], n)
    if name == "cols":
        return len(a[0].starts) + 1
    if name == "global":
        return len(a[0].starts) + 2
    return 1.0


# --------------------------------------------------------------------------------------------
# Normal-form interval algebra


def _merge_sorted(row, lo, hi):
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
    return _merge_sorted(row, lo, hi)


def _merge_runs(keys, deltas):
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
        return _EMPTY, _EMPTY, _EMPTY
    if len(parts) == 1:
        return parts[0]
    keys = [row * (n + 1) + lo for row, lo, _ in parts]
    lens = [hi - lo for _, lo, hi in parts]
    key, ln = _merge_runs(keys, lens)
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
        return _EMPTY, _EMPTY, _EMPTY
    keys, deltas = [], []
    for (row, lo, hi), w in parts:
        m = len(lo)
        pos = np.empty(2 * m, np.int64)
        pos[0::2], pos[1::2] = lo, hi
        keys.append(np.repeat(row, 2) * (n + 1) + pos)
        d = np.empty(2 * m, np.int64)
        d[0::2], d[1::2] = w, -w
        deltas.append(d)
    key, delta = _merge_runs(keys, deltas)
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
        return _EMPTY, _EMPTY, _EMPTY
    prev = np.zeros(len(kept), bool)
    prev[1:] = kept[:-1]
    nxt = np.zeros(len(kept), bool)
    nxt[:-1] = kept[1:]
    s = np.flatnonzero(kept & ~prev)
    e = np.flatnonzero(kept & ~nxt) + 1
    return urow[s], upos[s], upos[e]


# --------------------------------------------------------------------------------------------
# Primitives


def _per_row(i, lo, hi):
    keep = lo < hi
    if keep.all():
        return i, lo, hi
    return i[keep], lo[keep], hi[keep]


def _progression(i, first, count, step):
    """Rows ``i`` each with ``count`` singletons ``first + step*k``."""
    count = np.maximum(count, 0)
    total = int(count.sum())
    if total == 0:
        return _EMPTY, _EMPTY, _EMPTY
    offs = np.cumsum(count) - count
    k = np.arange(total, dtype=np.int64) - np.repeat(offs, count)
    lo = np.repeat(first, count) + step * k
    return np.repeat(i, count), lo, lo + 1


def _runs_in_window(i, starts, ends, clo, chi):
    """For each row, the runs ``[starts, ends)`` (sorted, disjoint) clipped to the row's
    window ``[clo, chi)``."""
    if len(starts) == 0 or len(i) == 0:
        return _EMPTY, _EMPTY, _EMPTY
    a = np.searchsorted(ends, clo, side="right")
    b = np.searchsorted(starts, chi, side="left")
    cnt = np.maximum(b - a, 0)
    total = int(cnt.sum())
    if total == 0:
        return _EMPTY, _EMPTY, _EMPTY
    offs = np.cumsum(cnt) - cnt
    run = np.arange(total, dtype=np.int64) - np.repeat(offs - a, cnt)
    row = np.repeat(i, cnt)
    lo = np.maximum(starts[run], np.repeat(clo, cnt))
    hi = np.minimum(ends[run], np.repeat(chi, cnt))
    return _per_row(row, lo, hi)


_SINGLE = {"local", "window", "causal", "full", "none", "sink", "block", "rows"}
_PROGRESSION = {"stride", "dilated"}


def progression(name: str, a: tuple, n: int, i, clo, chi):
    """``(first, count, step)`` per row of a ``stride`` or ``dilated`` primitive within
    ``[clo, chi)``; ``None`` when the step is 1 (the primitive is then an interval)."""
    if name == "stride":
        s = min(a[0], n)
        if s == 1:
            return None
        first = clo + (i - clo) % s
        return first, np.maximum((chi - first + s - 1) // s, 0), s
    w, d = min(a[0], n), min(a[1], n)
    if d == 1 or w == 0:
        return None
    kmin = np.maximum(-w, -((i - clo) // d))
    kmax = np.minimum(w, (chi - 1 - i) // d)
    return i + d * kmin, np.maximum(kmax - kmin + 1, 0), d


def _union_progression_interval(i, first, count, step, a, b):
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
        return _EMPTY, _EMPTY, _EMPTY
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


def single_interval(name: str, a: tuple, n: int, i: np.ndarray):
    """``(lo, hi)`` per row for primitives with at most one interval per row (lo >= hi means
    the row is empty)."""
    if name in ("local", "window"):
        left, right = (a[0], a[0]) if name == "local" else a
        left, right = min(left, n), min(right, n)
        return np.maximum(i - left, 0), np.minimum(i + right + 1, n)
    if name == "causal":
        return np.zeros(len(i), np.int64), i + 1
    if name == "full":
        return np.zeros(len(i), np.int64), np.full(len(i), n, np.int64)
    if name == "none":
        return np.zeros(len(i), np.int64), np.zeros(len(i), np.int64)
    if name == "sink":
        return np.zeros(len(i), np.int64), np.full(len(i), min(a[0], n), np.int64)
    if name == "block":
        b = min(a[0], n)
        lo = (i // b) * b
        return lo, np.minimum(lo + b, n)
    if name == "rows":
        runs = a[0]
        k = np.searchsorted(runs.ends, i, side="right")
        inside = np.zeros(len(i), bool)
        ok = k < len(runs.starts)
        inside[ok] = runs.starts[k[ok]] <= i[ok]
        return np.zeros(len(i), np.int64), np.where(inside, n, 0).astype(np.int64)
    raise TypeError(name)  # pragma: no cover


def _rows_window(n: int, r0: int, r1: int, clip):
    """Row indices ``r0:r1`` and their column window: ``clip`` or the whole row."""
    i = np.arange(r0, r1, dtype=np.int64)
    if clip is None:
        return i, np.zeros(len(i), np.int64), np.full(len(i), n, np.int64)
    return i, clip[0], clip[1]


def prim_rows(name: str, a: tuple, n: int, r0: int, r1: int, clip=None):
    """Normal-form intervals of a primitive for rows ``r0:r1``, restricted to the per-row
    window ``clip = (clo, chi)`` when given."""
    i, clo, chi = _rows_window(n, r0, r1, clip)
    if name in _SINGLE:
        lo, hi = single_interval(name, a, n, i)
        return _per_row(i, np.maximum(lo, clo), np.minimum(hi, chi))
    if name in ("stride", "dilated"):
        prog = progression(name, a, n, i, clo, chi)
        if prog is None:  # step 1: an interval
            if name == "stride":
                return _per_row(i, clo, chi)
            w = min(a[0], n) if min(a[1], n) == 1 else 0
            return prim_rows("local", (w,), n, r0, r1, clip)
        return _progression(i, *prog)
    if name == "fixed":
        l, c = a
        if l >= n or c == l:
            return _per_row(i, clo, chi)
        q = np.arange((n + l - 1) // l, dtype=np.int64)
        s_lo, s_hi = q * l + (l - c), np.minimum(q * l + l, n)
        ok = s_lo < s_hi
        row, lo, hi = _runs_in_window(i, s_lo[ok], s_hi[ok], clo, chi)
        blo = (i // l) * l
        row = np.concatenate([row, i])
        lo = np.concatenate([lo, np.maximum(blo, clo)])
        hi = np.concatenate([hi, np.minimum(np.minimum(blo + l, n), chi)])
        return normalize(row, lo, hi, n)
    if name == "cols":
        return _runs_in_window(i, a[0].starts, a[0].ends, clo, chi)
    if name == "global":
        lo, hi = single_interval("rows", a, n, i)
        rows = _per_row(i, np.maximum(lo, clo), np.minimum(hi, chi))
        return union([rows, _runs_in_window(i, a[0].starts, a[0].ends, clo, chi)], n)
    if name == "random":
        r, seed = a
        keys = row_keys(n, r, seed, i)
        k = keys.shape[1]
        if k == 0:
            return _EMPTY, _EMPTY, _EMPTY
        lo = keys.ravel()
        row = np.repeat(i, k)
        if clip is not None:
            ok = (lo >= np.repeat(clo, k)) & (lo < np.repeat(chi, k))
            row, lo = row[ok], lo[ok]
        return _merge_sorted(row, lo, lo + 1)
    raise TypeError(name)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Evaluation over row ranges


def _ge1(s):
    return s >= 1


def _is_single(b: Bound) -> bool:
    return b.kind == "prim" and b.name in _SINGLE


def _union_fast(b: Bound, n, r0, r1, clip):
    """``stride``/``dilated`` ∪ a single-interval primitive, without a merge."""
    x, y = b.items
    if _is_single(x) and y.kind == "prim" and y.name in _PROGRESSION:
        x, y = y, x
    if not (x.kind == "prim" and x.name in _PROGRESSION and _is_single(y)):
        return None
    i, clo, chi = _rows_window(n, r0, r1, clip)
    prog = progression(x.name, x.args, n, i, clo, chi)
    if prog is None:
        return None
    lo, hi = single_interval(y.name, y.args, n, i)
    return _union_progression_interval(i, *prog, np.maximum(lo, clo), np.minimum(hi, chi))


def eval_rows(b: Bound, n: int, r0: int, r1: int, clip=None):
    """Normal-form intervals ``(row, lo, hi)`` of a bound pattern for rows ``r0:r1``, within
    the per-row window ``clip = (clo, chi)`` if given.

    Intersections with single-interval primitives (``causal``, windows, blocks, sinks) are
    pushed down as clips, so the other operands only generate pairs that survive."""
    if b.kind == "prim":
        return prim_rows(b.name, b.args, n, r0, r1, clip)
    if b.kind == "inter":
        singles = [x for x in b.items if _is_single(x)]
        others = [x for x in b.items if not _is_single(x)]
        if singles:
            i, clo, chi = _rows_window(n, r0, r1, clip)
            for x in singles:
                lo, hi = single_interval(x.name, x.args, n, i)
                clo, chi = np.maximum(clo, lo), np.minimum(chi, hi)
            clip = (clo, chi)
            if not others:
                return _per_row(i, clo, chi)
        parts = [eval_rows(x, n, r0, r1, clip) for x in others]
        if len(parts) == 1:
            return parts[0]
        k = len(parts)
        if any(len(p[1]) == 0 for p in parts):
            return _EMPTY, _EMPTY, _EMPTY
        return sweep(parts, [1] * k, lambda s: s == k, n)
    if b.kind == "union" and len(b.items) == 2:
        fast = _union_fast(b, n, r0, r1, clip)
        if fast is not None:
            return fast
    parts = [eval_rows(x, n, r0, r1, clip) for x in b.items]
    if b.kind == "union":
        return union(parts, n)
    if b.kind == "diff":
        return sweep(parts, [1, 2], lambda s: s == 1, n)
    if b.kind == "not":
        whole = prim_rows("full", (), n, r0, r1, clip)
        return sweep([whole, parts[0]], [1, 2], lambda s: s == 1, n)
    raise TypeError(b.kind)  # pragma: no cover


_CACHE_BYTES = 256 << 20  #: keep pass-1 intervals up to this size; beyond, recomputing the
#: chunk in pass 2 (in reused buffers) is cheaper than faulting in fresh memory for them
MAX_WORK = 1 << 32  #: most intervals one lowering may generate (under a minute of work)


def chunks(b: Bound, n: int, r0: int, r1: int) -> Iterator[tuple[int, int]]:
    """Row chunks of about :data:`CHUNK_INTERVALS` intervals each. Refuses, before any work,
    a chunk whose intervals would not fit the memory budget (a single row of ``stride(2)`` at
    n = 2**31 has a billion) or a lowering that would generate more than :data:`MAX_WORK`
    intervals in all."""
    est = max(1.0, b.est)
    rows = max(1, min(r1 - r0, int(CHUNK_INTERVALS // est)))
    guard.check(rows * est * 96, f"lowering one row chunk ({rows:,} rows × ~{est:,.0f} "
                f"intervals) at n = {n:,}", "use a smaller n or a sparser pattern")
    if (r1 - r0) * est > MAX_WORK:
        raise ResourceError(f"lowering at n = {n:,} would generate about "
                            f"{(r1 - r0) * est:,.0f} intervals (limit {MAX_WORK:,}); use a "
                            "smaller n or a sparser pattern")
    for a in range(r0, r1, rows):
        yield a, min(r1, a + rows)


def _check_range(n, r0, r1):
    if not (0 <= r0 <= r1 <= n):
        raise LoweringError(f"row range {r0}:{r1} is outside 0:{n}")


def row_intervals(node: ir.Node, n: int, r0: int = 0, r1: int | None = None):
    """Yield ``(a, b, row, lo, hi)`` chunk by chunk: the normal-form intervals of rows
    ``a:b``, chunks covering ``r0:r1`` in order. The building block for analysis and
    backends that want structure rather than indices."""
    n = check_n(n)
    r1 = n if r1 is None else r1
    _check_range(n, r0, r1)
    b = bind(node, n)
    for a, c in chunks(b, n, r0, r1):
        yield (a, c, *eval_rows(b, n, a, c))


def _row_counts(row, lo, hi, a, c):
    """Pairs per row of rows a:c, from intervals sorted by row."""
    if len(lo) == 0:
        return np.zeros(c - a, np.int64)
    cl = np.zeros(len(lo) + 1, np.int64)
    np.cumsum(hi - lo, out=cl[1:])
    return np.diff(cl[np.searchsorted(row, np.arange(a, c + 1))])


def nnz(node: ir.Node, n: int) -> int:
    """Exact number of pairs at ``n``, in time proportional to the number of intervals."""
    return sum(int((hi - lo).sum()) for _, _, _, lo, hi in row_intervals(node, n))


def _expand_into(out: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
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


def csr_rows(node: ir.Node, n: int, r0: int = 0, r1: int | None = None):
    """``(indptr, indices)`` of rows ``r0:r1`` (indptr has ``r1 - r0 + 1`` entries, starting
    at 0). Index dtype int32 where it fits, else int64. Checks the memory budget first."""
    n = check_n(n)
    r1 = n if r1 is None else r1
    _check_range(n, r0, r1)
    b = bind(node, n)
    rows = r1 - r0
    if b.est * rows > CHUNK_INTERVALS:  # large: chunk buffers are reused, not re-faulted
        guard.tune_malloc()
    what = f"the CSR mask at n = {n:,}"
    hint = "use a sparser pattern or a smaller n"
    guard.check(rows * 16.0, f"{what} ({rows:,} rows of counts and offsets)", hint)
    # pass 1: exact counts (keeping the intervals when they are small), stopping as soon as
    # the pairs seen so far cannot fit the budget
    counts, cached, kept, total = [], [], 0, 0
    for a, c in chunks(b, n, r0, r1):
        row, lo, hi = eval_rows(b, n, a, c)
        counts.append(_row_counts(row, lo, hi, a, c))
        total += int(counts[-1].sum())
        if total * 5.0 > guard.memory_budget():
            done = "" if c == r1 else "at least "
            guard.check(total * 5.0 + rows * 8.0,
                        f"{what} ({done}{total:,} pairs)", hint)
        kept += len(lo)
        keep = kept * 16 <= min(_CACHE_BYTES, guard.memory_budget() // 4)
        cached.append((a, c, lo, hi) if keep else (a, c, None, None))
    dt = np.int32 if (total < 2**31 and n < 2**31) else np.int64
    isz = np.dtype(dt).itemsize
    guard.check(total * (isz + 1) + (rows + 1) * isz,
                f"the CSR mask of {total:,} pairs at n = {n:,}", hint)
    indptr = np.zeros(r1 - r0 + 1, dt)
    if counts:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    indices = np.empty(total, dt)
    for a, c, lo, hi in cached:
        if lo is None:
            _, lo, hi = eval_rows(b, n, a, c)
        o0, o1 = int(indptr[a - r0]), int(indptr[c - r0])
        _expand_into(indices[o0:o1], lo, hi)
    return indptr, indices


def to_csr(node: ir.Node, n: int):
    """The exact mask as ``scipy.sparse.csr_array`` of shape (n, n), boolean data, sorted
    unique indices per row."""
    import scipy.sparse as sp

    indptr, indices = csr_rows(node, n)
    data = np.ones(len(indices), dtype=bool)
    m = sp.csr_array((data, indices, indptr), shape=(n, n), copy=False)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return m


def to_dense(node: ir.Node, n: int) -> np.ndarray:
    """The mask as a dense (n, n) boolean array, for n <= :data:`MAX_DENSE_N`."""
    n = check_n(n)
    if n > MAX_DENSE_N:
        raise ResourceError(f"to_dense(n = {n:,}) would build an n×n matrix of "
                            f"{guard.fmt_bytes(float(n) * n)}; the limit is n <= {MAX_DENSE_N:,} "
                            "(use to_csr for large n)")
    guard.check(float(n) * n, f"a dense {n}×{n} mask")
    out = np.zeros((n, n), dtype=bool)
    for _, _, row, lo, hi in row_intervals(node, n):
        for r, a, c in zip(row.tolist(), lo.tolist(), hi.tolist()) if len(lo) < 4096 else ():
            out[r, a:c] = True
        if len(lo) >= 4096:
            lens = hi - lo
            cols = np.empty(int(lens.sum()), np.int64)
            _expand_into(cols, lo, hi)
            out[np.repeat(row, lens), cols] = True
    return out


def estimate_pairs(node: ir.Node, n: int) -> float:
    """A cheap upper-bound-ish estimate of pairs (no lowering): used for error messages."""
    return float(n) * math.inf if n <= 0 else float(nnz(node, n))
