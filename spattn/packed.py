"""Lowering over packed sequences: a pattern over :class:`~spattn.documents.Documents`.

In: a canonical pattern node and a ``Documents``. Out: the packed sequence's normal-form row
intervals (positions 0..N-1), its exact ``nnz``, CSR and (small N) dense mask.

How: the pattern is lowered once per *length class* (the distinct document lengths, at most
``sqrt(2 N)`` of them), by :mod:`spattn.lower` at that length; the intervals of one length
are cached (bounded LRU), since the same lengths recur from batch to batch. Each class's
intervals are then shifted to every document of that length by one broadcast add and written
straight to their place in sequence order, so there is no Python loop per document and the
cost is proportional to the packed intervals. An argument out of range in some document (for
example ``global([50])`` in a document of 10 tokens) is an error that names the document.
"""

from __future__ import annotations

import numpy as np

from . import guard, ir
from . import intervals as iv
from .cache import LRUCache
from .documents import Documents
from .errors import LoweringError, ResourceError
from .lower import MAX_DENSE_N
from .lower import nnz as lower_nnz
from .lower import row_intervals as lower_rows

__all__ = ["class_intervals", "class_positions", "row_intervals", "nnz", "csr_rows",
           "to_csr", "to_dense", "main_length", "doc_error"]


def _nbytes(x) -> int:
    return sum(a.nbytes for a in x)


#: one document length's intervals, by (node, length): (row, lo, hi) int32
CLASSES: LRUCache[tuple, tuple] = LRUCache("document lengths", 4096, 256 << 20, sizeof=_nbytes)


def doc_error(docs: Documents, length: int, e: Exception) -> LoweringError:
    """``e`` (raised at one document length) restated for the first document of that
    length."""
    d = docs.first_of_length(length)
    start = int(docs.starts[d])
    return LoweringError(f"in document {d} (length {length:,}, positions {start:,}.."
                         f"{start + length - 1:,} of the packed sequence): {e}")


def class_intervals(node: ir.Node, length: int, docs: Documents | None = None):
    """``(row, lo, hi)`` (int32) of the pattern at one document length (cached)."""
    key = (node, length)
    got = CLASSES.get(key)
    if got is not None:
        return got
    try:
        parts = [(row, lo, hi) for _, _, row, lo, hi in lower_rows(node, length)]
    except LoweringError as e:
        raise doc_error(docs, length, e) if docs is not None else e from None
    if parts:
        out = tuple(np.concatenate([p[k] for p in parts]).astype(np.int32) for k in range(3))
    else:
        out = tuple(np.zeros(0, np.int32) for _ in range(3))
    return CLASSES.put(key, out)


def _class_table(node: ir.Node, docs: Documents, skip: frozenset = frozenset()):
    """Per length class: (length, doc indices, intervals)."""
    return [(L, idx, class_intervals(node, L, docs)) for L, idx in docs.classes
            if L not in skip]


def row_intervals(node: ir.Node, docs: Documents, skip: frozenset = frozenset()):
    """``(row, lo, hi)`` int64 over the packed positions, in normal form (sorted by row;
    documents never share an interval); documents whose length is in ``skip`` are left
    out (their rows have no interval)."""
    table = _class_table(node, docs, skip)
    per_doc = np.zeros(len(docs), np.int64)
    for _, idx, (r, _, _) in table:
        per_doc[idx] = len(r)
    total = int(per_doc.sum())
    guard.check(total * 24.0 * 2, f"the packed intervals of {len(docs):,} documents "
                f"({total:,} intervals, N = {docs.total:,})",
                "use a sparser pattern or fewer tokens")
    dst = np.cumsum(per_doc) - per_doc  # where each document's intervals start
    row = np.empty(total, np.int64)
    lo = np.empty(total, np.int64)
    hi = np.empty(total, np.int64)
    starts = docs.starts
    for _, idx, (r, a, b) in table:
        c = len(r)
        if c == 0:
            continue
        at = (dst[idx][:, None] + np.arange(c)).ravel()
        s = starts[idx][:, None]
        row[at] = (r[None, :] + s).ravel()
        lo[at] = (a[None, :] + s).ravel()
        hi[at] = (b[None, :] + s).ravel()
    return row, lo, hi


