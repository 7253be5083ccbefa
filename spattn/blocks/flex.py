"""FlexAttention interop: a pattern's ``mask_mod``, and a ``BlockMask`` from a block layout
(no ``create_block_mask`` call: the layout already knows which tiles are empty, partial or
full).

In: a canonical pattern node at sequence length ``n`` (and an offset for queries that are the
last m positions), or a :class:`~spattn.blocks.layout.BlockLayout`. Out: a torch-traceable
``mask_mod(b, h, q_idx, kv_idx)`` (index sets and random keys are captured tensors; every
argument was clamped to n when the pattern was bound, so huge arguments never overflow), and a
``torch.nn.attention.flex_attention.BlockMask``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ir
from ..bind import bind
from ..predicate import TorchOps, evaluate


def mask_mod(node: ir.Node, n: int, off: int = 0, device: Any = "cpu"):
    """``mask_mod(b, h, q_idx, kv_idx)`` of ``node`` at ``n``; query index q is position
    ``q + off``. Positions past the end (FlexAttention pads to whole blocks) are masked."""
    import torch

    bound = bind(node, n)
    ops = TorchOps(bound, n, device)

    def mask_mod_fn(b, h, q_idx, kv_idx):
        i = q_idx + off
        j = kv_idx
        i_c = torch.clamp(i, 0, n - 1)
        j_c = torch.clamp(j, 0, n - 1)
        return evaluate(bound, ops, i_c, j_c) & (i < n) & (j < n)

    return mask_mod_fn


def block_mask(layout, device: Any = "cpu", mm=None):
    """The ``BlockMask`` of a block layout (see ``BlockLayout.to_flex_block_mask``), with
    ``mm`` as its ``mask_mod`` (default: the layout's pattern at its n)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    L = layout
    dense = L.to_dense()
    if L.m % L.block_q:
        dense[-1][dense[-1] == 2] = 1
    if L.n % L.block_k:
        col = dense[:, -1]
        col[col == 2] = 1

    def enc(sel):
        cnt = sel.sum(axis=1).astype(np.int32)
        idx = np.argsort(~sel, axis=1, kind="stable").astype(np.int32)
        return (torch.from_numpy(cnt)[None, None].to(device),
                torch.from_numpy(np.ascontiguousarray(idx))[None, None].to(device))

    kv_num, kv_idx = enc(dense == 1)
    f_num, f_idx = enc(dense == 2)
    if mm is None:
        mm = mask_mod(L.node, L.n, L.n - L.m, device)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx,
                                    BLOCK_SIZE=(L.block_q, L.block_k), mask_mod=mm,
                                    seq_lengths=(L.m, L.n))
