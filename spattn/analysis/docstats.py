"""Figures of a pattern over packed sequences (documents): the :class:`Stats` of the packed
N × N matrix.

In: a canonical pattern node, a :class:`~spattn.documents.Documents` and a block size. Out:
:class:`~spattn.analysis.result.Stats` with ``seq_len`` = N and a ``documents`` entry.

How: the packed matrix is block diagonal, so every figure but the block figures combines the
figures of each *length class* (one :func:`~spattn.analysis.stats.stats` per distinct length,
at most ``sqrt(2 N)`` of them), weighted by the number of documents of that length:

* nnz, empty rows and pair counts add up; row degrees take the min and max; density, the
  mean degree and ``reachable`` are the packed counts over N² (pairs across documents are
  never attended and never reached);
* ``causal`` and ``symmetric`` hold when they hold in every document;
* ``kv_cache``: decoding a packed sequence never reads an earlier document again, so it is
  the largest of the documents' figures;
* receptive field: ``hops_to_full`` is the largest; ``coverage`` at depth L is the mean over
  all N queries of the fraction of the N positions in their receptive field (a document's
  coverage stays at its final value past its own ``hops_to_full``);
* block figures come from the packed block layout (:mod:`spattn.blocks.packed`), where tiles
  straddle documents.

Each figure is exact when it is exact in every length class.
"""

from __future__ import annotations

from .. import ir
from ..checks import positive_int
from ..documents import Documents
from ..errors import LoweringError
from ..packed import doc_error
from ..printing import text
from .blockfig import blocks_dict
from .result import Stats
from .stats import stats


def _coverage_at(rf: dict, depth: int) -> float:
    """A document's coverage at ``depth``: its own figure, or its final one past its
    ``hops_to_full``."""
    cov = rf["coverage"]
    if depth in cov:
        return float(cov[depth])
    if depth >= rf["hops_to_full"]:
        return float(rf["reachable"])
    keys = [k for k in cov if k <= depth]  # pragma: no cover - every power of 2 is listed
    return float(cov[max(keys)]) if keys else 0.0


def document_stats(node: ir.Node, docs: Documents, block_size: int = 128) -> Stats:
    """The figures of the packed matrix of ``node`` over ``docs``."""
    from ..blocks.packed import packed_blocks

    B = positive_int(block_size, "block size")
    N = docs.total
    per: list[tuple[int, int, Stats]] = []
    for L, idx in docs.classes:
        try:
            per.append((L, len(idx), stats(node, L, block_size=B)))
        except LoweringError as e:
            raise doc_error(docs, L, e) from None
    nnz = sum(c * s.nnz for _, c, s in per)
    exact = {k: all(s.exact[k] for _, _, s in per) for k in per[0][2].exact}
    causal = all(s.causal for _, _, s in per)
    kv = max(s.kv_cache for _, _, s in per) if causal else None
    grows = any(bool(s.kv_cache_grows) for _, _, s in per) if causal else None
    hops = max(s.receptive_field["hops_to_full"] for _, _, s in per)
    depths = sorted({1 << e for e in range(max(1, hops).bit_length()) if 1 << e <= hops}
                    | {max(1, hops)})
    N2 = float(N) * N
    cov = {d: sum(c * L * L * _coverage_at(s.receptive_field, d) for L, c, s in per) / N2
           for d in depths}
    rf = {"reachable": sum(c * L * L * s.receptive_field["reachable"] for L, c, s in per) / N2,
          "hops_to_full": hops,
          "coverage": cov, "exact": exact["receptive_field"]}
    measured = [s.receptive_field.get("measured_at") for _, _, s in per]
    if any(m is not None for m in measured):
        rf["measured_at"] = max(m for m in measured if m is not None)
    lay = packed_blocks(node, docs, B)
    blocks = blocks_dict(B, lay.nonzero_blocks, lay.num_full, lay.num_q_blocks,
                         lay.num_k_blocks, nnz)
    exact["blocks"] = exact["nnz"]
    lengths = docs.array
    info = {"count": len(docs), "total": N, "distinct_lengths": len(per),
            "length": {"min": int(lengths.min()), "mean": float(lengths.mean()),
                       "max": int(lengths.max())}}
    notes = sorted({x for _, _, s in per for x in s.notes})
    notes.insert(0, f"{len(docs):,} documents (lengths {info['length']['min']:,}.."
                    f"{info['length']['max']:,}, {len(per):,} distinct): figures of the "
                    "packed matrix")
    methods = sorted({s.method for _, _, s in per})
    return Stats(
        pattern=text(node), seq_len=N, nnz=int(nnz), density=nnz / N2,
        row_degree={"min": int(min(s.row_degree["min"] for _, _, s in per)),
                    "mean": nnz / float(N),
                    "max": int(max(s.row_degree["max"] for _, _, s in per))},
        empty_rows=int(sum(c * s.empty_rows for _, c, s in per)), causal=causal,
        symmetric=all(s.symmetric for _, _, s in per), blocks=blocks, kv_cache=kv,
        kv_cache_grows=grows, receptive_field=rf, exact=exact, method="+".join(methods),
        notes=tuple(notes), documents=info)
