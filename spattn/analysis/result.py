"""The result of pattern analysis: :class:`Stats`, the figures of SPEC section 2.

In: the figures computed by :mod:`spattn.analysis.stats`. Out: a frozen dataclass with a
JSON-ready ``to_dict()`` and a readable ``str()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stats:
    """Figures of a pattern at one sequence length (SPEC section 2).

    ``nnz``, ``density`` (nnz / n²), ``row_degree`` (``min``/``mean``/``max`` keys per query),
    ``empty_rows``, ``causal`` (no pair with j > i), ``symmetric``; ``blocks`` at
    ``block_size``: ``nonzero`` and ``full`` tiles, ``partial``, ``density`` (nonzero / tiles)
    and ``efficiency`` (nnz / (nonzero · block_size²)); ``kv_cache`` (causal patterns only:
    max over t of the keys ≤ t still read by a query ≥ t; else None) and ``kv_cache_grows``
    (larger at 2n); ``receptive_field``: ``reachable``, ``hops_to_full`` and ``coverage``
    ({depth: mean fraction of positions within depth hops}) plus its own ``exact``.

    ``exact[name]`` says whether each figure is exact (True) or an estimate (False);
    ``method`` says how rows were read ("compressed", "intervals" or "sampled"); ``notes``
    explain estimates."""

    pattern: str
    seq_len: int
    nnz: int
    density: float
    row_degree: dict[str, float]
    empty_rows: int
    causal: bool
    symmetric: bool
    blocks: dict[str, Any]
    kv_cache: int | None
    kv_cache_grows: bool | None
    receptive_field: dict[str, Any]
    exact: dict[str, bool]
    method: str
    notes: tuple[str, ...] = field(default=())
    #: over packed documents: ``count``, ``total``, ``distinct_lengths`` and ``length``
    #: (``min``/``mean``/``max``); None for one sequence
    documents: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (SPEC section 2 keys plus ``pattern``, ``kv_cache_grows``,
        ``exact``, ``method`` and ``notes``)."""
        rf = dict(self.receptive_field)
        rf["coverage"] = {str(k): float(v) for k, v in rf["coverage"].items()}
        return {
            "pattern": self.pattern,
            "seq_len": int(self.seq_len),
            "nnz": int(self.nnz),
            "density": float(self.density),
            "row_degree": {k: (float(v) if k == "mean" else int(v))
                           for k, v in self.row_degree.items()},
            "empty_rows": int(self.empty_rows),
            "causal": bool(self.causal),
            "symmetric": bool(self.symmetric),
            "receptive_field": rf,
            "blocks": dict(self.blocks),
            "kv_cache": None if self.kv_cache is None else int(self.kv_cache),
            "kv_cache_grows": self.kv_cache_grows,
            "exact": dict(self.exact),
            "method": self.method,
            "notes": list(self.notes),
        } | ({} if self.documents is None else {"documents": dict(self.documents)})

    def __str__(self) -> str:
        rf = self.receptive_field
        deg = self.row_degree
        b = self.blocks
        kv = "n/a (not causal)" if self.kv_cache is None else (
            f"{self.kv_cache:,}" + (" (grows with n)" if self.kv_cache_grows else ""))
        mark = {k: "" if v else " ~" for k, v in self.exact.items()}
        lines = [
            f"{self.pattern}  at n = {self.seq_len:,}" + (
                "" if self.documents is None else
                f" ({self.documents['count']:,} documents)"),
            f"  nnz            {self.nnz:,}{mark['nnz']}   density {self.density:.4g}",
            f"  row degree     min {deg['min']:,}  mean {deg['mean']:.1f}  max {deg['max']:,}",
            f"  empty rows     {self.empty_rows:,}",
            f"  causal         {self.causal}   symmetric {self.symmetric}{mark['symmetric']}",
            f"  blocks ({b['block_size']})   nonzero {b['nonzero']:,}  full {b['full']:,}  "
            f"partial {b['partial']:,}  efficiency {b['efficiency']:.1%}{mark['blocks']}",
            f"  kv cache       {kv}{mark['kv_cache']}",
            f"  receptive      reachable {rf['reachable']:.4g}  hops_to_full "
            f"{rf['hops_to_full']}{mark['receptive_field']}",
        ]
        if self.notes:
            lines += [f"  note: {x}" for x in self.notes]
        return "\n".join(lines)
