"""Few-query attention on the CPU (decoding, chunked prefill): read only the attended keys.

In: m <= :data:`MAX_M` query rows with their column intervals in a *virtual key space*
[0, U) (the normal form of :mod:`spattn.lower`), a :class:`Layout` that says where each
virtual key lives (source tensor, slot), and the sources' keys and values (B, h, S, D). Out:
the output and log-sum-exp of the rows, differentiable in q and every source.

How: intervals are split where the layout changes source or jumps, and cut at every end point
into elementary segments, each attended by a fixed set of rows (a bit per row). A segment of at
least :data:`LONG` keys is read in place (a slice of its source: no copy), with a per-row
0 / -inf mask only when some rows do not attend it; the short segments are gathered into one
small tile with an (m, keys) mask. Each piece is one call of PyTorch's fused CPU
flash-attention kernel, which returns its output and row log-sum-exp; pieces merge by
log-sum-exp (each pair belongs to one piece). Work and memory are proportional to the attended
keys, never to n: ``spattn.attention`` with m << n and :class:`spattn.KVCache` both use this.
The backward reruns every piece through the fused backward kernel with the final output and
log-sum-exp; gradients of a higher order recompute the pieces with plain torch ops.
Other devices (CUDA tensors in a :class:`spattn.KVCache`) run the same pieces with plain
torch ops.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import numpy as np
import torch

from spattn import guard
from spattn.cache import LRUCache

MAX_M = 16  #: most query rows per call (more are processed in chunks of this many)
LONG = 32  #: segments of at least this many keys are read in place, shorter ones gathered
GATHER_BYTES = 1 << 18  #: rows attending at most this many bytes of keys gather them all
SERIAL_WORK = 1 << 23  #: multiply-adds below which a call runs on the calling thread only

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BW = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class Layout(NamedTuple):
    """Where virtual keys live: run r covers virtual keys [start[r], start[r + 1]) (the last
    run ends at ``size``) at slots slot[r], slot[r] + 1, … of source src[r]."""

    start: np.ndarray
    src: np.ndarray
    slot: np.ndarray
    size: int


def contiguous(n: int, src: int = 0) -> Layout:
    """Virtual key u is slot u of one source (the caller's own k and v)."""
    z = np.zeros(1, np.int64)
    return Layout(z, z + src, z.copy(), n)


class Piece(NamedTuple):
    """One kernel call: keys ``lo:hi`` of source ``src`` read in place (``idx`` None), or keys
    gathered from the sources by ``idx`` (a tuple of (source, index tensor)); ``mask`` the
    additive (m, keys) mask or None (every row attends every key); ``rows`` the rows with at
    least one key in the piece."""

    src: int
    lo: int
    hi: int
    idx: tuple | None
    mask: torch.Tensor | None
    rows: np.ndarray


def _split(row, lo, hi, lay: Layout):
    """Intervals cut at the layout's run boundaries (each piece within one run)."""
    ends = np.append(lay.start[1:], lay.size)
    a = np.searchsorted(lay.start, lo, "right") - 1
    b = np.searchsorted(lay.start, hi - 1, "right") - 1
    cnt = b - a + 1
    if (cnt == 1).all():
        return row, lo, hi
    rep = np.repeat(np.arange(len(lo)), cnt)
    run = a[rep] + (np.arange(len(rep)) - (np.cumsum(cnt) - cnt)[rep])
    return row[rep], np.maximum(lo[rep], lay.start[run]), np.minimum(hi[rep], ends[run])


def _merge_slots(src, slot, length, bits):
    """Segments that are adjacent in their source's slots and attended by the same rows,
    merged into one (fewer kernel calls: a sink next to a ring buffer's start, say)."""
    if len(src) < 2:
        return src, slot, length, bits
    order = np.lexsort((slot, src))
    src, slot, length, bits = src[order], slot[order], length[order], bits[:, order]
    joins = (src[1:] == src[:-1]) & (slot[1:] == slot[:-1] + length[:-1]) \
        & (bits[:, 1:] == bits[:, :-1]).all(0)
    if not joins.any():
        return src, slot, length, bits
    first = np.flatnonzero(np.concatenate([[True], ~joins]))
    total = np.add.reduceat(length, first)
    return src[first], slot[first], total, bits[:, first]


def pieces(row, lo, hi, r0: int, m: int, lay: Layout, gather_all: int = 0) -> list[Piece]:
    """The pieces of rows ``r0:r0+m`` whose normal-form intervals (row, lo, hi) are given in
    virtual key space (see the module docstring). When the rows attend at most
    ``gather_all`` keys in all, they are gathered into one piece (one kernel call)."""
    keep = hi > lo
    row, lo, hi = row[keep], lo[keep], hi[keep]
    if len(lo) == 0:
        return []
    row, lo, hi = _split(row - r0, lo, hi, lay)
    if m == 1:  # one row: its intervals are the segments
        s_lo, s_hi, bits = lo, hi, np.ones((1, len(lo)), bool)
    else:
        pts = np.unique(np.concatenate([lo, hi]))
        cov = np.zeros((m, len(pts)), np.int32)
        np.add.at(cov, (row, np.searchsorted(pts, lo)), 1)
        np.add.at(cov, (row, np.searchsorted(pts, hi)), -1)
        bits = np.cumsum(cov, axis=1)[:, :-1] > 0  # segment e = [pts[e], pts[e + 1])
        used = bits.any(0)
        s_lo, s_hi, bits = pts[:-1][used], pts[1:][used], bits[:, used]
    s_run = np.searchsorted(lay.start, s_lo, "right") - 1
    # from here on a segment is (source, first slot, length), sorted by source and slot
    src, slot, size, bits = _merge_slots(lay.src[s_run],
                                         lay.slot[s_run] + (s_lo - lay.start[s_run]),
                                         s_hi - s_lo, bits)
    long_ = size >= LONG
    if int(size.sum()) <= gather_all:
        long_[:] = False
    if (~long_).sum() == 1:  # a lone short segment is read in place too: nothing to gather
        long_[:] = True
    out: list[Piece] = []
    inf = float("-inf")
    for e in np.flatnonzero(long_).tolist():
        rows = bits[:, e]
        mask = None
        if not rows.all():
            col = torch.zeros(m, 1)
            col[torch.from_numpy(~rows)] = inf
            mask = col.expand(m, int(size[e]))
        a = int(slot[e])
        out.append(Piece(int(src[e]), a, a + int(size[e]), None, mask, rows.copy()))
    short = np.flatnonzero(~long_)
    if len(short):
        length = size[short]
        seg = np.repeat(short, length)
        slots = slot[seg] + np.arange(len(seg)) - np.repeat(np.cumsum(length) - length, length)
        srcs = src[seg]
        idx = tuple((int(x), torch.from_numpy(slots[srcs == x]))
                    for x in np.unique(srcs).tolist())
        cols = bits[:, seg]
        mask = None
        if not cols.all():
            mask = torch.zeros(m, len(seg))
            mask[torch.from_numpy(~cols)] = inf
        out.append(Piece(-1, 0, len(seg), idx, mask, cols.any(1)))
    return out


def gather_limit(k: torch.Tensor) -> int:
    """How many keys of (B, h, S, D) ``k`` fit :data:`GATHER_BYTES` (keys and values)."""
    B, h, _, D = k.shape
    return GATHER_BYTES // max(1, 2 * B * h * D * k.element_size())


def rows(node, n: int, r0: int, r1: int):
    """Normal-form intervals ``(row, lo, hi)`` of rows ``r0:r1`` of ``node`` at ``n``."""
    from spattn.lower import row_intervals

    parts = [x[2:] for x in row_intervals(node, n, r0, r1)]
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


#: length-independent patterns bound once (False: rows depend on n or are too many)
_FIXED: LRUCache = LRUCache("decode fixed patterns", 256)
#: rows lowered ahead, by (pattern, block of AHEAD_ROWS rows): (row, lo, hi)
_AHEAD: LRUCache = LRUCache("decode rows ahead", 256, 64 << 20,
                            sizeof=lambda g: sum(x.nbytes for x in g))
AHEAD_ROWS = 64  #: rows of a length-independent pattern lowered at once
FIXED_EST = 64  #: ... when a row has at most this many intervals


def _fixed(pattern):
    from spattn.bind import bind
    from spattn.checks import MAX_N
    from spattn.evict import length_independent

    if not length_independent(pattern.node):
        return False
    b = bind(pattern.node, MAX_N)
    return [b, MAX_N] if b.est <= FIXED_EST else False  # [bound, smallest n checked]


def pattern_rows(pattern, n: int, r0: int, r1: int):
    """:func:`rows` of a :class:`spattn.Pattern`. A length-independent pattern's rows are
    the same at every n (clipped to keys < n), so they are lowered :data:`AHEAD_ROWS` rows at
    a time and later calls (the next decode steps) slice them."""
    entry = _FIXED.get_or_create(pattern, lambda: _fixed(pattern))
    if entry is False:
        return rows(pattern.node, n, r0, r1)
    from spattn.bind import bind
    from spattn.checks import MAX_N
    from spattn.lower import eval_rows

    fixed, checked = entry
    if n < checked:  # a listed position must still be < n: binding at n raises if not
        bind(pattern.node, n)
        entry[1] = n  # valid at n, so at every larger n (positions are non-negative)

    def block(b: int):
        return _AHEAD.get_or_create((pattern, b), lambda: eval_rows(
            fixed, MAX_N, b * AHEAD_ROWS, min(MAX_N, (b + 1) * AHEAD_ROWS)))

    got = [block(b) for b in range(r0 // AHEAD_ROWS, (r1 - 1) // AHEAD_ROWS + 1)]
    if len(got) > 1:
        got = [tuple(np.concatenate([g[i] for g in got]) for i in range(3))]
    row = got[0][0]
    a, b = np.searchsorted(row, [r0, r1])
    row, lo, hi = row[a:b], got[0][1][a:b], np.minimum(got[0][2][a:b], n)  # keys < n only
    keep = lo < hi
    return (row, lo, hi) if keep.all() else (row[keep], lo[keep], hi[keep])


def head_groups(patterns) -> list[tuple]:
    """``(pattern, head runs)`` for each distinct pattern of a per-head tuple (one group for
    the common case of one pattern shared by every head)."""
    first = patterns[0]
    if all(p is first for p in patterns):
        return [(first, [(0, len(patterns))])]
    by: dict = {}
    for h, p in enumerate(patterns):
        by.setdefault(p, []).append(h)
    return [(p, head_runs(hs)) for p, hs in by.items()]


def kv_runs(runs, H: int, Hkv: int) -> list[tuple[int, int, int, int]]:
    """Query head runs ``(h0, h1)`` with the key/value heads ``(k0, k1)`` they read under
    grouped-query attention (query head h reads key head h // (H // Hkv)): runs of whole
    groups keep one call (the fused kernel maps the heads), others go head by head."""
    if Hkv == H:
        return [(a, b, a, b) for a, b in runs]
    g = H // Hkv
    out = []
    for a, b in runs:
        if a % g == 0 and b % g == 0:
            out.append((a, b, a // g, b // g))
        else:
            out.extend((h, h + 1, h // g, h // g + 1) for h in range(a, b))
    return out


def head_runs(heads: list[int]) -> list[tuple[int, int]]:
    """Sorted head indices as runs ``(h0, h1)`` of consecutive heads (slices: views)."""
    out: list[list[int]] = []
    for h in heads:
        if out and out[-1][1] == h:
            out[-1][1] = h + 1
        else:
            out.append([h, h + 1])
    return [(a, b) for a, b in out]


def gathered(plan: list[Piece]) -> int:
    """How many keys the plan gathers (copies); the rest are read in place."""
    return sum(p.hi - p.lo for p in plan if p.idx is not None)


def gather(xs, idx) -> torch.Tensor:
    """The keys (or values) at ``idx``, pairs ``(source, slots)``, of the sources ``xs``
    (B, h, S, D), side by side."""
    parts = [xs[s].index_select(2, i.to(xs[s].device)) for s, i in idx]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def piece_keys(p: Piece, xs) -> torch.Tensor:
    """The keys (or values) of a piece from the sources ``xs`` (B, h, S, D): a view of one
    source, or the gathered keys."""
    return xs[p.src][:, :, p.lo:p.hi] if p.idx is None else gather(xs, p.idx)


@contextlib.contextmanager
def serial(work: int):
    """Run small calls (fewer than :data:`SERIAL_WORK` multiply-adds) on one thread. Waking
    the intra-op pool costs microseconds on an idle machine but a scheduler time slice
    (about 10 ms, measured: 12 ms for a 36-key decode step that takes 11 us on one thread)
    when other processes keep the cores busy; a decode step is far too small to gain from a
    second thread. ``torch.set_num_threads`` is process-wide: set ``SPATTN_SERIAL=0`` to keep
    the thread count untouched (for programs that run torch from several Python threads)."""
    threads = torch.get_num_threads()
    if work >= SERIAL_WORK or threads == 1 or os.environ.get("SPATTN_SERIAL", "1") == "0":
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def work(q: torch.Tensor, plan: list[Piece]) -> int:
    """Multiply-adds of one forward over the plan (scores and values)."""
    B, h, m, D = q.shape
    return 2 * B * h * m * D * sum(p.hi - p.lo for p in plan)


def _dtype_of(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward(q, ks, vs, plan: list[Piece], scale: float, need_lse: bool = True):
    """``(out, lse)`` in the compute dtype, for q (B, h, m, D) and sources ``ks``, ``vs``
    (lse None when not ``need_lse``)."""
    B, h, m, D = q.shape
    ct = _dtype_of(q)
    if not plan:
        return q.new_zeros(B, h, m, D, dtype=ct), q.new_full((B, h, m), float("-inf"),
                                                             dtype=ct)
    parts = []
    for p in plan:
        k, v = piece_keys(p, ks), piece_keys(p, vs)
        mask = None if p.mask is None else p.mask.to(q.dtype)
        o, lse = _FLASH(q, k, v, attn_mask=mask, scale=scale)
        lse = lse.to(ct)
        if not p.rows.all():
            lse[:, :, torch.from_numpy(~p.rows)] = float("-inf")
        parts.append((o.to(ct), lse))
    if len(parts) == 1:
        return parts[0]
    lses = torch.stack([x[1] for x in parts], -1)
    w = torch.softmax(lses, -1).nan_to_num_(0.0)  # rows empty everywhere: all -inf
    res = (w.unsqueeze(-2) @ torch.stack([x[0] for x in parts], -2)).squeeze(-2)
    return res, (torch.logsumexp(lses, -1) if need_lse else None)


def backward(q, ks, vs, out, lse, dout, plan: list[Piece], scale: float, want_k):
    """First derivatives: dq and, for sources with ``want_k[s]``, dk and dv (else None)."""
    ct = out.dtype
    inf = float("inf")
    lse_b = torch.where(torch.isneginf(lse), torch.full_like(lse, inf), lse)
    dq = torch.zeros(q.shape, dtype=ct)
    dks = [torch.zeros(k.shape, dtype=ct) if w else None for k, w in zip(ks, want_k)]
    dvs = [torch.zeros(v.shape, dtype=ct) if w else None for v, w in zip(vs, want_k)]
    qc, oc, dc = q.to(ct), out.to(ct), dout.to(ct)
    for p in plan:
        k, v = piece_keys(p, ks).to(ct), piece_keys(p, vs).to(ct)
        mask = None if p.mask is None else p.mask.to(ct)
        gq, gk, gv = _FLASH_BW(dc, qc, k, v, oc, lse_b, 0.0, False, attn_mask=mask,
                               scale=scale)
        dq += gq
        if p.idx is None:
            if dks[p.src] is not None:
                dks[p.src][:, :, p.lo:p.hi] += gk
                dvs[p.src][:, :, p.lo:p.hi] += gv
            continue
        a = 0
        for s, i in p.idx:
            if dks[s] is not None:
                dks[s].index_add_(2, i, gk[:, :, a:a + len(i)])
                dvs[s].index_add_(2, i, gv[:, :, a:a + len(i)])
            a += len(i)
    return dq, dks, dvs


def differentiable(q, ks, vs, plan: list[Piece], scale: float):
    """The same attention with plain differentiable torch ops (for derivatives of every
    order): the pieces' keys side by side, one masked softmax."""
    B, h, m, D = q.shape
    ct = _dtype_of(q)
    if not plan:
        return q.to(ct) * 0
    U = sum(p.hi - p.lo for p in plan)
    guard.check(8 * B * h * m * U * 4, f"differentiable decode scores ({B}x{h}x{m}x{U})",
                "use fewer queries per call")
    k = torch.cat([piece_keys(p, ks) for p in plan], 2).to(ct)
    v = torch.cat([piece_keys(p, vs) for p in plan], 2).to(ct)
    if k.shape[1] != h:  # grouped-query attention: query head i reads key head i // (h // hk)
        k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // k.shape[1], 1)
    masks = [torch.zeros(m, p.hi - p.lo, dtype=ct, device=q.device) if p.mask is None
             else p.mask.to(q.device, ct) for p in plan]
    s = torch.matmul(q.to(ct), k.transpose(-1, -2)) * scale + torch.cat(masks, 1)
    keep = torch.isfinite(torch.cat(masks, 1)).any(1)  # rows with at least one key
    s = torch.where(keep.view(m, 1), s, torch.zeros_like(s))
    w = torch.softmax(s, -1) * keep.view(m, 1).to(ct)
    return torch.matmul(w, v)


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, plan, scale, nsrc, *kv):  # type: ignore[override]
        ks, vs = kv[:nsrc], kv[nsrc:]
        with serial(work(q, plan)):
            out, lse = forward(q.detach(), [x.detach() for x in ks],
                               [x.detach() for x in vs], plan, scale)
        ctx.plan, ctx.scale, ctx.nsrc = plan, scale, nsrc
        ctx.save_for_backward(q, out, lse, *kv)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, out, lse, *kv = ctx.saved_tensors
        nsrc = ctx.nsrc
        ks, vs = kv[:nsrc], kv[nsrc:]
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            xs = [x if x.requires_grad else x.detach() for x in (q, *kv)]
            with torch.enable_grad():
                wanted = [i for i, x in enumerate(xs) if x.requires_grad]
                o = differentiable(xs[0], xs[1:1 + nsrc], xs[1 + nsrc:], ctx.plan, ctx.scale)
                got = torch.autograd.grad(o, [xs[i] for i in wanted], dout, create_graph=True,
                                          allow_unused=True)
            grads = [None] * len(xs)
            for i, g in zip(wanted, got):
                grads[i] = torch.zeros_like(xs[i]) if g is None else g
            return (grads[0], None, None, None, *grads[1:])
        want = [need[4 + s] or need[4 + nsrc + s] for s in range(nsrc)]
        with serial(2 * work(q, ctx.plan)):
            dq, dks, dvs = backward(q.detach(), [x.detach() for x in ks],
                                    [x.detach() for x in vs], out, lse, dout.detach(),
                                    ctx.plan, ctx.scale, want)
        cast = [None if g is None else g.to(x.dtype) for g, x in zip(dks + dvs, kv)]
        return (dq.to(q.dtype), None, None, None, *cast)


def attend_rows(q, ks, vs, groups, n: int, lay: Layout, virtual, scale: float, check=None):
    """Rows n - m .. n - 1 of a sequence of n positions (q: (B, H, m, D), any m: chunks of
    :data:`MAX_M` rows) over keys stored as ``lay`` says in the sources ``ks``, ``vs``
    (B, H_kv, S, D). ``groups`` are :func:`head_groups`; ``virtual(lo, hi)`` maps interval
    end points from positions to virtual keys (and raises when a key is not held);
    ``check(pattern, row, lo, hi)``, if given, sees every chunk's intervals first."""
    B, H, m, D = q.shape
    gather = gather_limit(ks[-1])
    outs: dict[tuple[int, int], list] = {}
    for p, runs in groups:
        for r0 in range(n - m, n, MAX_M):
            r1 = min(n, r0 + MAX_M)
            row, lo, hi = pattern_rows(p, n, r0, r1)
            if check is not None:
                check(p, row, lo, hi)
            vlo, vhi = virtual(lo, hi)
            plan = pieces(row, vlo, vhi, r0, r1 - r0, lay, gather)
            for h0, h1, k0, k1 in kv_runs(runs, H, ks[-1].shape[1]):
                o = attention(q[:, h0:h1, r0 - n + m:r1 - n + m], [x[:, k0:k1] for x in ks],
                              [x[:, k0:k1] for x in vs], plan, scale)
                outs.setdefault((h0, h1), []).append(o)
    parts = [torch.cat(outs[key], 2) if len(outs[key]) > 1 else outs[key][0]
             for key in sorted(outs)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def attention(q, ks, vs, plan: list[Piece], scale: float) -> torch.Tensor:
    """Differentiable attention of q (B, h, m, D) over the pieces of sources ``ks``, ``vs``;
    (B, h, m, D) in q's dtype. Gathered keys are checked against the memory budget first."""
    B, h, m, D = q.shape
    guard.check(2 * B * h * D * gathered(plan) * q.element_size(),
                f"gathering {gathered(plan):,} keys for {m} queries", "use fewer queries")
    if q.device.type != "cpu":
        return differentiable(q, ks, vs, plan, scale).to(q.dtype)
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, *ks, *vs))):
        with serial(work(q, plan)):  # inference: no autograd node
            return forward(q, ks, vs, plan, float(scale), False)[0].to(q.dtype)
    return _Decode.apply(q, plan, float(scale), len(ks), *ks, *vs)
