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
_CACHE_INTERVALS = 16 << 20  #: keep pass-1 intervals (24 bytes each) up to this many

_EMPTY = np.zeros(0, np.int64)


class Bound:
    """A pattern node with its arguments evaluated at ``n`` and an estimate of the number of
    intervals per row (to size chunks)."""

    __slots__ = ("kind", "name", "args", "items", "est")

    def __init__(self, kind, name=None, args=(), items=(), est=1.0):
        self.kind, self.name, self.args, self.items, self.est = kind, name, args, items, est


def check_n(n) -> int:
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
    key = np.concatenate(keys)
    delta = np.concatenate(deltas)
    if len(parts) > 1:
        order = np.argsort(key, kind="stable")  # a merge of sorted runs
        key, delta = key[order], delta[order]
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
    total = int(count.sum())
    if total == 0:
        return _EMPTY, _EMPTY, _EMPTY
    offs = np.cumsum(count) - count
    k = np.arange(total, dtype=np.int64) - np.repeat(offs, count)
    lo = np.repeat(first, count) + step * k
    return np.repeat(i, count), lo, lo + 1


def _runs_per_row(i, starts, ends):
    R, K = len(i), len(starts)
    if K == 0 or R == 0:
        return _EMPTY, _EMPTY, _EMPTY
    return np.repeat(i, K), np.tile(starts, R), np.tile(ends, R)


def _rows_full(runs: ir.IndexRuns, r0, r1, n):
    s = np.clip(runs.starts, r0, r1)
    e = np.clip(runs.ends, r0, r1)
    keep = s < e
    if not keep.any():
        return _EMPTY, _EMPTY, _EMPTY
    rows = ir._expand_runs(s[keep], e[keep])
    return rows, np.zeros(len(rows), np.int64), np.full(len(rows), n, np.int64)


