"""The KV-cache figure of a causal pattern: the most keys any decoding step must hold.

In: :class:`~spattn.analysis.families.Families` of a causal pattern. Out: max over t of
|{j <= t : M[i, j] for some i >= t}|. How: ``L(j)``, the last query using key j, is a
range-max over the families (a sparse table over their compressed coordinates); the figure
follows from a difference array.
"""

from __future__ import annotations

import numpy as np

from .families import Families


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


def kv_cache(f: Families) -> int:
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