def nnz(node: ir.Node, docs: Documents) -> int:
    """Exact pairs of the packed mask: per length class, the class's count times its size."""
    total = 0
    for L, idx in docs.classes:
        got = CLASSES.get((node, L))
        if got is not None:
            c = int((got[2].astype(np.int64) - got[1]).sum())
        else:
            try:
                c = lower_nnz(node, L)
            except LoweringError as e:
                raise doc_error(docs, L, e) from None
        total += c * len(idx)
    return total


def csr_rows(node: ir.Node, docs: Documents):
    """``(indptr, indices)`` of the packed mask (int32 where it fits)."""
    N = docs.total
    row, lo, hi = row_intervals(node, docs)
    pairs = int((hi - lo).sum())
    dt = np.int32 if (pairs < 2**31 and N < 2**31) else np.int64
    isz = np.dtype(dt).itemsize
    guard.check(pairs * (isz + 1) + (N + 1) * isz, f"the CSR mask of {pairs:,} pairs over "
                f"{len(docs):,} documents (N = {N:,})", "use a sparser pattern or fewer tokens")
    counts = np.bincount(row, weights=hi - lo, minlength=N).astype(np.int64)
    indptr = np.zeros(N + 1, dt)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(pairs, dt)
    iv.expand_into(indices, lo, hi)
    return indptr, indices


def to_csr(node: ir.Node, docs: Documents):
    """The packed mask as a ``scipy.sparse.csr_array`` (N, N), sorted unique indices."""
    import scipy.sparse as sp

    N = docs.total
    indptr, indices = csr_rows(node, docs)
    out = sp.csr_array((np.ones(len(indices), bool), indices, indptr), shape=(N, N),
                       copy=False)
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def to_dense(node: ir.Node, docs: Documents) -> np.ndarray:
    """The packed mask as a dense (N, N) boolean array, for N <= MAX_DENSE_N."""
    N = docs.total
    if N > MAX_DENSE_N:
        raise ResourceError(f"to_dense over documents of N = {N:,} tokens would build an "
                            f"N×N matrix of {guard.fmt_bytes(float(N) * N)}; the limit is "
                            f"N <= {MAX_DENSE_N:,} (use to_csr)")
    guard.check(float(N) * N * 2, f"a dense {N}×{N} packed mask")
    row, lo, hi = row_intervals(node, docs)
    W = N + 1
    d = np.zeros(N * W + 1, np.int32)
    np.add.at(d, row * W + lo, 1)
    np.add.at(d, row * W + hi, -1)
    return np.cumsum(d[:-1].reshape(N, W), axis=1)[:, :N] > 0


def class_positions(docs: Documents, idx: np.ndarray, length: int) -> np.ndarray:
    """The packed positions of documents ``idx`` (all of one ``length``), document by
    document (int64, ``len(idx) * length``)."""
    return (docs.starts[idx][:, None] + np.arange(length)).ravel()


def class_batch(x, pos, count: int, length: int):
    """Documents of one length out of a packed (B, h, N, D) tensor, stacked in the batch:
    (B * count, h, length, D); ``pos`` is :func:`class_positions` as a tensor on x's device.
    Differentiable (a gather)."""
    B, h, _, D = x.shape
    y = x.index_select(2, pos).view(B, h, count, length, D).transpose(1, 2)
    return y.reshape(B * count, h, length, D)


def class_unbatch(y, batch: int):
    """:func:`class_batch`'s inverse layout: (batch * count, h, length, D) -> (batch, h,
    count * length, D), documents in ``pos`` order."""
    c = y.shape[0] // batch
    h, L, D = y.shape[1:]
    return y.view(batch, c, h, L, D).transpose(1, 2).reshape(batch, h, c * L, D)


def main_length(docs: Documents) -> int:
    """The document length holding the most tokens (ties: the longer)."""
    a = docs.array
    vals, counts = np.unique(a, return_counts=True)
    tokens = vals * counts
    return int(vals[np.flatnonzero(tokens == tokens.max())[-1]])
