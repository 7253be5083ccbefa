"""Block structure computed a second way, from row intervals (a cross-check for
``to_blocks`` and the analysis block figures, which classify tiles in closed form).

Uses spattn's row lowering (itself checked against the per-pair oracle), not the tile
classification.
"""

from __future__ import annotations

import numpy as np

from spattn import ir
from spattn.lower import row_intervals


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
    m = n if m is None else m
    bk = bq if bk is None else bk
    off = n - m
    nqb = (m + bq - 1) // bq
    nkb = (n + bk - 1) // bk
    touched_keys, full_keys = [], []
    for _, _, row, lo, hi in row_intervals(node, n, off, n):
        if len(lo) == 0:
            continue
        qb = (row - off) // bq
        k0, k1 = lo // bk, (hi - 1) // bk + 1
        touched_keys.append(_key_ranges(qb, k0, k1, nkb))
        f0 = (lo + bk - 1) // bk
        f1 = np.where(hi == n, nkb, hi // bk)
        ok = f0 < f1
        if ok.any():
            full_keys.append(_key_ranges(qb[ok], f0[ok], f1[ok], nkb, keep_dups=True))
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


def _key_ranges(qb, k0, k1, nkb, keep_dups=False):
    """Keys ``qb * nkb + k`` for k in [k0, k1) per record."""
    cnt = k1 - k0
    total = int(cnt.sum())
    offs = np.cumsum(cnt) - cnt
    k = np.arange(total, dtype=np.int64) - np.repeat(offs, cnt)
    keys = np.repeat(qb * nkb + k0, cnt) + k
    return keys if keep_dups else np.unique(keys)
