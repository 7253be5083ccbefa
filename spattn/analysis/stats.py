"""Pattern analysis: the figures of SPEC section 2 (``Pattern.stats``), assembled.

In: a canonical pattern node, a sequence length ``n`` and a block size. Out: a frozen
:class:`~spattn.analysis.result.Stats` with nnz, density, row degrees, empty rows, causal,
symmetric, block figures, KV cache (and whether it grows with n) and receptive field, and an
``exact`` map saying which figures are exact. Methods, most exact first: compressed row
families, every row lowered, sampled rows (inexact); receptive field by exhaustive search,
structure, bitset search, or measured at a smaller n (inexact, said in ``notes``).
"""

from __future__ import annotations

from .. import ir
from ..bind import Bound, bind
from ..checks import check_n, positive_int
from ..errors import LoweringError, SpattnError
from ..printing import text
from .blockfig import block_figures
from .families import families, linear_ok
from .kv import kv_cache
from .receptive import rf_bitset, rf_brute, rf_structural
from .result import Stats
from .rows import row_figures, symmetric
from .sampled import sampled, sampled_kv

BRUTE_N = 1024  #: receptive field by exhaustive search up to this n
ESTIMATE_N = 512  #: where no exact method applies, the receptive field is measured at this n
BRUTE_WORK = 2e8  #: ... or while n · nnz stays under this


def _saturates(b: Bound) -> bool:
    """Whether the pattern is a union with a term whose table entry saturates (a nonempty
    ``global(I)``): its row is full and every row reads it, so two hops reach all."""
    items = b.items if b.kind == "union" else (b,)
    return any(x.kind == "prim" and x.spec.saturates(x.args) for x in items)


def stats(node: ir.Node, n: int, block_size: int = 128) -> Stats:
    """The figures of SPEC section 2 for the pattern ``node`` at sequence length ``n``."""
    n = check_n(n)
    B = positive_int(block_size, "block size")
    b = bind(node, n)  # argument errors first
    notes: list[str] = []
    kv_exact = True
    f = families(node, n)
    exact_rows = f is not None
    if f is not None:
        rowfig = row_figures(f)
        blocks = block_figures(f, B, rowfig["nnz"])
        kv = None
        if rowfig["causal"]:
            if linear_ok(n):
                kv = kv_cache(f)
            else:  # a lower bound without O(n) arrays
                kv, kv_exact = rowfig["max"], False
                notes.append(f"KV cache at n = {n:,} is a lower bound (the largest row)")
        method = f.mode
    else:
        rowfig, blocks, kv = sampled(node, n, B)
        method = "sampled"
        notes.append("rows were sampled: nnz, degrees, blocks and KV cache are estimates")
    sym, sym_exact = symmetric(node, n, rowfig, exact_rows)

    # KV cache growth: compare with 2n
    grows, grows_exact = None, exact_rows
    if kv is not None and kv_exact and linear_ok(2 * n):
        try:
            n2 = 2 * n
            check_n(n2)
            f2 = families(node, n2)
            if f2 is not None:
                kv2 = kv_cache(f2)
            else:
                b2 = bind(node, n2)
                kv2 = sampled_kv(b2, n2, max(1.0, b2.est), 0)
                grows_exact = False
            grows = bool(kv2 > kv)
        except SpattnError:
            grows, grows_exact = None, False

    # receptive field
    rf, rf_exact = None, True
    if n <= BRUTE_N:
        rf = rf_brute(node, n)
    elif f is not None and linear_ok(n):
        rf = rf_structural(f)
        if rf is None and n <= 2 * BRUTE_N and rowfig["nnz"] * n <= BRUTE_WORK:
            rf = rf_brute(node, n)
        if rf is None and n <= 65536:
            rf = rf_bitset(node, n, rowfig["nnz"])
    if rf is None and not exact_rows and _saturates(b) \
            and rowfig["min"] < n:
        # a global token: its row is full and every row reads it, so two hops reach all
        rf = {"reachable": 1.0, "hops_to_full": 2,
              "coverage": {1: (rowfig["nnz"] + n - rowfig["diag"]) / (float(n) * n), 2: 1.0}}
        rf_exact = False
        notes.append("receptive field: reachable and hops_to_full are exact (global tokens); "
                     "coverage at depth 1 is estimated from sampled rows")
    if rf is None:
        rf_exact = False
        small = min(n, ESTIMATE_N)
        try:
            rf = rf_brute(node, small)
        except SpattnError as e:
            raise LoweringError(f"cannot estimate the receptive field at n = {small}: {e}") \
                from None
        rf["measured_at"] = small
        notes.append(f"receptive field measured at n = {small} (an estimate for n = {n:,})")
    rf["exact"] = rf_exact

    exact = {"nnz": exact_rows, "density": exact_rows, "row_degree": exact_rows,
             "empty_rows": exact_rows, "causal": exact_rows or bool(rowfig.get("causal_exact")),
             "symmetric": sym_exact, "blocks": exact_rows,
             "kv_cache": (exact_rows and kv_exact) if kv is not None else True,
             "kv_cache_grows": bool(grows_exact) if kv is not None else True,
             "receptive_field": rf_exact}
    return Stats(
        pattern=text(node), seq_len=n, nnz=int(rowfig["nnz"]),
        density=rowfig["nnz"] / (float(n) * n),
        row_degree={"min": int(rowfig["min"]), "mean": float(rowfig["mean"]),
                    "max": int(rowfig["max"])},
        empty_rows=int(rowfig["empty"]), causal=bool(rowfig["causal"]), symmetric=bool(sym),
        blocks=blocks, kv_cache=kv, kv_cache_grows=grows, receptive_field=rf, exact=exact,
        method=method, notes=tuple(notes))
