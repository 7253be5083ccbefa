"""Receptive field: how far information spreads through stacked layers of a pattern.

In: a pattern node and n (exhaustive methods) or its :class:`~spattn.analysis.families.
Families` (structural method). Out: ``{"reachable", "hops_to_full", "coverage"}`` (SPEC
section 2), exact.

How: brute force (all-source shortest paths, or dense boolean products) for small n; a bitset
search for moderate n; beyond, by structure: every row's keys are a *core* interval around the
query plus a few constant *hub* keys; core reach sets stay intervals and are composed by
doubling; hubs are handled exactly when they are closed (hub rows only read hubs, e.g.
attention sinks) or saturating (a full row whose key every row reads, e.g. global tokens).
Otherwise the structural method gives up (None) and the caller says the figure is estimated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..lower import to_csr
from .families import Families, expand_keys
from .rows import row_figures

HUB_MAX = 16  #: most hub keys the structural receptive field accepts


def depths(hops: int) -> list[int]:
    """1, 2, 4, ... below hops_to_full, then hops_to_full itself (always at least 1)."""
    out = [1]
    while out[-1] * 2 < hops:
        out.append(out[-1] * 2)
    if hops > out[-1]:
        out.append(hops)
    return out


def rf_from_sizes(n, sizes_by_L, total_inf, hops):
    """The receptive-field dict from reach-set sizes by depth."""
    cov = {L: sizes_by_L(L) / (float(n) * n) for L in depths(hops)}
    return {"reachable": total_inf / (float(n) * n), "hops_to_full": int(hops), "coverage": cov}


def rf_brute(node, n) -> dict[str, Any]:
    """All-source search on the exact CSR (small n)."""
    m = to_csr(node, n)
    nnz = m.nnz
    if nnz * n < 5e7:
        from scipy.sparse.csgraph import shortest_path

        g = m.T.tocsr().astype(np.float64)  # edge j -> i when M[i, j]
        d = shortest_path(g, directed=True, unweighted=True)  # d[j, i]
        fin = np.isfinite(d)
        hops = int(d[fin].max()) if fin.any() else 0
        dd = np.where(fin, d, np.inf)
        return rf_from_sizes(n, lambda L: float((dd <= L).sum()), float(fin.sum()), hops)
    a = m.toarray().astype(np.float32)
    np.fill_diagonal(a, 1.0)
    r = np.eye(n, dtype=np.float32)
    sizes = [float(n)]
    while True:
        nr = ((a @ r) > 0).astype(np.float32)
        s = float(nr.sum())
        if s == sizes[-1]:
            break
        sizes.append(s)
        r = nr
    hops = len(sizes) - 1
    return rf_from_sizes(n, lambda L: sizes[min(L, hops)], sizes[-1], hops)


def rf_bitset(node, n: int, nnz: int, work_cap: float = 3e8) -> dict[str, Any] | None:
    """Exact search for moderate n: every query's reach set as a row of bits, one hop per
    step (``R[i] |= R[k]`` for the keys k of i), until nothing changes. None when the work
    (pairs × words × steps) would pass ``work_cap``."""
    W = (n + 63) // 64
    if (nnz + n) * W * 2 > work_cap:
        return None
    m = to_csr(node, n)
    import scipy.sparse as sp

    a = (m + sp.eye_array(n, dtype=bool, format="csr")).tocsr()
    a.sort_indices()
    indptr, indices = a.indptr.astype(np.int64), a.indices.astype(np.int64)
    i = np.arange(n)
    R = np.zeros((n, W), np.uint64)
    R[i, i // 64] = np.left_shift(np.uint64(1), (i % 64).astype(np.uint64))
    sizes = [float(n)]
    work = 0.0
    step = max(1, int(4_000_000 // max(1, W * max(1, (indptr[-1] // n)))))
    while True:
        Rn = np.empty_like(R)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            p0, p1 = indptr[r0], indptr[r1]
            Rn[r0:r1] = np.bitwise_or.reduceat(R[indices[p0:p1]], indptr[r0:r1] - p0, axis=0)
        s = float(np.bitwise_count(Rn).sum())
        work += float(indptr[-1]) * W
        if s == sizes[-1]:
            break
        sizes.append(s)
        R = Rn
        if work > work_cap:
            return None
    hops = len(sizes) - 1
    return rf_from_sizes(n, lambda L: sizes[min(L, hops)], sizes[-1], hops)


class _Core:
    """Core reach intervals composed by doubling: ``T[k]`` = reach in ``2**k`` hops."""

    def __init__(self, lo, hi):
        self.T = [(lo, hi)]
        self._mono = {}
        self._sp = {}
        while True:
            nl, nh = self.compose(self.T[-1], len(self.T) - 1)
            pl, ph = self.T[-1]
            if np.array_equal(nl, pl) and np.array_equal(nh, ph):
                break
            self.T.append((nl, nh))
        self.F = self.T[-1]

    def _rq(self, k, which, a, b):
        arr = self.T[k][which]
        key = (k, which)
        if key not in self._mono:
            self._mono[key] = bool((arr[1:] >= arr[:-1]).all())
        if self._mono[key]:
            return arr[a] if which == 0 else arr[b - 1]
        if key not in self._sp:
            op = np.minimum if which == 0 else np.maximum
            levels = [arr]
            j = 1
            while 2 * j <= len(arr):
                p = levels[-1]
                levels.append(op(p[:-j], p[j:]))
                j *= 2
            self._sp[key] = levels
        levels = self._sp[key]
        ln = b - a
        k2 = np.floor(np.log2(ln)).astype(np.int64)
        out = np.empty(len(a), arr.dtype)
        op = np.minimum if which == 0 else np.maximum
        for lev in np.unique(k2).tolist():
            sel = k2 == lev
            tab = levels[lev]
            out[sel] = op(tab[a[sel]], tab[b[sel] - (1 << lev)])
        return out

    def compose(self, cur, k):
        """Reach ``cur`` followed by ``2**k`` more hops."""
        lo, hi = cur
        return self._rq(k, 0, lo, hi), self._rq(k, 1, lo, hi)

    def reach(self, L: int):
        if L & (L - 1) == 0 and L:
            k = L.bit_length() - 1
            return self.T[k] if k < len(self.T) else self.F
        n = len(self.T[0][0])
        dt = self.T[0][0].dtype
        cur = (np.arange(n, dtype=dt), np.arange(1, n + 1, dtype=dt))
        k = 0
        while L:
            if L & 1:
                cur = self.F if k >= len(self.T) else self.compose(cur, k)
            L >>= 1
            k += 1
        return cur

    def first_depth(self, done) -> np.ndarray:
        """Per query, the smallest L with ``done(lo_L, hi_L)`` true (monotone in L); -1 when
        never (checked on the fixpoint)."""
        n = len(self.T[0][0])
        dt = self.T[0][0].dtype
        lo, hi = np.arange(n, dtype=dt), np.arange(1, n + 1, dtype=dt)
        res = np.zeros(n, np.int64)
        ok0 = done(lo, hi)
        never = ~done(*self.F)
        depth = np.zeros(n, np.int64)
        for k in range(len(self.T) - 1, -1, -1):
            nl, nh = self.compose((lo, hi), k)
            adv = ~done(nl, nh)
            lo, hi = np.where(adv, nl, lo), np.where(adv, nh, hi)
            depth += adv.astype(np.int64) << k
        res = np.where(ok0, 0, depth + 1)
        return np.where(never, -1, res)


def rf_structural(f: Families) -> dict[str, Any] | None:
    n = f.n
    fa, fc = f.fa, f.fc
    # classify families relative to the query i (fixed within a range)
    la, ha = f.lo0, f.hi0
    core_f = (la <= fa + 1) & (ha >= fa)  # contains i or touches it
    extra = ~core_f
    # core arrays per row: {i} merged with the (at most two) families containing or touching i
    i = np.arange(n, dtype=np.int64)
    clo, chi = i.copy(), i + 1
    cf = np.flatnonzero(core_f)
    if len(cf):
        r = expand_keys(fa[cf], fc[cf] - fa[cf])
        k = np.repeat(cf, fc[cf] - fa[cf])
        np.minimum.at(clo, r, f.lo0[k] + f.slo[k] * (r - fa[k]))
        np.maximum.at(chi, r, f.hi0[k] + f.shi[k] * (r - fa[k]))

    def rows_with_key(h):
        """Boolean over rows: h is a key of row i, or h == i."""
        lo0, slo, hi0, shi = la, f.slo, ha, f.shi
        up = np.where(slo == 1, fa + h - lo0, np.where(lo0 <= h, fc - 1, fa - 1))
        dn = np.where(shi == 1, fa + h + 1 - hi0, np.where(hi0 > h, fa, fc))
        r0, r1 = np.maximum(fa, dn), np.minimum(fc - 1, up) + 1
        ok = r1 > r0
        d = np.zeros(n + 1, np.int64)
        np.add.at(d, r0[ok], 1)
        np.add.at(d, r1[ok], -1)
        out = np.cumsum(d[:n]) > 0
        out[h] = True
        return out

    # saturating node: a full row whose key every row reads (global tokens): 2 hops to all
    full_rows = np.flatnonzero((clo == 0) & (chi == n))
    for g in full_rows[:8].tolist():
        if rows_with_key(g).all():
            hops = 0 if n == 1 else 1 if len(full_rows) == n else 2
            cov = {1: row_cov1(f)}
            if hops == 2:
                cov[2] = 1.0
            return {"reachable": 1.0, "hops_to_full": hops, "coverage": cov}
    if (extra & ((f.slo != 0) | (f.shi != 0))).any():
        return None
    # hubs: the keys of extra families
    if extra.any():
        pairs = np.unique(np.stack([la[extra], ha[extra]], 1), axis=0)
        if int((pairs[:, 1] - pairs[:, 0]).sum()) > 64 * HUB_MAX:
            return None
        hubs = np.unique(expand_keys(pairs[:, 0], pairs[:, 1] - pairs[:, 0]))
        if len(hubs) > HUB_MAX:
            return None
    else:
        hubs = np.zeros(0, np.int64)
    H = len(hubs)
    if H:
        use = [rows_with_key(int(h)) for h in hubs]
    if H:
        # closed hubs: every hub row reads only hubs
        hub_set = np.zeros(n + 1, np.int64)
        hub_set[hubs + 1] = 1
        cntH = np.cumsum(hub_set).astype(np.int32)
        for h in hubs.tolist():
            if cntH[chi[h]] - cntH[clo[h]] != chi[h] - clo[h]:
                return None
    core = _Core(clo.astype(np.int32), chi.astype(np.int32))  # n < 2**31: halves traffic
    if H:
        # extras of hub rows are hubs by construction; distances among hubs
        INF = 1 << 40
        DH = np.full((H, H), INF, np.int64)
        for a_ in range(H):
            for b_ in range(H):
                if a_ == b_:
                    DH[a_, b_] = 0
                elif use[a_][hubs[b_]]:
                    DH[a_, b_] = 1
        for k in range(H):
            DH = np.minimum(DH, DH[:, k:k + 1] + DH[k:k + 1, :])
        nonhub = np.ones(n, bool)
        nonhub[hubs] = False
        # e_h(i) = 1 + dcore(U_h -> i), U_h = non-hub rows reading h
        e, seen = [], {}
        for k in range(H):
            U = use[k] & nonhub
            key = U.tobytes()
            if key not in seen:
                if U[nonhub].all():
                    fd = np.zeros(n, np.int64)
                else:
                    pre = np.concatenate([[0], np.cumsum(U)])
                    fd = core.first_depth(lambda lo, hi, pre=pre: (pre[hi] - pre[lo]) > 0)
                seen[key] = np.where(fd >= 0, fd + 1, INF)
            e.append(seen[key])
        dh = np.full((H, n), INF, np.int64)  # d(h -> i) for non-hub i
        for a_ in range(H):
            for b_ in range(H):
                if DH[a_, b_] < INF:
                    dh[a_] = np.minimum(dh[a_], DH[a_, b_] + e[b_])
        dh[:, ~nonhub] = INF
    else:
        cntH = np.zeros(n + 1, np.int32)
        nonhub = np.ones(n, bool)
        dh = np.zeros((0, n), np.int64)
        DH = np.zeros((0, 0), np.int64)
        INF = 1 << 40

    def core_size(lo, hi):
        if not H:
            return hi - lo
        return (hi - lo) - (cntH[hi] - cntH[lo])

    Fsize = core_size(*core.F)

    def size_sum(Lx):
        lo, hi = core.reach(Lx)
        s = float(core_size(lo, hi)[nonhub].sum())
        if H:
            s += float((dh <= Lx).sum()) + float((DH <= Lx).sum())
        return s

    total_inf = float(Fsize[nonhub].sum())
    if H:
        total_inf += float((dh < INF).sum()) + float((DH < INF).sum())
    fd = core.first_depth(lambda lo, hi: core_size(lo, hi) == Fsize)
    hops = int(fd[nonhub].max()) if nonhub.any() else 0
    if H:
        fin = dh[dh < INF]
        if len(fin):
            hops = max(hops, int(fin.max()))
        fin = DH[DH < INF]
        hops = max(hops, int(fin.max()))
    return rf_from_sizes(n, size_sum, total_inf, hops)


def row_cov1(f: Families) -> float:
    """Coverage after one layer: each query's keys plus itself."""
    r = row_figures(f)
    n = f.n
    return (r["nnz"] + n - r["diag"]) / (n * n)
