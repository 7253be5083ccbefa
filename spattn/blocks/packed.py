"""Block layouts and FlexAttention masks over packed sequences (documents).

In: a canonical pattern node and a :class:`~spattn.documents.Documents`. Out:
:class:`PackedLayout` — a :class:`~spattn.blocks.layout.BlockLayout` over the packed sequence
(tiles that straddle a document boundary are partial) — and a FlexAttention ``mask_mod`` of
the packed mask, so that a ``BlockMask`` comes straight from the layout, without
``create_block_mask``.

How: from the packed row intervals (:mod:`spattn.packed`, per length class, cached). Each
interval is cut at key-block boundaries; the pieces' pair counts summed per (query block, key
block) give every nonzero tile and whether it is full — time proportional to the packed
intervals, never N × N. The ``mask_mod`` reads two per-row tables: the start and end of each
row's up to ``K`` intervals (``K`` the most intervals of any row, at most
:data:`MAX_ROW_INTERVALS`; periodic patterns in long documents have many).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from .. import guard, ir, packed
from ..checks import positive_int
from ..documents import Documents
from ..errors import SpattnError
from .layout import BlockLayout

__all__ = ["PackedLayout", "packed_blocks", "packed_mask_mod", "MAX_ROW_INTERVALS"]

MAX_ROW_INTERVALS = 4096  #: the most intervals per row a packed ``mask_mod`` tests
UNROLL = 16  #: up to this many intervals per row, one comparison each (compiles to a
#: pointwise kernel); beyond, one vectorised test over the row's interval table


class PackedLayout(BlockLayout):
    """A :class:`BlockLayout` over a packed sequence (``m = n = docs.total``); ``docs`` holds
    the documents. Its ``tile_mask`` and FlexAttention mask come from the packed intervals."""

    def __init__(self, node: ir.Node, docs: Documents, block_q: int, block_k: int,
                 full_ptr, full_idx, part_ptr, part_idx):
        N = docs.total
        super().__init__(node, N, N, block_q, block_k, full_ptr, full_idx, part_ptr, part_idx)
        self.docs = docs

    def __repr__(self) -> str:
        return (f"PackedLayout({len(self.docs):,} documents, N={self.n}, "
                f"block=({self.block_q}, {self.block_k}), full={self.num_full}, "
                f"partial={self.num_partial})")

    @cached_property
    def _intervals(self):
        return packed.row_intervals(self.node, self.docs)

    def tile_mask(self, a: int, c: int) -> np.ndarray:
        """The exact element mask of tile ``(a, c)``: (rows, keys) bool."""
        if not (0 <= a < self.num_q_blocks and 0 <= c < self.num_k_blocks):
            raise SpattnError(f"tile ({a}, {c}) is outside the {self.num_q_blocks}×"
                              f"{self.num_k_blocks} block grid")
        r0, r1 = a * self.block_q, min(self.n, (a + 1) * self.block_q)
        c0, c1 = c * self.block_k, min(self.n, (c + 1) * self.block_k)
        row, lo, hi = self._intervals
        s0, s1 = np.searchsorted(row, [r0, r1])
        out = np.zeros((r1 - r0, c1 - c0), bool)
        for r, x, y in zip(row[s0:s1].tolist(), lo[s0:s1].tolist(), hi[s0:s1].tolist(),
                           strict=True):
            x, y = max(x, c0), min(y, c1)
            if x < y:
                out[r - r0, x - c0:y - c0] = True
        return out

    def to_flex_block_mask(self, device: Any = "cpu"):
        """A FlexAttention ``BlockMask`` with this layout and the packed ``mask_mod``."""
        from .flex import block_mask

        return block_mask(self, device, packed_mask_mod(self.node, self.docs, device))


def packed_blocks(node: ir.Node, docs: Documents, block_size: int = 128,
                  key_block_size: int | None = None) -> PackedLayout:
    """The block layout of the packed mask with query blocks of ``block_size`` and key blocks
    of ``key_block_size`` (default: the same)."""
    bq = positive_int(block_size, "block_size")
    bk = bq if key_block_size is None else positive_int(key_block_size, "key_block_size")
    N = docs.total
    nqb, nkb = -(-N // bq), -(-N // bk)
    row, lo, hi = packed.row_intervals(node, docs)
    # cut each interval at key-block boundaries
    kb0, kb1 = lo // bk, (hi - 1) // bk
    pieces = kb1 - kb0 + 1
    total = int(pieces.sum())
    guard.check(total * 40.0, f"a packed block layout ({total:,} interval pieces, "
                f"N = {N:,})", "use a larger block size or fewer tokens")
    src = np.repeat(np.arange(len(row)), pieces)
    kb = kb0[src] + (np.arange(total) - np.repeat(np.cumsum(pieces) - pieces, pieces))
    a = np.maximum(lo[src], kb * bk)
    b = np.minimum(hi[src], (kb + 1) * bk)
    key = (row[src] // bq) * nkb + kb
    tiles, inv = np.unique(key, return_inverse=True)
    count = np.bincount(inv, weights=b - a).astype(np.int64)
    qb, cb = tiles // nkb, tiles % nkb
    rows_in = np.minimum(N, (qb + 1) * bq) - qb * bq
    cols_in = np.minimum(N, (cb + 1) * bk) - cb * bk
    full = count == rows_in * cols_in

    def csr(sel):
        ptr = np.zeros(nqb + 1, np.int64)
        np.cumsum(np.bincount(qb[sel], minlength=nqb), out=ptr[1:])
        return ptr.astype(np.int32), cb[sel].astype(np.int32)

    fp, fi = csr(full)
    pp, pi = csr(~full)
    return PackedLayout(node, docs, bq, bk, fp, fi, pp, pi)


def packed_mask_mod(node: ir.Node, docs: Documents, device: Any = "cpu"):
    """``mask_mod(b, h, q_idx, kv_idx)`` of the packed mask (positions past N are masked)."""
    import torch

    N = docs.total
    row, lo, hi = packed.row_intervals(node, docs)
    per = np.bincount(row, minlength=N)
    K = int(per.max()) if len(row) else 0
    if K > MAX_ROW_INTERVALS:
        r = int(np.argmax(per))
        d = int(docs.doc_of[r])
        raise SpattnError(f"the packed mask_mod tests at most {MAX_ROW_INTERVALS} key "
                          f"intervals per query; row {r:,} (document {d}, length "
                          f"{docs.lengths[d]:,}) has {K} (a periodic pattern in a long "
                          "document): run it with spattn.attention(..., documents=...)")
    K = max(K, 1)
    guard.check(N * K * 8.0, f"packed mask_mod tables ({N:,} rows × {K} intervals)")
    slot = np.arange(len(row)) - np.repeat(np.cumsum(per) - per, per)
    tlo = np.zeros((N + 1, K), np.int32)
    thi = np.zeros((N + 1, K), np.int32)  # row N: past the end, no interval
    tlo[row, slot] = lo
    thi[row, slot] = hi
    tlo_t = torch.from_numpy(tlo).to(device)
    thi_t = torch.from_numpy(thi).to(device)

    def mask_mod_fn(b, h, q_idx, kv_idx):
        q = torch.clamp(q_idx, 0, N)
        if K > UNROLL:
            j = kv_idx[..., None]
            return ((tlo_t[q] <= j) & (j < thi_t[q])).any(-1)
        out = (tlo_t[q, 0] <= kv_idx) & (kv_idx < thi_t[q, 0])
        for k in range(1, K):
            out = out | ((tlo_t[q, k] <= kv_idx) & (kv_idx < thi_t[q, k]))
        return out

    return mask_mod_fn
