"""Block layouts: a pattern lowered to the tiles a block-sparse kernel runs.

In: a canonical pattern node, sequence length ``n``, query/key block sizes, optionally ``m``
queries (the last m positions). Out: :class:`BlockLayout` (the GPU backend's input, built by
:func:`to_blocks`), whose format is defined below by the loop that rebuilds the token mask.
The classification itself is :mod:`spattn.blocks.classify`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from .. import guard, ir, tiles
from ..bind import bind
from ..checks import check_n, positive_int, query_count
from ..errors import ResourceError, SpattnError
from ..lower import MAX_DENSE_N
from ..predicate import numpy_mask
from ..printing import text
from ..tiles import A, E, F, Grid, P
from .classify import classify, resolve


def expand_runs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenate ``range(lo[t], hi[t])`` for every run (int32)."""
    lens = hi - lo
    total = int(lens.sum())
    out = np.ones(total, np.int32)
    if total == 0:
        return out
    nz = lens > 0
    lo, hi, lens = lo[nz], hi[nz], lens[nz]
    offs = np.cumsum(lens) - lens
    out[offs[0]] = lo[0]
    out[offs[1:]] = lo[1:] - hi[:-1] + 1
    np.cumsum(out, out=out)
    return out


class BlockLayout:
    """A pattern lowered to tiles for a block-sparse kernel.

    Geometry: ``m`` queries (positions ``n - m .. n - 1``, bottom-right aligned) and ``n`` keys;
    query block ``a`` holds query rows ``a*block_q .. min(m, (a+1)*block_q) - 1``, key block
    ``c`` holds keys ``c*block_k .. min(n, (c+1)*block_k) - 1``; ``num_q_blocks`` and
    ``num_k_blocks`` count them.

    Format (compressed block rows, int32 numpy arrays, indices sorted within a row):

    * ``full_ptr`` (num_q_blocks + 1), ``full_idx``: the key blocks of query block ``a`` in
      which every (query, key) pair is attended are ``full_idx[full_ptr[a]:full_ptr[a+1]]``;
    * ``part_ptr``, ``part_idx``: likewise the *partial* key blocks, where some but not all
      pairs are attended; their element mask is :meth:`tile_mask` (on GPU: a predicate
      generated from the pattern IR, evaluated inside the kernel);
    * ``full_t_ptr`` / ``full_t_idx`` and ``part_t_ptr`` / ``part_t_idx``: the transpose (for
      key block ``c``, its query blocks), used by the backward pass; computed on first use.

    Every other tile is empty. The contract, as a loop that rebuilds the token-level mask
    (this is :meth:`to_mask`)::

        M = np.zeros((m, n), bool)
        for a in range(L.num_q_blocks):
            r = slice(a * L.block_q, min(m, (a + 1) * L.block_q))
            for c in L.full_idx[L.full_ptr[a]:L.full_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = True
            for c in L.part_idx[L.part_ptr[a]:L.part_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = L.tile_mask(a, c)

    ``M`` equals rows ``n - m:`` of ``pattern.to_dense(n)``.
    """

    def __init__(self, node: ir.Node, n: int, m: int, block_q: int, block_k: int,
                 full_ptr: np.ndarray, full_idx: np.ndarray, part_ptr: np.ndarray,
                 part_idx: np.ndarray):
        self.node = node
        self.n, self.m, self.block_q, self.block_k = n, m, block_q, block_k
        self.num_q_blocks = (m + block_q - 1) // block_q
        self.num_k_blocks = (n + block_k - 1) // block_k
        self.full_ptr, self.full_idx = full_ptr, full_idx
        self.part_ptr, self.part_idx = part_ptr, part_idx
        self._cache: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return (f"BlockLayout({text(self.node)!r}, n={self.n}, m={self.m}, "
                f"block=({self.block_q}, {self.block_k}), full={self.num_full}, "
                f"partial={self.num_partial})")

    @property
    def num_full(self) -> int:
        """Number of full tiles (every pair attended)."""
        return len(self.full_idx)

    @property
    def num_partial(self) -> int:
        """Number of partial tiles (need the element mask)."""
        return len(self.part_idx)

    @property
    def nonzero_blocks(self) -> int:
        """Number of tiles with at least one pair."""
        return self.num_full + self.num_partial

    def _rows(self, ptr):
        return np.repeat(np.arange(self.num_q_blocks, dtype=np.int32), np.diff(ptr))

    def _transpose(self, ptr, idx):
        a = self._rows(ptr)
        dt = np.uint16 if self.num_k_blocks <= 65535 else np.int64
        order = np.argsort(idx.astype(dt), kind="stable")  # radix sort for 16-bit keys
        tptr = np.zeros(self.num_k_blocks + 1, np.int32)
        np.cumsum(np.bincount(idx, minlength=self.num_k_blocks), out=tptr[1:])
        return tptr, a[order].astype(np.int32)

    @cached_property
    def _full_t(self):
        return self._transpose(self.full_ptr, self.full_idx)

    @cached_property
    def _part_t(self):
        return self._transpose(self.part_ptr, self.part_idx)

    @property
    def full_t_ptr(self) -> np.ndarray:
        """Transposed form: key block c's full query blocks are
        ``full_t_idx[full_t_ptr[c]:full_t_ptr[c + 1]]``."""
        return self._full_t[0]

    @property
    def full_t_idx(self) -> np.ndarray:
        """Query-block indices of full tiles, grouped by key block (see full_t_ptr)."""
        return self._full_t[1]

    @property
    def part_t_ptr(self) -> np.ndarray:
        """Transposed form of the partial tiles: offsets per key block."""
        return self._part_t[0]

    @property
    def part_t_idx(self) -> np.ndarray:
        """Query-block indices of partial tiles, grouped by key block (see part_t_ptr)."""
        return self._part_t[1]

    def to_dense(self) -> np.ndarray:
        """Block-level matrix (num_q_blocks, num_k_blocks), uint8: 0 empty, 1 partial,
        2 full."""
        guard.check(float(self.num_q_blocks) * self.num_k_blocks,
                    f"a dense {self.num_q_blocks}×{self.num_k_blocks} block matrix")
        out = np.zeros((self.num_q_blocks, self.num_k_blocks), np.uint8)
        out[self._rows(self.part_ptr), self.part_idx] = 1
        out[self._rows(self.full_ptr), self.full_idx] = 2
        return out

    def tile_mask(self, a: int, c: int) -> np.ndarray:
        """The exact element mask of tile ``(a, c)``: (rows, keys) bool."""
        g = Grid(self.n, self.m, self.block_q, self.block_k)
        if not (0 <= a < g.nqb and 0 <= c < g.nkb):
            raise SpattnError(f"tile ({a}, {c}) is outside the {g.nqb}×{g.nkb} block grid")
        i = np.arange(g.qs[a], g.qe[a], dtype=np.int64)[:, None]
        j = np.arange(g.cs[c], g.ce[c], dtype=np.int64)[None, :]
        return numpy_mask(self._bound, i, j, self.n)

    @cached_property
    def _bound(self):
        return bind(self.node, self.n)

    def to_mask(self) -> np.ndarray:
        """The token-level (m, n) mask rebuilt from the layout (small sizes only)."""
        if self.n > MAX_DENSE_N:
            raise ResourceError(f"to_mask at n = {self.n:,} would build an m×n matrix; the "
                                f"limit is n <= {MAX_DENSE_N:,}")
        m, n, L = self.m, self.n, self
        M = np.zeros((m, n), bool)
        for a in range(L.num_q_blocks):
            r = slice(a * L.block_q, min(m, (a + 1) * L.block_q))
            for c in L.full_idx[L.full_ptr[a]:L.full_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = True
            for c in L.part_idx[L.part_ptr[a]:L.part_ptr[a + 1]]:
                M[r, c * L.block_k:(c + 1) * L.block_k] = L.tile_mask(a, c)
        return M

    def to_flex_block_mask(self, device: Any = "cpu"):
        """A FlexAttention ``BlockMask`` with this layout (partial blocks evaluate the
        pattern's ``mask_mod``), for ``flex_attention`` with Q_LEN = m and KV_LEN = n.

        As in ``create_block_mask``, a tile that reaches past the end of the sequence (the
        last query block when block_q does not divide m, the last key block when block_k does
        not divide n) is listed as partial even when all its in-range pairs are attended."""
        from .flex import block_mask

        return block_mask(self, device)


def to_blocks(node: ir.Node, n: int, block_size: int = 128, key_block_size: int | None = None,
              m: int | None = None) -> BlockLayout:
    """Lower ``node`` to a :class:`BlockLayout` with query blocks of ``block_size`` and key
    blocks of ``key_block_size`` (default: the same), for ``m`` queries (default ``n``)."""
    n = check_n(n)
    bq = positive_int(block_size, "block_size")
    bk = bq if key_block_size is None else positive_int(key_block_size, "key_block_size")
    m = query_count(m, n)
    g = Grid(n, m, bq, bk)
    b = bind(node, n)
    leaves: dict = {}
    row, lo, hi, lab = classify(b, g, leaves)
    total = int((hi - lo).sum())
    guard.check(total * 8.0, f"a block layout of {total:,} tiles at n = {n:,}")
    und = lab == A
    if und.any():
        # settle undecided tiles, then splice them back as one-tile runs
        ua, uc = row[und], lo[und]
        lens = hi[und] - lo[und]
        ta = np.repeat(ua, lens)
        tc = expand_runs(uc, hi[und]).astype(np.int64)
        tl = resolve(b, g, ta, tc, leaves)
        keep = ~und
        row, lo, hi, lab = tiles.sort_runs((np.concatenate([row[keep], ta]),
                                       np.concatenate([lo[keep], tc]),
                                       np.concatenate([hi[keep], tc + 1]),
                                       np.concatenate([lab[keep], tl])), g)
        keep = lab != E
        row, lo, hi, lab = row[keep], lo[keep], hi[keep], lab[keep]

    def csr(label):
        sel = lab == label
        r, a, b = row[sel], lo[sel], hi[sel]
        ptr = np.zeros(g.nqb + 1, np.int64)
        np.cumsum(np.bincount(r, weights=b - a, minlength=g.nqb).astype(np.int64), out=ptr[1:])
        return ptr.astype(np.int32), expand_runs(a, b)

    fp, fi = csr(F)
    pp, pi = csr(P)
    return BlockLayout(node, n, m, bq, bk, fp, fi, pp, pi)
