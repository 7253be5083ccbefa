"""The CPU backend: exact sparse attention for CPU tensors, forward and backward.

In: q (B, H, m, D), k and v (B, H, n, D) on the CPU (float16, bfloat16, float32, float64), a
tuple of H patterns (one per head) and the softmax scale. Out: (B, H, m, D) in q's dtype,
differentiable in q, k and v through a custom autograd function with its own backward.

How: each distinct (pattern, n, m) is planned once (cached, thread-safe LRU bounded in bytes)
by :mod:`spattn.backends.cpu_planner` into an exact partition of its pairs into dense tiles,
grouped into components (band, periodic, heavy rows, rest). Inputs are read in their own
(B, H, S, D) layout as head-major (B*H, S, D) tensors, never copied to another layout. Each
bucket of equal-shape tiles runs as one call of PyTorch's fused CPU flash-attention kernel
(``aten::_scaled_dot_product_flash_attention_for_cpu``) over the tiles' query rows and keys,
read in place through strided views where the tiles are arithmetic (band, residue classes)
and gathered along the sequence (``index_select``) otherwise, with an additive 0 / -inf mask
that keeps exactly the tile's pairs; the
kernel returns the output and the row log-sum-exp. Components merge by log-sum-exp, so a pair
is counted once. The backward reruns each tile through the fused backward kernel fed the
*final* output and log-sum-exp, which makes every tile's gradient exactly its share of the
full softmax gradient; shares are summed in place (``index_add_`` for keys). Half-precision
inputs are computed in float32 (float64 stays float64) and cast back. Rows with no key give
zero output, zero gradients and no NaN. Work and memory are proportional to the tiles' area
(the pattern's pairs plus padding), never n x n; workspace is processed in chunks of a few MiB
and checked against the memory budget first.

Forward: runs of unmasked row blocks sharing their keys are fused into one taller tile per
block (``block(b)``: one kernel call over (n/b) tiles of b rows), and with a single component
and no gathered tile the result is written straight into the output.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from spattn import guard
from spattn.cache import LRUCache
from spattn.errors import ShapeError, SpattnError

from . import cpu_decode, cpu_docs
from .cpu_plan import Group, Plan, Strides, compute_dtype, heads_by_plan, plan_bytes
from .cpu_planner import build_plan

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BW = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CHUNK_BYTES = 6 << 20  #: gathered keys per batched call (small enough to be reused by malloc)
_CACHE_BYTES = 1 << 30  #: plans kept, by their size in memory
_CACHE_ENTRIES = 64


#: execution plans by (pattern, n, m), bounded in entries and in bytes
PLANS: LRUCache[tuple, Plan] = LRUCache("cpu plans", _CACHE_ENTRIES, _CACHE_BYTES,
                                        sizeof=plan_bytes)


def get_plan(pattern: Any, n: int, m: int, docs: Any = None,
             skip: frozenset = frozenset()) -> Plan:
    """The cached execution plan of ``pattern`` (a :class:`spattn.Pattern`) at (n, m), or
    over the packed documents ``docs`` (m = n = N; without the documents whose lengths are
    in ``skip``)."""
    return PLANS.get_or_create((pattern, n, m, docs, skip),
                               lambda: build_plan(pattern.node, n, m, docs=docs, skip=skip))


# ---------------------------------------------------------------------------------------------
# execution


def _chunks(T: int, per_tile: int):
    step = max(1, _CHUNK_BYTES // max(1, per_tile))
    for a in range(0, T, step):
        yield a, min(T, a + step)


def _runs(g: Group, per_tile: int):
    """Yield ``(a, b, strides)``: chunks of a group's segments, strides started at tile a."""
    for sg in g.segments:
        for a, b in _chunks(sg.stop - sg.start, per_tile):
            st = None if sg.strides is None else sg.strides.from_tile(a)
            yield sg.start + a, sg.start + b, st


def all_strided(plan: Plan) -> bool:
    """Whether every tile of the plan is read through strided views (no gathered run)."""
    return all(sg.strides is not None for c in plan.components for g in c.groups
               for sg in g.segments)