def prim_rows(name: str, a: tuple, n: int, r0: int, r1: int):
    """Normal-form intervals of a primitive for rows ``r0:r1``."""
    i = np.arange(r0, r1, dtype=np.int64)
    zeros = np.zeros(len(i), np.int64)
    if name in ("local", "window"):
        left, right = (a[0], a[0]) if name == "local" else a
        left, right = min(left, n), min(right, n)
        return i, np.maximum(i - left, 0), np.minimum(i + right + 1, n)
    if name == "causal":
        return i, zeros, i + 1
    if name == "full":
        return i, zeros, np.full(len(i), n, np.int64)
    if name == "none":
        return _EMPTY, _EMPTY, _EMPTY
    if name == "sink":
        k = min(a[0], n)
        return (i, zeros, np.full(len(i), k, np.int64)) if k else (_EMPTY, _EMPTY, _EMPTY)
    if name == "block":
        b = min(a[0], n)
        lo = (i // b) * b
        return i, lo, np.minimum(lo + b, n)
    if name == "stride":
        s = min(a[0], n)
        if s == 1:
            return prim_rows("full", (), n, r0, r1)
        first = i % s
        return _progression(i, first, (n - first + s - 1) // s, s)
    if name == "dilated":
        w, d = min(a[0], n), min(a[1], n)
        if d == 1 or w == 0:
            return prim_rows("local", (w if d == 1 else 0,), n, r0, r1)
        kmin = np.maximum(-w, -(i // d))
        kmax = np.minimum(w, (n - 1 - i) // d)
        return _progression(i, i + d * kmin, kmax - kmin + 1, d)
    if name == "fixed":
        l, c = a
        if l >= n or c == l:
            return prim_rows("full", (), n, r0, r1)
        q = np.arange((n + l - 1) // l, dtype=np.int64)
        s_lo, s_hi = q * l + (l - c), np.minimum(q * l + l, n)
        ok = s_lo < s_hi
        row, lo, hi = _runs_per_row(i, s_lo[ok], s_hi[ok])
        blo = (i // l) * l
        row = np.concatenate([row, i])
        lo = np.concatenate([lo, blo])
        hi = np.concatenate([hi, np.minimum(blo + l, n)])
        return normalize(row, lo, hi, n)
    if name == "rows":
        return _rows_full(a[0], r0, r1, n)
    if name == "cols":
        return _runs_per_row(i, a[0].starts, a[0].ends)
    if name == "global":
        return sweep([_rows_full(a[0], r0, r1, n), _runs_per_row(i, a[0].starts, a[0].ends)],
                     [1, 1], lambda s: s >= 1, n)
    if name == "random":
        r, seed = a
        keys = row_keys(n, r, seed, i)
        k = keys.shape[1]
        if k == 0:
            return _EMPTY, _EMPTY, _EMPTY
        lo = keys.ravel()
        return _merge_sorted(np.repeat(i, k), lo, lo + 1)
    raise TypeError(name)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Evaluation over row ranges


def _ge1(s):
    return s >= 1


def eval_rows(b: Bound, n: int, r0: int, r1: int):
    """Normal-form intervals ``(row, lo, hi)`` of a bound pattern for rows ``r0:r1``."""
    if b.kind == "prim":
        return prim_rows(b.name, b.args, n, r0, r1)
    parts = [eval_rows(x, n, r0, r1) for x in b.items]
    if b.kind == "union":
        return sweep(parts, [1] * len(parts), _ge1, n)
    if b.kind == "inter":
        k = len(parts)
        if any(len(p[1]) == 0 for p in parts):
            return _EMPTY, _EMPTY, _EMPTY
        return sweep(parts, [1] * k, lambda s: s == k, n)
    if b.kind == "diff":
        return sweep(parts, [1, 2], lambda s: s == 1, n)
    if b.kind == "not":
        return sweep([prim_rows("full", (), n, r0, r1), parts[0]], [1, 2], lambda s: s == 1, n)
    raise TypeError(b.kind)  # pragma: no cover


def chunks(b: Bound, n: int, r0: int, r1: int) -> Iterator[tuple[int, int]]:
    rows = max(1, min(r1 - r0, int(CHUNK_INTERVALS // max(1.0, b.est))))
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
    if len(lo) == 0:
        return np.zeros(c - a, np.int64)
    return np.bincount(row - a, weights=hi - lo, minlength=c - a).astype(np.int64)


def nnz(node: ir.Node, n: int) -> int:
    """Exact number of pairs at ``n``, in time proportional to the number of intervals."""
    return sum(int((hi - lo).sum()) for _, _, _, lo, hi in row_intervals(node, n))


def _expand_into(out: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Write the columns of consecutive intervals into ``out`` (len = total length)."""
    if len(lo) == 0:
        return
    lens = hi - lo
    starts = np.cumsum(lens) - lens
    out.fill(1)
    out[starts[0]] = lo[0]
    out[starts[1:]] = lo[1:] - hi[:-1] + 1
    np.cumsum(out, dtype=out.dtype, out=out)


def csr_rows(node: ir.Node, n: int, r0: int = 0, r1: int | None = None):
    """``(indptr, indices)`` of rows ``r0:r1`` (indptr has ``r1 - r0 + 1`` entries, starting
    at 0). Index dtype int32 where it fits, else int64. Checks the memory budget first."""
    n = check_n(n)
    r1 = n if r1 is None else r1
    _check_range(n, r0, r1)
    b = bind(node, n)
    # pass 1: exact counts (keeping the intervals when they are small)
    counts, cached, kept = [], [], 0
    for a, c in chunks(b, n, r0, r1):
        row, lo, hi = eval_rows(b, n, a, c)
        counts.append(_row_counts(row, lo, hi, a, c))
        kept += len(lo)
        cached.append((a, c, lo, hi) if kept <= _CACHE_INTERVALS else (a, c, None, None))
    total = int(sum(int(x.sum()) for x in counts))
    dt = np.int32 if (total < 2**31 and n < 2**31) else np.int64
    isz = np.dtype(dt).itemsize
    guard.check(total * (isz + 1) + (r1 - r0 + 1) * isz,
                f"the CSR mask of {total:,} pairs at n = {n:,}",
                "use a sparser pattern or a smaller n")
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
