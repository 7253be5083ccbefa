"""Tile densities of a pattern, for pictures of masks too large to draw pair by pair.

In: a canonical pattern node and n. Out: the fraction of pairs present in each of
``tiles × tiles`` tiles, computed from row intervals (no n×n array), exact or from sampled
rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..bind import bind
from ..lower import chunks, eval_rows

HEATMAP_TILES = 256  #: tiles per side of the heat map


def tile_density(node, n: int, tiles: int = HEATMAP_TILES,
                 budget: int = 4_000_000) -> tuple[Any, int, bool]:
    """Fraction of pairs present in each of ``tiles × tiles`` tiles (from row intervals, no
    n×n array). Rows are sampled (2 per tile row) when lowering all would exceed ``budget``
    intervals. Returns (grid, tile size, exact)."""
    T = math.ceil(n / tiles)
    g = math.ceil(n / T)
    b = bind(node, n)
    exact = b.est * n <= budget
    if exact:
        rows = np.arange(n, dtype=np.int64)
    else:
        rows = np.unique(np.concatenate([np.arange(g) * T, np.minimum(np.arange(g) * T + T // 2,
                                                                      n - 1)]))
    grid = np.zeros((g, g))
    counted = np.bincount(rows // T, minlength=g).astype(float)
    brk = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.concatenate([[0], brk])]
    ends = rows[np.concatenate([brk - 1, [len(rows) - 1]])] + 1
    for s0, e0 in zip(starts.tolist(), ends.tolist(), strict=True):
        for a, c in chunks(b, n, s0, e0):
            row, lo, hi = eval_rows(b, n, a, c)
            if len(lo) == 0:
                continue
            t0, t1 = lo // T, (hi - 1) // T + 1
            cnt = t1 - t0
            idx = np.repeat(np.arange(len(lo)), cnt)
            t = np.repeat(t0, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt,
                                                                             cnt))
            ov = np.minimum(hi[idx], (t + 1) * T) - np.maximum(lo[idx], t * T)
            np.add.at(grid, (row[idx] // T, t), ov)
    width = np.minimum(T, n - np.arange(g) * T).astype(float)
    grid /= np.maximum(counted, 1)[:, None] * width[None, :]
    return grid, T, exact
