"""Exact lowering of pattern IR to sparse structures (CSR, counts, dense for small n).

In: a canonical :class:`~spattn.ir.Node` and a sequence length ``n``. Out: row intervals,
``scipy.sparse.csr_array`` masks, exact ``nnz`` and (small n only) dense masks.

How: every row of a pattern is a sorted list of disjoint, non-touching column intervals
``[lo, hi)`` (the *normal form*, :mod:`spattn.intervals`). Each primitive's table entry
generates the normal form for a range of rows directly (``stride`` and ``dilated`` as
length-1 intervals); ``|``, ``&``, ``-`` and ``~`` are sweeps over the operands' end points.
Intersections with single-interval primitives (``causal``, windows, blocks, sinks) are pushed
down as per-row clips, so the other operands only generate pairs that survive. Rows are
processed in chunks sized from an estimate of intervals per row, and the CSR indices are
written straight from the intervals by a cumulative sum, so time and memory are proportional
to the number of intervals plus the number of pairs: there is no n×n intermediate and no
Python loop over rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import guard, ir
from . import intervals as iv
from .bind import Bound, bind
from .checks import MAX_N, check_n
from .errors import LoweringError, ResourceError
from .random_keys import MAX_PASSES

__all__ = ["MAX_DENSE_N", "MAX_N", "CHUNK_INTERVALS", "check_n", "eval_rows", "chunks",
           "row_intervals", "nnz", "csr_rows", "to_csr", "to_dense"]

MAX_DENSE_N = 16_384  #: largest n that ``to_dense`` accepts (a 256 MiB boolean matrix)
CHUNK_INTERVALS = 1 << 21  #: target number of intervals per chunk of rows
_DENSE_BLOCK_CELLS = 1 << 20  #: cells of the per-block work arrays of ``to_dense``


def _rows_window(n: int, r0: int, r1: int, clip):
    """Row indices ``r0:r1`` and their column window: ``clip`` or the whole row."""
    i = np.arange(r0, r1, dtype=np.int64)
    if clip is None:
        return i, np.zeros(len(i), np.int64), np.full(len(i), n, np.int64)
    return i, clip[0], clip[1]


def _is_single(b: Bound) -> bool:
    return b.kind == "prim" and b.spec.single_interval


def _union_fast(b: Bound, n, r0, r1, clip):
    """A progression (``stride``/``dilated``) ∪ a single-interval primitive, without a
    merge; None when ``b`` is not of that shape."""
    x, y = b.items
    if _is_single(x) and y.kind == "prim" and not _is_single(y):
        x, y = y, x
    if not (x.kind == "prim" and _is_single(y)):
        return None
    i, clo, chi = _rows_window(n, r0, r1, clip)
    prog = x.spec.progression(x.args, n, i, clo, chi)
    if prog is None:
        return None
    lo, hi = y.spec.interval(y.args, n, i)
    return iv.union_progression_interval(i, *prog, np.maximum(lo, clo), np.minimum(hi, chi))


def eval_rows(b: Bound, n: int, r0: int, r1: int, clip=None):
    """Normal-form intervals ``(row, lo, hi)`` of a bound pattern for rows ``r0:r1``, within
    the per-row window ``clip = (clo, chi)`` if given."""
    if b.kind == "prim":
        return b.spec.rows(b.args, n, *_rows_window(n, r0, r1, clip))
    if b.kind == "inter":
        singles = [x for x in b.items if _is_single(x)]
        others = [x for x in b.items if not _is_single(x)]
        if singles:
            i, clo, chi = _rows_window(n, r0, r1, clip)
            for x in singles:
                lo, hi = x.spec.interval(x.args, n, i)
                clo, chi = np.maximum(clo, lo), np.minimum(chi, hi)
            clip = (clo, chi)
            if not others:
                return iv.per_row(i, clo, chi)
        parts = [eval_rows(x, n, r0, r1, clip) for x in others]
        if len(parts) == 1:
            return parts[0]
        k = len(parts)
        if any(len(p[1]) == 0 for p in parts):
            return iv.empty()
        return iv.sweep(parts, [1] * k, lambda s: s == k, n)
    if b.kind == "union" and len(b.items) == 2:
        fast = _union_fast(b, n, r0, r1, clip)
        if fast is not None:
            return fast
    parts = [eval_rows(x, n, r0, r1, clip) for x in b.items]
    if b.kind == "union":
        return iv.union(parts, n)
    if b.kind == "diff":
        return iv.sweep(parts, [1, 2], lambda s: s == 1, n)
    if b.kind == "not":
        whole = iv.per_row(*_rows_window(n, r0, r1, clip))
        return iv.sweep([whole, parts[0]], [1, 2], lambda s: s == 1, n)
    raise TypeError(b.kind)  # pragma: no cover


_CACHE_BYTES = 256 << 20  #: keep pass-1 intervals up to this size; beyond, recomputing the
#: chunk in pass 2 (in reused buffers) is cheaper than faulting in fresh memory for them
MAX_WORK = 1 << 29  #: most intervals one lowering may generate (about a minute of work at
#: ~10M intervals/s: a few KB of text such as a union of 40 strides at n = 20,000 is refused
#: at once instead of running for minutes)


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
    calls = -(-(r1 - r0) // rows)
    passes = calls * sum(p.spec.passes(p.args, n, rows) for p in b.prims())
    if passes > MAX_PASSES:
        raise ResourceError(f"lowering at n = {n:,} would take about {passes:,.0f} sequential "
                            f"numpy passes (limit {MAX_PASSES:,}: random keys are drawn step "
                            "by step); use fewer random keys or a smaller n")
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
        iv.expand_into(indices[o0:o1], lo, hi)
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
    guard.check(float(n) * n + 64.0 * _DENSE_BLOCK_CELLS, f"a dense {n}×{n} mask")
    out = np.zeros((n, n), dtype=bool)
    W = n + 1
    R = max(1, _DENSE_BLOCK_CELLS // W)  # rows per block: small int64 work arrays
    for _, _, row, lo, hi in row_intervals(node, n):
        s0 = 0
        while s0 < len(row):  # blocks of R rows that have intervals
            r0 = int(row[s0])
            r1 = min(n, r0 + R)
            s1 = int(np.searchsorted(row, r1))
            rr = row[s0:s1] - r0
            size = (r1 - r0) * W
            d = (np.bincount(rr * W + lo[s0:s1], minlength=size)
                 - np.bincount(rr * W + hi[s0:s1], minlength=size))
            out[r0:r1] = np.cumsum(d.reshape(r1 - r0, W), axis=1)[:, :n] > 0
            s0 = s1
    return out