def _hview(x: torch.Tensor, t: int, s: int, base: int, tile_step: int, step: int):
    """Tiles of a head-major (BH, S, D) or (BH, S) tensor (any strides) as a strided view
    (t, BH, s[, D]): tile u, slot i is row base + u*tile_step + i*step. No copy."""
    sb, sr = x.stride(0), x.stride(1)
    if x.dim() == 2:
        return x.as_strided((t, x.shape[0], s), (tile_step * sr, sb, step * sr),
                            x.storage_offset() + base * sr)
    return x.as_strided((t, x.shape[0], s, x.shape[2]), (tile_step * sr, sb, step * sr,
                                                         x.stride(2)),
                        x.storage_offset() + base * sr)


class FastRun(NamedTuple):
    """A run of the head-major path: ``tiles`` tiles of ``rows`` query rows read through
    ``strides`` (None: gathered by the group's indices); ``span`` is the (start, stop) of the
    group's tiles it covers (their masks and indices), or None for fused unmasked tiles."""

    tiles: int
    rows: int
    strides: Strides | None
    span: tuple[int, int] | None


def _q(view, x: torch.Tensor, t: int, s: int, st: Strides):
    """The query-side view of ``t`` tiles of ``s`` rows at strides ``st``."""
    return view(x, t, s, st.q0, st.q_tile, st.q_step)


def _k(view, x: torch.Tensor, t: int, s: int, st: Strides):
    """The key-side view of ``t`` tiles of ``s`` keys at strides ``st``."""
    return view(x, t, s, st.k0, st.k_tile, st.k_step)


def fast_runs(g: Group) -> list[FastRun]:
    """The strided runs of a group for the head-major path. Unmasked runs whose tiles are
    consecutive row blocks sharing the same keys (``block``: q_tile = rows per tile,
    k_tile = 0) are fused into one tile of ``(stop - start) * bq`` rows, and consecutive fused
    tiles in arithmetic progression into one run: the same pairs, fewer and larger kernel
    calls (exact: rows are independent)."""
    if g.fast_runs is not None:
        return g.fast_runs
    runs: list[FastRun] = []
    for sg in g.segments:
        st, count = sg.strides, sg.stop - sg.start
        if st is None:  # gathered tiles
            runs.append(FastRun(count, g.bq, None, (sg.start, sg.stop)))
        elif g.bias is None and st.k_tile == 0 and st.q_step == 1 and st.q_tile == g.bq \
                and count > 1:
            s = count * g.bq
            prev = runs[-1] if runs else None
            if prev is not None and prev.span is None and prev.rows == s \
                    and prev.strides.k_step == st.k_step:
                P = prev.strides
                dQ, dK = P.q_tile, P.k_tile
                if prev.tiles == 1 and st.q0 - P.q0 >= s:
                    dQ, dK = st.q0 - P.q0, st.k0 - P.k0
                if (prev.tiles > 1 or dQ) and st.q0 - P.q0 == prev.tiles * dQ \
                        and st.k0 - P.k0 == prev.tiles * dK and dQ >= s and dK >= 0:
                    runs[-1] = FastRun(prev.tiles + 1, s,
                                       Strides(P.q0, dQ, 1, P.k0, dK, st.k_step), None)
                    continue
            runs.append(FastRun(1, s, Strides(st.q0, 0, 1, st.k0, 0, st.k_step), None))
        else:
            runs.append(FastRun(count, g.bq, st, (sg.start, sg.stop)))
    g.fast_runs = runs
    return runs


