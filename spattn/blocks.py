"""Block-level lowering: which (query block, key block) tiles a pattern touches, and which it
covers fully.

In: a pattern, sequence length ``n``, query/key block sizes, optionally ``m`` queries (the last
m positions). Out: :func:`block_structure`, a block-level CSR with a full/partial flag per
nonzero tile, computed exactly from the row intervals of :mod:`spattn.lower` (no n×n
intermediate).
"""

from __future__ import annotations

import numpy as np

from . import ir
from .errors import SpattnError
from .lower import check_n, row_intervals


def _check_block(b, what):
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise SpattnError(f"{what} must be a positive integer, got {b!r}")
    return int(b)


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
    m = n if m is None else int(m)
    if not 1 <= m <= n:
        raise SpattnError(f"m = {m} queries must be between 1 and n = {n}")
    off = n - m
    nqb = (m + bq - 1) // bq
    nkb = (n + bk - 1) // bk
    touched_keys, full_keys = [], []
    for _, _, row, lo, hi in row_intervals(node, n, off, n):
        if len(lo) == 0:
            continue
        qb = (row - off) // bq
        # touched key blocks: lo//bk .. (hi-1)//bk
        k0, k1 = lo // bk, (hi - 1) // bk + 1
        touched_keys.append(_ranges(qb, k0, k1, nkb))
        # fully covered key blocks: the block's whole span [c*bk, min(n,(c+1)*bk)) in [lo, hi)
        f0 = (lo + bk - 1) // bk
        f1 = np.where(hi == n, nkb, hi // bk)
        ok = f0 < f1
        if ok.any():
            # one record per (row, key block) fully covered; counted per query block below
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
