"""Row figures of a pattern: pairs, row degrees, empty rows, causal, symmetric.

In: :class:`~spattn.analysis.families.Families` (or a node, for the symmetric test). Out: the
figures as sums of affine functions over the families' ranges; ``symmetric`` from the
primitive table where every primitive is symmetric, else from the lowering.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ir, prims
from ..bind import bind
from ..lower import eval_rows, to_csr
from .families import Families, eval_sorted_rows


def ir_prims(node: ir.Node) -> list[ir.Prim]:
    """The primitive nodes of a pattern."""
    stack, out = [node], []
    while stack:
        x = stack.pop()
        if isinstance(x, ir.Prim):
            out.append(x)
        else:
            stack.extend(ir.children(x))
    return out


def row_figures(f: Families) -> dict[str, Any]:
    n = f.n
    nr = len(f.ra)
    L = f.rc - f.ra
    d0 = np.bincount(f.fr, weights=f.hi0 - f.lo0, minlength=nr).astype(np.int64)
    sd = np.bincount(f.fr, weights=f.shi - f.slo, minlength=nr).astype(np.int64)
    dl = d0 + sd * (L - 1)
    nnz = int((L * d0 + sd * (L * (L - 1) // 2)).sum())
    dmin = int(min(d0.min(), dl.min()))
    dmax = int(max(d0.max(), dl.max()))
    empty = np.where(sd == 0, np.where(d0 == 0, L, 0),
                     (d0 == 0).astype(np.int64) + ((dl == 0) & (L > 1)))
    # causal: every key j <= i, i.e. hi(i) - 1 - i <= 0 at both ends of each range
    fa, fc = f.fa, f.fc
    causal = True
    if len(f.lo0):
        causal = bool(((f.hi0 - 1 - fa) <= 0).all()
                      and ((f.hi_at(fc - 1) - 1 - (fc - 1)) <= 0).all())
    # diagonal: rows with lo(i) <= i < hi(i)
    lo_ok_hi = np.where(f.slo == 1, np.where(f.lo0 <= fa, fc, fa), fc)
    lo_ok_lo = np.where(f.slo == 1, fa, np.maximum(fa, f.lo0))
    hi_ok_lo = np.where(f.shi == 1, np.where(f.hi0 > fa, fa, fc), fa)
    hi_ok_hi = np.where(f.shi == 1, fc, np.minimum(fc, f.hi0))
    lo_r = np.maximum(lo_ok_lo, hi_ok_lo)
    hi_r = np.minimum(lo_ok_hi, hi_ok_hi)
    diag = int(np.maximum(hi_r - lo_r, 0).sum())
    return {"nnz": nnz, "min": dmin, "max": dmax, "mean": nnz / n, "empty": int(empty.sum()),
            "causal": causal, "diag": diag}


def symmetric(node, n, rowfig, exact_rows) -> tuple[bool, bool]:
    """(symmetric, exact)."""
    if all(prims.of(p).symmetric for p in ir_prims(node)):
        return True, True
    if exact_rows and rowfig["causal"]:
        return rowfig["nnz"] == rowfig["diag"], True
    if exact_rows and rowfig["nnz"] <= 5_000_000:
        m = to_csr(node, n)
        d = m != m.T
        return d.nnz == 0, True
    # witness search on sampled rows
    b = bind(node, n)
    rows = np.unique(np.linspace(0, n - 1, 16).astype(np.int64))
    for row, lo, hi in eval_sorted_rows(b, n, rows):
        for r, a, c in zip(row.tolist()[:16], lo.tolist()[:16], hi.tolist()[:16], strict=False):
            for j in {a, c - 1}:
                _, lo2, hi2 = eval_rows(b, n, j, j + 1)
                if not ((lo2 <= r) & (r < hi2)).any():
                    return False, True
    return True, False


def structurally_causal(node) -> bool:
    """Whether the IR alone shows that no pair has j > i, at every n."""
    if isinstance(node, ir.Prim):
        return prims.of(node).causal_form(node.args)
    if isinstance(node, ir.Inter):
        return any(structurally_causal(x) for x in node.items)
    if isinstance(node, ir.Union):
        return all(structurally_causal(x) for x in node.items)
    if isinstance(node, ir.Diff):
        return structurally_causal(node.a)
    return False