def _hgather(x: torch.Tensor, idx: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Rows ``idx`` of a head-major (BH, S, D) tensor as (t, BH, s, D) tiles (a view of one
    gathered copy)."""
    return x.index_select(1, idx).view(x.shape[0], t, s, x.shape[2]).transpose(0, 1)


def _layout(comp, m: int) -> tuple[bool, torch.Tensor]:
    """Whether the component has gathered tiles, and the query rows (< m) that none of its
    tiles holds (cached on the component)."""
    if comp.layout is None:
        seen = torch.zeros(m + 1, dtype=torch.bool)
        for g in comp.groups:
            seen[g.qs] = True
        gathered = any(sg.strides is None for g in comp.groups for sg in g.segments)
        comp.layout = (gathered, torch.nonzero(~seen[:m]).flatten())
    return comp.layout


def _forward_hm(plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                out: torch.Tensor | None = None):
    """Output (BH, m, D) and log-sum-exp (BH, m) of one plan for head-major inputs
    q (BH, m, D), k, v (BH, n, D) (any strides with unit last stride): strided tiles are read
    in place from the caller's layout, gathered tiles by ``index_select`` along the sequence;
    with a single component and no empty row the result is written straight into ``out``.
    No layout copy of q, k or v."""
    BH, m, D = q.shape
    per_row = BH * D * q.element_size()
    parts = []
    direct = len(plan.components) == 1 and not bool(plan.empty.any())
    for comp in plan.components:
        gathered, miss = _layout(comp, m)
        rows = m + 1 if gathered else m  # gathered padding slots write row m
        if direct and not gathered and out is not None:
            o = out
        else:
            o = q.new_empty(BH, rows, D)
        lse = q.new_empty(BH, rows)
        if not direct and len(miss):  # rows outside this component's tiles: no pairs here
            o.index_fill_(1, miss, 0.0)
            lse.index_fill_(1, miss, float("-inf"))
        for g in comp.groups:
            bias = g.bias_as(q.dtype)
            for run in fast_runs(g):
                s = run.rows
                step = max(1, _CHUNK_BYTES // max(1, g.L * per_row * max(1, s // g.bq)))
                for a in range(0, run.tiles, step):
                    t = min(run.tiles, a + step) - a
                    mask = None if run.span is None or bias is None else \
                        bias[run.span[0] + a:run.span[0] + a + t]
                    if run.strides is None:
                        u = run.span[0] + a
                        ki = g.kidx[u * g.L:(u + t) * g.L]
                        ot, lt = _FLASH(_hgather(q, g.qg[u * s:(u + t) * s], t, s),
                                        _hgather(k, ki, t, g.L), _hgather(v, ki, t, g.L),
                                        attn_mask=mask, scale=scale)
                        idx = g.qs[u * s:(u + t) * s]
                        o.index_copy_(1, idx, ot.transpose(0, 1).reshape(BH, t * s, D))
                        lse.index_copy_(1, idx, lt.transpose(0, 1).reshape(BH, t * s)
                                        .to(lse.dtype))
                        continue
                    st = run.strides.from_tile(a)
                    ot, lt = _FLASH(_q(_hview, q, t, s, st), _k(_hview, k, t, g.L, st),
                                    _k(_hview, v, t, g.L, st), attn_mask=mask, scale=scale)
                    _q(_hview, o, t, s, st).copy_(ot)
                    _q(_hview, lse, t, s, st).copy_(lt)
        parts.append((o[:, :m], lse[:, :m]))
    if not parts:
        return q.new_zeros(BH, m, D), q.new_full((BH, m), float("-inf"))
    return _merge(parts, out)


def _merge(parts, out: torch.Tensor | None = None):
    """Combine components' (output, log-sum-exp) by log-sum-exp: each pair belongs to exactly
    one component, so this is the softmax over their union. Rows empty everywhere stay 0."""
    if len(parts) == 1:
        return parts[0]
    L = torch.logsumexp(torch.stack([p[1] for p in parts]), 0)
    Ls = torch.where(torch.isneginf(L), torch.zeros_like(L), L)
    res = torch.zeros_like(parts[0][0]) if out is None else out.zero_()
    for o, lse in parts:
        res.addcmul_(o, torch.exp(lse - Ls).unsqueeze(-1))
    return res, L


def _backward(plan: Plan, q, k, v, out, lse, dout, scale: float):
    """Gradients (dq, dk, dv) of one plan for head-major q, out, dout (BH, m, D), lse (BH, m)
    and k, v (BH_kv, n, D), given the final output and log-sum-exp (whose use makes each
    tile's gradient its exact share of the whole). Strided tiles are read in place, gathered
    ones by ``index_select`` along the sequence."""
    BH, m, D = q.shape
    dq = q.new_zeros(BH, m + 1, D)
    dk = torch.zeros(k.shape, dtype=k.dtype)
    dv = torch.zeros(v.shape, dtype=v.dtype)
    # empty rows never appear in tiles; padding slots read row m: output 0, lse +inf
    inf = float("inf")
    lse_b = torch.cat([torch.where(torch.isneginf(lse), torch.full_like(lse, inf), lse),
                       lse.new_full((BH, 1), inf)], 1)
    out_p = torch.cat([out, out.new_zeros(BH, 1, D)], 1)
    dout_p = torch.cat([dout, dout.new_zeros(BH, 1, D)], 1)
    per_row = BH * D * q.element_size()
    for comp in plan.components:
        for g in comp.groups:
            bias = g.bias_as(q.dtype)
            for a, b, st in _runs(g, 2 * g.L * per_row):
                t = b - a
                ki = g.kidx[a * g.L:b * g.L]
                mask = None if bias is None else bias[a:b]
                if st is None:
                    idx = g.qs[a * g.bq:b * g.bq]
                    lt = lse_b.index_select(1, idx).view(BH, t, g.bq).transpose(0, 1)
                    gq, gk, gv = _FLASH_BW(_hgather(dout_p, idx, t, g.bq),
                                           _hgather(q, g.qg[a * g.bq:b * g.bq], t, g.bq),
                                           _hgather(k, ki, t, g.L), _hgather(v, ki, t, g.L),
                                           _hgather(out_p, idx, t, g.bq), lt, 0.0, False,
                                           attn_mask=mask, scale=scale)
                    dq.index_add_(1, idx, gq.transpose(0, 1).reshape(BH, t * g.bq, D))
                else:
                    gq, gk, gv = _FLASH_BW(_q(_hview, dout_p, t, g.bq, st),
                                           _q(_hview, q, t, g.bq, st),
                                           _k(_hview, k, t, g.L, st), _k(_hview, v, t, g.L, st),
                                           _q(_hview, out_p, t, g.bq, st),
                                           _q(_hview, lse_b, t, g.bq, st), 0.0, False,
                                           attn_mask=mask, scale=scale)
                    _q(_hview, dq, t, g.bq, st).add_(gq)
                    if st.q_tile == 0 and t > 1:  # pragma: no cover - runs never repeat rows
                        raise AssertionError("overlapping query tiles")
                    # padding key slots of strided tiles read other keys; their gradient is
                    # exactly 0 (masked), so index_add_ through kidx is still exact
                h = gk.shape[1]
                dk.index_add_(1, ki, gk.transpose(0, 1).reshape(h, t * g.L, D))
                dv.index_add_(1, ki, gv.transpose(0, 1).reshape(h, t * g.L, D))
    return dq[:, :m], dk, dv


def _head_major(x: torch.Tensor, heads: list[int], dtype: torch.dtype) -> torch.Tensor:
    """(B, H, S, D) -> (B*len(heads), S, D) in ``dtype``: a view when possible, no copy."""
    B, H, S, D = x.shape
    if len(heads) != H:
        x = x[:, heads]
    x = x.to(dtype)
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x.reshape(B * len(heads), S, D)


def _put(dst: torch.Tensor, heads: list[int], val: torch.Tensor) -> None:
    """Write (B, len(heads), ...) ``val`` into ``dst[:, heads]`` (a plain copy for all)."""
    if len(heads) == dst.shape[1]:
        dst.copy_(val)
    else:
        dst[:, heads] = val


def kv_heads(heads: list[int], H: int, Hkv: int) -> tuple[list[int], bool]:
    """The key/value heads that query heads ``heads`` read (grouped-query attention: query
    head h reads key head h // (H // Hkv)) and whether they are whole groups in order, so
    that the fused kernel maps them itself (no copy); otherwise one key head per query head
    (a copy of those heads)."""
    if Hkv == H:
        return heads, True
    g = H // Hkv
    kvh = sorted({h // g for h in heads})
    if heads == [h for j in kvh for h in range(j * g, (j + 1) * g)]:
        return kvh, True
    return [h // g for h in heads], False


def forward_lse(q, k, v, plans: tuple[Plan, ...], scale: float):
    """Output and log-sum-exp (B, H, m), both in the compute dtype (float64 for float64
    inputs, else float32), of one plan per head; no autograd."""
    B, H, m, D = q.shape
    ct = compute_dtype(q.dtype)
    out = torch.empty(B, H, m, D, dtype=ct)
    lse = torch.empty(B, H, m, dtype=ct)
    q, k, v = q.detach(), k.detach(), v.detach()
    for plan, heads in heads_by_plan(plans):
        kvh, _ = kv_heads(heads, H, k.shape[1])
        # read (B, H, S, D) in place: no layout copies
        o, lz = _forward_hm(plan, _head_major(q, heads, ct), _head_major(k, kvh, ct),
                            _head_major(v, kvh, ct), scale,
                            out.view(B * H, m, D) if len(heads) == H else None)
        if o.data_ptr() != out.data_ptr():
            _put(out, heads, o.view(B, len(heads), m, D))
        _put(lse, heads, lz.view(B, len(heads), m))
    return out, lse


def backward_lse(q, k, v, out, lse, dout, plans: tuple[Plan, ...], scale: float):
    """Gradients (dq, dk, dv) in the inputs' dtypes, given the output and log-sum-exp of
    :func:`forward_lse`; no autograd (first derivatives only)."""
    q, k, v, dout = q.detach(), k.detach(), v.detach(), dout.detach()
    ct = out.dtype
    H = q.shape[1]
    groups = [(plan, heads, *kv_heads(heads, H, k.shape[1])) for plan, heads in
              heads_by_plan(plans)]
    whole = all(aligned for *_, aligned in groups)  # each key head written by one plan
    dq = torch.empty(q.shape, dtype=ct)
    dk, dv = ((torch.empty if whole else torch.zeros)(x.shape, dtype=ct) for x in (k, v))
    B, _, m, D = q.shape
    n = k.shape[2]
    for plan, heads, kvh, aligned in groups:
        nh = len(heads)
        lz = lse if nh == H else lse[:, heads]
        gq, gk, gv = _backward(plan, _head_major(q, heads, ct), _head_major(k, kvh, ct),
                               _head_major(v, kvh, ct), _head_major(out, heads, ct),
                               lz.to(ct).reshape(B * nh, m), _head_major(dout, heads, ct),
                               scale)
        _put(dq, heads, gq.reshape(B, nh, m, D))
        gk, gv = (x.view(B, len(kvh), n, D) for x in (gk, gv))
        if aligned:
            _put(dk, kvh, gk)
            _put(dv, kvh, gv)
        else:  # key heads repeated per query head: their shares add up
            at = torch.tensor(kvh, dtype=torch.long)
            dk.index_add_(1, at, gk)
            dv.index_add_(1, at, gv)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def double_backward(q, k, v, dout, plans: tuple[Plan, ...], scale: float,
                    needs: tuple[bool, bool, bool]):
    """Gradients (dq, dk, dv) that are themselves differentiable (``create_graph=True``):
    recomputed through :mod:`.cpu_graph`'s plain torch ops, exact to every order."""
    from . import cpu_graph

    g = q.shape[1] // k.shape[1]

    def f(q, k, v):
        kk, vv = (x.repeat_interleave(g, 1) if g > 1 else x for x in (k, v))
        return cpu_graph.attention(q, kk, vv, plans, scale)

    return cpu_graph.recomputed_grads(f, (q, k, v), dout, needs)


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plans, scale):  # type: ignore[override]
        out, lse = forward_lse(q, k, v, plans, scale)
        ctx.plans, ctx.scale = plans, scale
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients must be differentiable
            grads = double_backward(q, k, v, dout, ctx.plans, ctx.scale,
                                    tuple(ctx.needs_input_grad[:3]))
        else:
            grads = backward_lse(q, k, v, out, lse, dout, ctx.plans, ctx.scale)
        return (*grads, None, None)


def few_queries(q, k, v, patterns, scale: float):
    """:meth:`CPUBackend.attention` for m <= MAX_M queries over any n keys: per pattern, the
    rows' intervals at n, cut into pieces read in place or gathered; no O(n) copy or mask."""
    guard.tune_malloc()
    B, H, m, D = q.shape
    n = k.shape[2]
    lay = cpu_decode.contiguous(n)
    outs: dict[int, torch.Tensor] = {}
    for p, runs in cpu_decode.head_groups(patterns):
        row, lo, hi = cpu_decode.pattern_rows(p, n, n - m, n)
        plan = cpu_decode.pieces(row, lo, hi, n - m, m, lay, cpu_decode.gather_limit(k))
        for h0, h1, k0, k1 in cpu_decode.kv_runs(runs, H, k.shape[1]):
            outs[h0] = cpu_decode.attention(q[:, h0:h1], [k[:, k0:k1]], [v[:, k0:k1]], plan,
                                            float(scale))
    parts = [outs[h] for h in sorted(outs)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class CPUBackend:
    """Exact sparse attention on CPU tensors (see the module docstring)."""

    name = "cpu"
    supports_documents = True  #: plans packed sequences itself (``documents=``)

    def is_available(self) -> bool:
        return True

    def supports(self, q: Any) -> bool:
        return (isinstance(q, torch.Tensor) and q.device.type == "cpu"
                and q.dtype in _DTYPES)

    def plan(self, pattern: Any, n: Any, m: int | None = None) -> Plan:
        """The cached plan of ``pattern`` (a :class:`spattn.Pattern`; compile text with
        :func:`spattn.compile`) with n keys and m queries (default n); ``n`` may be a
        :class:`spattn.Documents` (a packed sequence, every position a query)."""
        from spattn.checks import check_n, query_count
        from spattn.documents import Documents
        from spattn.pattern import Pattern

        if not isinstance(pattern, Pattern):
            raise SpattnError(f"CPUBackend.plan takes a spattn.Pattern, got "
                              f"{type(pattern).__name__}; use spattn.compile(text)")
        if isinstance(n, Documents):
            return get_plan(pattern, n.total, n.total, n)
        n = check_n(n)
        return get_plan(pattern, n, query_count(m, n))

    def plans(self, q, k, patterns, docs: Any = None,
              skip: frozenset = frozenset()) -> tuple[Plan, ...]:
        """One cached plan per head for these tensors (validated, budget checked), over the
        packed documents ``docs`` when given."""
        guard.tune_malloc()
        if not self.supports(q):
            raise ShapeError(f"the cpu backend runs CPU tensors of dtype float16, bfloat16, "
                             f"float32 or float64; got {q.dtype} on {q.device}")
        B, H, m, D = q.shape
        n = k.shape[2]
        if len(patterns) != H:
            raise ShapeError(f"got {len(patterns)} patterns for H = {H} heads")
        es = 8 if q.dtype == torch.float64 else 4
        # inputs in the compute dtype, the output, the log-sum-exp and their gradients
        guard.check(es * (3 * B * H * (m + 2 * n) * D + B * H * m),
                    f"sparse attention workspace for B={B}, H={H}, m={m}, n={n}, D={D}",
                    "use smaller tensors")
        cache: dict[Any, Plan] = {}
        plans = tuple(cache[p] if p in cache else cache.setdefault(p, get_plan(p, n, m, docs, skip))
                      for p in patterns)
        return plans

    def attention(self, q, k, v, patterns, scale, documents: Any = None):
        """Differentiable sparse attention (first and higher derivatives). With at most
        :data:`~spattn.backends.cpu_decode.MAX_M` queries (decoding) only the keys the rows
        attend are read (:mod:`.cpu_decode`), in place where they are runs. With
        ``documents`` (a :class:`spattn.Documents`, m = n = N) the packed sequence is
        planned as one pattern: tiles run across documents, one batched call per tile
        shape whatever the number of documents."""
        if documents is not None:
            return self._packed(q, k, v, patterns, scale, documents)
        if q.shape[2] <= cpu_decode.MAX_M and self.supports(q):
            return few_queries(q, k, v, patterns, scale)
        return _SparseAttention.apply(q, k, v, self.plans(q, k, patterns), float(scale))

    def _packed(self, q, k, v, patterns, scale, docs):
        """Packed documents: long documents whose pattern is dense (``causal``, ``full``) by
        the fused kernel directly, the rest by one packed plan (:mod:`.cpu_docs`)."""
        shared = all(p is patterns[0] for p in patterns)
        dense = cpu_docs.dense_classes(patterns[0].node, docs) if shared else {}
        skip = frozenset(dense)
        if len(skip) == len(docs.classes):  # every row comes from the dense part
            out = q.new_empty(q.shape)
        else:
            out = _SparseAttention.apply(q, k, v, self.plans(q, k, patterns, docs, skip),
                                         float(scale))
        if not dense:
            return out
        pos, dout = cpu_docs.dense_part(q, k, v, docs, dense, scale)
        return cpu_docs.combine(out, pos, dout)

    def forward_lse(self, q, k, v, patterns, scale, documents: Any = None):
        """``(out, lse)`` in the compute dtype, no autograd (the ``spattn::attention`` op);
        over packed ``documents`` the whole sequence is one plan."""
        return forward_lse(q, k, v, self.plans(q, k, patterns, documents), float(scale))

    def backward_lse(self, q, k, v, out, lse, dout, patterns, scale, documents: Any = None):
        """First derivatives from :meth:`forward_lse`'s results, no autograd."""
        return backward_lse(q, k, v, out, lse, dout, self.plans(q, k, patterns, documents),
                            float(scale))

    def double_backward(self, q, k, v, dout, patterns, scale, needs, documents: Any = None):
        """Differentiable gradients (``create_graph=True``)."""
        return double_backward(q, k, v, dout, self.plans(q, k, patterns, documents),
                               float(scale), needs)
