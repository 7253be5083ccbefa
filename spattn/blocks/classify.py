"""Which tiles a pattern touches and which it covers fully, in closed form.

In: a :class:`~spattn.bind.Bound` pattern and a tile grid (:class:`spattn.tiles.Grid`). Out:
labelled runs of key blocks per query block (:mod:`spattn.tiles`), every tile labelled empty,
partial or full.

How (time proportional to the nonzero tiles, no n×n intermediate): each primitive's table
entry gives its runs in closed form (``Primitive.tiles``); operators combine runs with exact
four-valued rules. Tiles the rules cannot decide (``P | P``, ``P & P``) are settled by
evaluating the element mask of one representative per class of identical tiles: tiles whose
shift-invariant part (windows, strides, blocks, …) sees the same diagonal offset, phase modulo
the patterns' common period and tile shape, and whose other primitives are all empty or full
there, have the same mask.
"""

from __future__ import annotations

import math

import numpy as np

from .. import tiles
from ..bind import Bound
from ..predicate import numpy_mask
from ..tiles import Grid, Runs


def classify(b: Bound, g: Grid, leaves: dict) -> Runs:
    """Labelled runs of ``b`` over grid ``g``; the runs of primitives that are not shift
    invariant are recorded in ``leaves`` (they tell identical tiles apart)."""
    if b.kind == "prim":
        r = b.spec.tiles(b.args, g)
        if b.spec.period(b.args) is None:
            leaves[id(b)] = r
        return r
    if b.kind in ("union", "inter"):
        return tiles.combine([classify(x, g, leaves) for x in b.items], b.kind, g)
    if b.kind == "not":
        return tiles.combine([tiles.grid_runs(g), classify(b.items[0], g, leaves)], "not", g)
    if b.kind == "diff":
        a = classify(b.items[0], g, leaves)
        nb = tiles.combine([tiles.grid_runs(g), classify(b.items[1], g, leaves)], "not", g)
        return tiles.combine([a, nb], "inter", g)
    raise TypeError(b.kind)  # pragma: no cover


def common_period(b: Bound, n: int) -> int:
    """Common period of the shift-invariant primitives (shifting i and j together by a
    multiple of it preserves them), or 0 when it is too large to be useful."""
    per = 1
    for p in b.prims():
        v = p.spec.period(p.args)
        if v is not None:
            per = math.lcm(per, v)
            if per > 4 * n:
                return 0
    return per


def resolve(b: Bound, g: Grid, a: np.ndarray, c: np.ndarray, leaves: dict) -> np.ndarray:
    """Exact labels of undecided tiles ``(a, c)``: one element-level evaluation per class of
    identical tiles."""
    if len(a) == 0:
        return np.zeros(0, np.int64)
    per = common_period(b, g.n)
    cols = [g.qs[a] - g.cs[c], g.rows[a], g.span[c]]
    cols.append(g.cs[c] % per if per else g.cs[c])
    exact = np.ones(len(a), bool)
    for r in leaves.values():
        lab = tiles.lookup(r, a, c, g.nkb)
        cols.append(lab)
        exact &= lab != tiles.P
    # tiles where a primitive that is not shift invariant is partial are their own class
    cols.append(np.where(exact, -1, a))
    cols.append(np.where(exact, -1, c))
    sig = np.stack(cols, axis=1)
    _, rep, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    labs = tile_labels(b, g, a[rep], c[rep])
    return labs[inv.ravel()]


def tile_labels(b: Bound, g: Grid, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """E/P/F of tiles ``(a, c)`` by evaluating their element masks (chunked)."""
    out = np.empty(len(a), np.int64)
    per = max(1, (1 << 22) // (g.bq * g.bk))
    xq = np.arange(g.bq, dtype=np.int64)
    xk = np.arange(g.bk, dtype=np.int64)
    for s in range(0, len(a), per):
        aa, cc = a[s:s + per], c[s:s + per]
        i = g.qs[aa][:, None, None] + xq[None, :, None]
        j = g.cs[cc][:, None, None] + xk[None, None, :]
        valid = (i < g.qe[aa][:, None, None]) & (j < g.ce[cc][:, None, None])
        i = np.minimum(i, g.n - 1).astype(np.int32)
        j = np.minimum(j, g.n - 1).astype(np.int32)
        v = numpy_mask(b, i, j, g.n) & valid
        cnt = v.sum(axis=(1, 2))
        out[s:s + per] = tiles.count_label(cnt, g.rows[aa] * g.span[cc])
    return out
