"""The Triton backend's stride permutation: ``[causal &] (stride(s) | R)`` runs the stride part
on a sequence reordered by (position mod s, position), where its pairs form dense diagonal
blocks instead of touching every tile.

In: a pattern and sizes. Out: :func:`decompose` (the split into an ordinary part and a
permuted stride part, or None when it would not halve the tiles) and :class:`PermPlan` (the
permutation, its tile lists and the kernel predicate evaluated at original positions).
"""

from __future__ import annotations

import os

import numpy as np

from spattn.cache import LRUCache

from .triton_codegen import predicate_tensors

_DECOMPOSED = LRUCache("triton stride decompositions", 256)


class PermPlan:
    """The stride part of a pattern run in a permuted order (see :func:`_decompose`): query
    and key positions sorted by (position mod s, position), so that pairs with
    ``i ≡ j (mod s)`` fall in dense diagonal blocks. The layout is a superset of the touched
    tiles (all treated as partial); the generated predicate, evaluated at the original
    positions read from ``QPOS``/``KPOS``, keeps it exact."""

    def __init__(self, pattern, s, causal, n, m, bq, bk, device):
        import torch

        off = n - m
        pq = np.arange(off, n, dtype=np.int64)
        pk = np.arange(n, dtype=np.int64)
        self.qperm = np.lexsort((pq, pq % s))
        self.kperm = np.lexsort((pk, pk % s))
        qpos, kpos = pq[self.qperm], pk[self.kperm]
        self.num_q_blocks = (m + bq - 1) // bq
        self.num_k_blocks = (n + bk - 1) // bk
        qa, kc = _class_tile_pairs(qpos, kpos, s, bq, bk, causal, self.num_k_blocks)
        ptr = np.zeros(self.num_q_blocks + 1, np.int64)
        np.cumsum(np.bincount(qa, minlength=self.num_q_blocks), out=ptr[1:])
        order = np.argsort(kc, kind="stable")
        tptr = np.zeros(self.num_k_blocks + 1, np.int64)
        np.cumsum(np.bincount(kc, minlength=self.num_k_blocks), out=tptr[1:])

        def t(x):
            x = np.asarray(x)
            return torch.from_numpy(np.ascontiguousarray(
                x if len(x) else np.zeros(1), dtype=np.int32)).to(device)

        zq, zk = np.zeros(self.num_q_blocks + 1), np.zeros(self.num_k_blocks + 1)
        self.fwd = [t(zq), t([]), t(ptr), t(kc)]
        self.bwd = [t(zk), t([]), t(tptr), t(qa[order])]
        self.qpos, self.kpos = t(qpos), t(kpos)
        self.qperm_t = torch.from_numpy(self.qperm).to(device)
        self.kperm_t = torch.from_numpy(self.kperm).to(device)
        self.qinv_t = torch.from_numpy(np.argsort(self.qperm)).to(device)
        self.kinv_t = torch.from_numpy(np.argsort(self.kperm)).to(device)
        self.mod, self.prm, self.tab = predicate_tensors(pattern, n, device)
        self.tiles = len(kc)


def _class_tile_pairs(qpos, kpos, s, bq, bk, causal, nkb):
    """Tiles (query block, key block) of the permuted order holding some same-class pair
    (with j <= i when ``causal``): per tile, the runs of one class give segments
    (class, first position, last position); segments of equal class are joined."""

    def segments(pos, b):
        tile = np.arange(len(pos)) // b
        cls = pos % s
        start = np.ones(len(pos), bool)
        start[1:] = (tile[1:] != tile[:-1]) | (cls[1:] != cls[:-1])
        idx = np.flatnonzero(start)
        last = np.append(idx[1:], len(pos)) - 1
        return tile[idx], cls[idx], pos[idx], pos[last]

    qt, qc, qlo, qhi = segments(qpos, bq)
    kt, kcl, klo, khi = segments(kpos, bk)
    # key segments are sorted by class: the range of each class
    k0 = np.searchsorted(kcl, qc, side="left")
    k1 = np.searchsorted(kcl, qc, side="right")
    cnt = k1 - k0
    tot = int(cnt.sum())
    offs = np.cumsum(cnt) - cnt
    kk = np.arange(tot, dtype=np.int64) - np.repeat(offs, cnt) + np.repeat(k0, cnt)
    qq = np.repeat(np.arange(len(qt)), cnt)
    if causal:
        ok = klo[kk] <= qhi[qq]
        kk, qq = kk[ok], qq[ok]
    key = np.unique(qt[qq] * nkb + kt[kk])
    return key // nkb, key % nkb


def decompose(pattern, n: int, m: int, bq: int, bk: int | None = None):
    """See :func:`_decompose` (cached per pattern, sizes and the env switch)."""
    key = (pattern, n, m, bq, bq if bk is None else bk,
           os.environ.get("SPATTN_TRITON_PERMUTE", "1"))
    return _DECOMPOSED.get_or_create(key, lambda: _decompose(*key))


def _decompose(pattern, n: int, m: int, bq: int, bk: int, switch: str):
    """``[causal &] (stride(s) | R)`` with a constant s splits into ``[causal &] R`` (the
    ordinary layout) and ``[causal &] stride(s) - R`` (run in the permuted order): a disjoint
    union, merged by log-sum-exp. Chosen when the permuted order needs under half the tiles
    the stride touches in the original order (every tile when s <= bq + bk - 1). None
    otherwise."""
    from spattn import ir, prims
    from spattn.pattern import Pattern

    if switch in ("0", ""):
        return None
    node, causal = pattern.node, False
    cz = prims.CAUSAL
    if isinstance(node, ir.Inter) and len(node.items) == 2 and cz in node.items:
        causal = True
        node = [x for x in node.items if x != cz][0]
    items = node.items if isinstance(node, ir.Union) else (node,)
    strides = [x for x in items if isinstance(x, ir.Prim) and prims.of(x).residue_class
               and isinstance(x.args[0], ir.Const)]
    if not strides:
        return None
    st = max(strides, key=lambda x: x.args[0].value)
    s_val = st.args[0].value
    if s_val < 2 or s_val >= n:
        return None
    cq, ck = -(-m // s_val), -(-n // s_val)  # class lengths (queries, keys)
    permuted = s_val * (-(-cq // bq) + 1) * (-(-ck // bk) + 1)
    original = -(-m // bq) * -(-n // bk) * min(1.0, (bq + bk - 1) / s_val)
    if permuted >= 0.5 * original:
        return None
    rest = [x for x in items if x is not st]
    if rest:
        r = rest[0] if len(rest) == 1 else ir.Union(tuple(rest))
        p1 = Pattern(ir.Inter((cz, r)) if causal else r)
        p2 = Pattern(ir.Diff(ir.Inter((cz, st)) if causal else st, r))
    else:
        p1 = Pattern(ir.NONE)
        p2 = Pattern(ir.Inter((cz, st)) if causal else st)
    return p1, p2, s_val, causal
