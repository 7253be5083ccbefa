"""Figures from sampled rows, for patterns too large to lower every row (inexact).

In: a pattern node, n and a block size. Out: row figures, block figures and a KV-cache lower
bound estimated from strata of sampled rows (the first and last rows whole); the caller marks
them inexact.
"""

from __future__ import annotations

import numpy as np

from .. import guard
from ..bind import bind
from ..errors import ResourceError
from ..lower import chunks, eval_rows
from .blockfig import block_figures, blocks_dict
from .families import Families, concat_rows, eval_sorted_rows, linear_ok
from .rows import structurally_causal

SAMPLE_INTERVALS = 600_000  #: interval budget of the sampled mode


def sampled(node, n: int, B: int) -> tuple[dict, dict, int | None]:
    b = bind(node, n)
    per = max(1.0, b.est)
    S = int(max(16, min(4096, SAMPLE_INTERVALS // per)))
    S = min(S, n, int(guard.memory_budget() // (per * 400)))
    if S < 1 or per > 8 * SAMPLE_INTERVALS:
        raise ResourceError(
            f"stats at n = {n:,}: one row of this pattern has about {per:,.0f} intervals; "
            "sampling rows would take too long and too much memory; use a smaller n")
    run = 32 if S >= 256 else 1  # runs of consecutive rows: fewer lowering calls
    E = min(run, n // 4)  # the first and last E rows are taken whole (global rows, edges)
    m = n - 2 * E
    starts = E + ((np.arange(S // run) + 0.5) * m / (S // run)).astype(np.int64)
    inner = np.unique(np.minimum(starts[:, None] + np.arange(run)[None, :], n - 1 - E).ravel())
    edges = np.concatenate([np.arange(E), np.arange(n - E, n)]).astype(np.int64)
    rows = np.unique(np.concatenate([edges, inner]))
    row, lo, hi = concat_rows(eval_sorted_rows(b, n, rows))
    deg = np.bincount(np.searchsorted(rows, row), weights=hi - lo, minlength=len(rows))
    dg = np.zeros(len(rows), bool)
    dg[np.searchsorted(rows, row[(lo <= row) & (row < hi)])] = True
    is_edge = np.isin(rows, edges)
    w = np.where(is_edge, 1.0, m / max(1, int((~is_edge).sum())))  # stratum weights

    def total(x):
        return float((w * x).sum())

    nnz = total(deg)
    causal = bool((hi - 1 <= row).all()) if len(lo) else True
    rowfig = {"nnz": int(round(nnz)), "min": int(deg.min()), "max": int(deg.max()),
              "mean": nnz / n, "empty": int(round(total(deg == 0))), "causal": causal,
              "diag": int(round(total(dg)))}
    # causal: a sampled row reading j > i proves False; the IR's structure proves True
    rowfig["causal_exact"] = (not causal) or structurally_causal(node)
    # blocks: sampled query blocks at the midpoints of equal strata
    nqb = (n + B - 1) // B
    Q = int(max(2, min(nqb, SAMPLE_INTERVALS // (per * B))))
    qbs = np.unique(((np.arange(Q) + 0.5) * nqb / Q).astype(np.int64))
    nz = fl = 0
    for q in qbs.tolist():
        r0, r1 = q * B, min(n, q * B + B)
        row2, lo2, hi2 = concat_rows([eval_rows(b, n, x, y)
                                       for x, y in chunks(b, n, r0, r1)])
        ra = np.arange(r0, r1, dtype=np.int64)
        z = np.zeros(len(lo2), np.int64)
        bf = block_figures(Families(n, ra, ra + 1, row2 - r0, lo2, z, hi2, z, "x"), B, 0)
        nz += bf["nonzero"]
        fl += bf["full"]
    scale = nqb / len(qbs)
    blocks = blocks_dict(B, int(round(nz * scale)), int(round(fl * scale)), nqb, nqb,
                          rowfig["nnz"])
    kv = sampled_kv(b, n, per, rowfig["max"]) if rowfig["causal"] else None
    return rowfig, blocks, kv


def sampled_kv(b, n: int, per: float, maxdeg: int) -> int:
    """A lower bound of the KV cache: the largest row, and the keys <= t read by the last
    rows t.. n-1 together (R of them, within the sampling budget)."""
    R = int(min(1024, max(1, 2 * SAMPLE_INTERVALS // per), n))
    if not linear_ok(n // 8) or per * R > 4 * SAMPLE_INTERVALS:
        return maxdeg
    t = n - R
    d = np.zeros(n + 1, np.int64)
    for _, lo2, hi2 in eval_sorted_rows(b, n, np.arange(t, n)):
        np.add.at(d, lo2, 1)
        np.add.at(d, hi2, -1)
    marked = np.cumsum(d[:t + 1]) > 0
    return max(maxdeg, int(np.count_nonzero(marked)))
