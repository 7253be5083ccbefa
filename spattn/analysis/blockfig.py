"""Block figures of a pattern: nonzero and full tiles at a block size, without expanding
tiles or pairs.

In: :class:`~spattn.analysis.families.Families` and a block size. Out: the ``blocks`` dict of
:class:`~spattn.analysis.result.Stats` (nonzero, full, partial, density, efficiency).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .families import Families, expand_keys
from .rows import row_figures

PIECES_PER_CHUNK = 1 << 21  #: block figures work on this many (family, query block) pieces


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
    qb = expand_keys(qb0, cnt)
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


def block_figures(f: Families, B: int, nnz: int | None = None) -> dict[str, Any]:
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
        nnz = row_figures(f)["nnz"]
    return blocks_dict(B, nonzero, full, nqb, nkb, nnz)


def blocks_dict(B, nonzero, full, nqb, nkb, nnz):
    return {"block_size": int(B), "nonzero": int(nonzero), "full": int(full),
            "partial": int(nonzero - full),
            "density": float(nonzero / (nqb * nkb)),
            "efficiency": float(nnz / (nonzero * B * B)) if nonzero else 0.0}
