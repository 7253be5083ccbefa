"""The Triton backend: block-sparse attention kernels driven by :class:`spattn.BlockLayout`.

In: q (B, H, m, D), k and v (B, H, n, D) on CUDA (or CPU tensors under ``TRITON_INTERPRET=1``,
which is how CI runs these kernels without a GPU), one pattern per head, a scale. Out: the
attention output, differentiable through Triton backward kernels.

How: each distinct pattern is lowered once per (n, m, block shape) to a block layout (cached)
and to a generated Triton predicate for its partial tiles (:mod:`.triton_codegen`). The
forward kernel runs an online softmax over a query block's full key blocks (no mask) and then
its partial ones (predicate), and saves the log-sum-exp; the backward computes dq over the
layout's rows and dk, dv over its transpose (no atomics). Heads sharing a pattern share one
launch. fp16, bf16 and fp32 (tf32 off: ``input_precision="ieee"``); any head dimension up to
256 (padded to a power of two ≥ 16); empty rows give zero output and zero gradients.

Stride lowering: a pattern ``[causal &] (stride(s) | R)`` is split into ``[causal &] R`` and
``[causal &] stride(s) - R`` (disjoint). The second part runs on q, k, v gathered into the
order sorted by (position mod s, position), where a stride's pairs form dense diagonal blocks
instead of touching every tile; the two partial results are merged by their log-sum-exp, and
the backward runs both parts with the merged statistics (gradients add). This is chosen only
when it needs under half the tiles (:func:`_decompose`); ``SPATTN_TRITON_PERMUTE=0`` turns it
off. Tile shapes come from :func:`block_shape`, or are timed per shape with
``SPATTN_TRITON_AUTOTUNE=1`` (:data:`CANDIDATES`). Few queries (m <= 16) run the forward
through the split-K kernel of :mod:`.triton_decode` (``SPATTN_TRITON_DECODE=0``: off).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from spattn.cache import LRUCache
from spattn.errors import ShapeError, SpattnError

from .triton_codegen import predicate_tensors
from .triton_decode import decode_enabled, decode_forward
from .triton_permute import PermPlan, decompose

_SUPPORTED = ("float16", "bfloat16", "float32")

#: every cache of this backend: bounded, thread-safe LRUs (see spattn.cache)
_LAYOUTS = LRUCache("triton layouts", 32)
_PLANS = LRUCache("triton plans", 32)
_PERM_PLANS = LRUCache("triton permuted plans", 64)
_HEADS = LRUCache("triton head indices", 1024)
_TUNED = LRUCache("triton autotuned tile shapes", 256)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return True


def block_shape(D: int, dtype: Any, device_type: str) -> tuple[int, int, int, int]:
    """(block_q, block_k, num_warps, num_stages) for head dim ``D``. Environment overrides:
    ``SPATTN_TRITON_BLOCK=BQxBK``."""
    env = os.environ.get("SPATTN_TRITON_BLOCK")
    if env:
        try:
            bq, bk = (int(x) for x in env.lower().split("x"))
        except ValueError:
            raise ShapeError(f"SPATTN_TRITON_BLOCK={env!r} is not BQxBK (e.g. 128x64)") from None
        return bq, bk, 4, 2
    if device_type != "cuda":  # interpreter: few, mid-sized tiles keep numpy efficient
        return 64, 64, 4, 1
    if D <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 2


def _layout(pattern, n: int, m: int, bq: int, bk: int):
    from spattn.blocks import to_blocks

    return _LAYOUTS.get_or_create((pattern, n, m, bq, bk), lambda: to_blocks(
        pattern.node, n, block_size=bq, key_block_size=bk, m=m))


class _Plan:
    """Device tensors for one (pattern, n, m, block shape, device)."""

    def __init__(self, pattern, n, m, bq, bk, device):
        import torch

        L = _layout(pattern, n, m, bq, bk)
        self.layout = L

        def t(x):
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32)).to(device)

        self.fwd = [t(L.full_ptr), t(L.full_idx if len(L.full_idx) else np.zeros(1)),
                    t(L.part_ptr), t(L.part_idx if len(L.part_idx) else np.zeros(1))]
        self._bwd = None
        self._t = t
        self.mod, self.prm, self.tab = predicate_tensors(pattern, n, device)

    @property
    def bwd(self):
        """The transposed layout (key block -> query blocks) on the device. On CUDA it is
        sorted there (a stable radix sort of the forward lists); elsewhere numpy's."""
        if self._bwd is None:
            L, t = self.layout, self._t
            if self.fwd[0].device.type == "cuda":
                self._bwd = [*device_transpose(self.fwd[0], self.fwd[1], L.num_full,
                                                L.num_k_blocks),
                             *device_transpose(self.fwd[2], self.fwd[3], L.num_partial,
                                                L.num_k_blocks)]
            else:
                self._bwd = [t(L.full_t_ptr),
                             t(L.full_t_idx if len(L.full_t_idx) else np.zeros(1)),
                             t(L.part_t_ptr),
                             t(L.part_t_idx if len(L.part_t_idx) else np.zeros(1))]
        return self._bwd


def device_transpose(ptr, idx, count: int, nkb: int):
    import torch

    dev = ptr.device
    tptr = torch.zeros(nkb + 1, dtype=torch.int32, device=dev)
    if count == 0:
        return tptr, torch.zeros(1, dtype=torch.int32, device=dev)
    idx = idx[:count].long()
    nqb = ptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(nqb, device=dev), (ptr[1:] - ptr[:-1]).long(),
                                   output_size=count)
    order = torch.sort(idx, stable=True).indices
    tptr[1:] = torch.cumsum(torch.bincount(idx, minlength=nkb), 0).to(torch.int32)
    return tptr, rows[order].to(torch.int32).contiguous()


def _plan(pattern, n, m, bq, bk, device) -> _Plan:
    return _PLANS.get_or_create((pattern, n, m, bq, bk, str(device)),
                                lambda: _Plan(pattern, n, m, bq, bk, device))


def _perm_plan(pattern, s, causal, n, m, bq, bk, device) -> PermPlan:
    return _PERM_PLANS.get_or_create(
        (pattern, s, causal, n, m, bq, bk, str(device)),
        lambda: PermPlan(pattern, s, causal, n, m, bq, bk, device))


def _heads(heads: list[int], device, dtype_name: str = "int32"):
    """Head-index tensors on the device, cached (no host-to-device copy per call)."""
    import torch

    return _HEADS.get_or_create((tuple(heads), str(device), dtype_name), lambda: torch.tensor(
        heads, dtype=getattr(torch, dtype_name), device=device))


def _groups(patterns) -> list[tuple[Any, list[int]]]:
    out: dict = {}
    for h, p in enumerate(patterns):
        out.setdefault(p, []).append(h)
    return list(out.items())


def _prec(dtype) -> str:
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(dtype) -> bool:
    """The CPU interpreter has no bfloat16 matmul: compute bf16 tiles in fp32 there."""
    import torch

    return interpreting() and dtype == torch.bfloat16


def _launch_fwd(pl, q, k, v, o, lse, hs, H, m, n, scale, cfg, perm=None):
    bq, bk, warps, stages = cfg
    extra = {} if interpreting() else {"num_warps": warps, "num_stages": stages}
    qpos = perm.qpos if perm is not None else pl.prm
    kpos = perm.kpos if perm is not None else pl.prm
    grid = (pl.num_q_blocks if perm is not None else pl.layout.num_q_blocks,
            q.shape[0] * hs.numel())
    pl.mod._fwd[grid](
        q, k, v, o, lse, hs, *pl.fwd, pl.prm, pl.tab, qpos, kpos,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        hs.numel(), H, m, n, n - m, scale * math.log2(math.e),
        D=q.shape[3], BM=bq, BN=bk, PREC=_prec(q.dtype), UPCAST=_upcast(q.dtype),
        PERM=perm is not None, **extra)


def _launch_bwd(pl, q, k, v, do, dq, dk, dv, lse, delta, hs, H, m, n, scale, cfg, perm=None):
    bq, bk, warps, stages = cfg
    extra = {} if interpreting() else {"num_warps": warps, "num_stages": stages}
    qpos = perm.qpos if perm is not None else pl.prm
    kpos = perm.kpos if perm is not None else pl.prm
    nqb = pl.num_q_blocks if perm is not None else pl.layout.num_q_blocks
    nkb = pl.num_k_blocks if perm is not None else pl.layout.num_k_blocks
    common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1),
              do.stride(2), hs.numel(), H, m, n, n - m, scale * math.log2(math.e), scale)
    meta = dict(D=q.shape[3], BM=bq, BN=bk, PREC=_prec(q.dtype), UPCAST=_upcast(q.dtype),
                PERM=perm is not None, **extra)
    B = q.shape[0]
    pl.mod._bwd_dq[(nqb, B * hs.numel())](
        q, k, v, do, dq, lse, delta, hs, *pl.fwd, pl.prm, pl.tab, qpos, kpos, *common, **meta)
    pl.mod._bwd_dkdv[(nkb, B * hs.numel())](
        q, k, v, do, dk, dv, lse, delta, hs, *pl.bwd, pl.prm, pl.tab, qpos, kpos, *common,
        **meta)


def _merge(o1, l1, o2, l2):
    """Combine two attention results over disjoint key sets (base-2 LSE, +inf = empty)."""
    import torch

    inf = float("inf")
    e1 = torch.where(l1 == inf, -inf, l1)
    e2 = torch.where(l2 == inf, -inf, l2)
    mx = torch.maximum(e1, e2)
    mx = torch.where(mx == -inf, 0.0, mx)
    w1, w2 = torch.exp2(e1 - mx), torch.exp2(e2 - mx)
    tot = w1 + w2
    lse = torch.where(tot > 0, mx + torch.log2(torch.where(tot > 0, tot, 1.0)), inf)
    tot = torch.where(tot > 0, tot, 1.0)
    o = o1.float() * (w1 / tot)[..., None] + o2.float() * (w2 / tot)[..., None]
    return o.to(o1.dtype), lse


def _gather(x, heads, perm):
    return x[:, heads].index_select(2, perm).contiguous()


def _forward(q, k, v, patterns, scale, cfg):
    import torch

    B, H, m, D = q.shape
    n = k.shape[2]
    if decode_enabled(m):  # few queries: split-K kernel; plans are built by the backward
        o, lse = decode_forward(q, k, v, patterns, scale)
        return o, lse, None
    o = torch.empty_like(q)
    lse = torch.empty((B, H, m), device=q.device, dtype=torch.float32)
    plans = _plan_list(patterns, n, m, cfg, q.device)
    for pl, heads, perm in plans:
        _launch_fwd(pl, q, k, v, o, lse, _heads(heads, q.device), H, m, n, scale, cfg)
        if perm is None:
            continue
        pp, hl = perm
        qp, kp, vp = _gather(q, hl, pp.qperm_t), _gather(k, hl, pp.kperm_t), \
            _gather(v, hl, pp.kperm_t)
        Hs = len(heads)
        o2 = torch.empty_like(qp)
        l2 = torch.empty((B, Hs, m), device=q.device, dtype=torch.float32)
        hloc = _heads(list(range(Hs)), q.device)
        _launch_fwd(pp, qp, kp, vp, o2, l2, hloc, Hs, m, n, scale, cfg, perm=pp)
        o2 = o2.index_select(2, pp.qinv_t)
        l2 = l2.index_select(2, pp.qinv_t)
        om, lm = _merge(o[:, hl], lse[:, hl], o2, l2)
        o[:, hl] = om
        lse[:, hl] = lm
    return o, lse, plans


def _backward(q, k, v, o, lse, do, plans, scale, cfg):
    import torch

    B, H, m, D = q.shape
    n = k.shape[2]
    do = do.contiguous()
    delta = (o.float() * do.float()).sum(-1).contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    for pl, heads, perm in plans:
        hs = _heads(heads, q.device)
        _launch_bwd(pl, q, k, v, do, dq, dk, dv, lse, delta, hs, H, m, n, scale, cfg)
        if perm is None:
            continue
        pp, hl = perm
        Hs = len(heads)
        qp, kp, vp = _gather(q, hl, pp.qperm_t), _gather(k, hl, pp.kperm_t), \
            _gather(v, hl, pp.kperm_t)
        dop = _gather(do, hl, pp.qperm_t)
        lp = lse[:, hl].index_select(2, pp.qperm_t).contiguous()
        dp = delta[:, hl].index_select(2, pp.qperm_t).contiguous()
        dq2, dk2, dv2 = torch.empty_like(qp), torch.empty_like(kp), torch.empty_like(vp)
        hloc = _heads(list(range(Hs)), q.device)
        _launch_bwd(pp, qp, kp, vp, dop, dq2, dk2, dv2, lp, dp, hloc, Hs, m, n, scale, cfg,
                    perm=pp)
        for g, g2, inv in ((dq, dq2, pp.qinv_t), (dk, dk2, pp.kinv_t), (dv, dv2, pp.kinv_t)):
            g[:, hl] = (g[:, hl].float() + g2.index_select(2, inv).float()).to(g.dtype)
    return dq, dk, dv


def _refuse_double_backward() -> None:
    if __import__("torch").is_grad_enabled():
        raise SpattnError("the triton backend computes first derivatives only: a gradient "
                          "with create_graph=True (double backward) needs backend='cpu' or "
                          "backend='reference'")


def _plan_list(patterns, n: int, m: int, cfg, device) -> list:
    """Per distinct pattern: ``(plan, heads, None)``, or ``(plan of the rest, heads,
    (permuted stride plan, head indices))`` when the stride part runs permuted."""
    out = []
    for pat, heads in _groups(patterns):
        dec = decompose(pat, n, m, cfg[0], cfg[1])
        if dec is None:
            out.append((_plan(pat, n, m, cfg[0], cfg[1], device), heads, None))
            continue
        p1, p2, s_val, causal = dec
        pp = _perm_plan(p2, s_val, causal, n, m, cfg[0], cfg[1], device)
        out.append((_plan(p1, n, m, cfg[0], cfg[1], device), heads,
                    (pp, _heads(heads, device, "long"))))
    return out


def _autograd_fn():
    import torch

    class _SparseAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, patterns, scale, cfg):
            o, lse, plans = _forward(q, k, v, patterns, scale, cfg)
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.plans, ctx.patterns, ctx.scale, ctx.cfg = plans, patterns, scale, cfg
            return o

        @staticmethod
        def backward(ctx, do):
            _refuse_double_backward()
            q, k, v, o, lse = ctx.saved_tensors
            plans = ctx.plans or _plan_list(ctx.patterns, k.shape[2], q.shape[2], ctx.cfg,
                                            q.device)
            dq, dk, dv = _backward(q, k, v, o, lse, do, plans, ctx.scale, ctx.cfg)
            return dq, dk, dv, None, None, None

    return _SparseAttention


_FN = None


#: (block_q, block_k, num_warps, num_stages) tried by the autotuner
CANDIDATES = [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 4, 2)]


def _autotune(q, k, v, patterns, scale, default):
    """Pick the fastest tile shape for this (patterns, m, n, D, dtype) by timing the forward
    once per candidate (CUDA only; cached). Candidates that fail to compile are skipped."""
    import time

    import torch

    key = (patterns, q.shape[2], k.shape[2], q.shape[3], q.dtype, str(q.device))
    if key in _TUNED:
        return _TUNED.get(key)
    best, best_t = default, math.inf
    for cfg in [default] + [c for c in CANDIDATES if c != default]:
        try:
            with torch.no_grad():
                _forward(q, k, v, patterns, scale, cfg)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(3):
                    _forward(q, k, v, patterns, scale, cfg)
                torch.cuda.synchronize()
                t = time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - e.g. out of shared memory for this shape
            continue
        if t < best_t:
            best, best_t = cfg, t
    return _TUNED.put(key, best)


def _prepare(xs, block_q=None, block_k=None):
    """Tensors padded to a power-of-two head dim >= 16 and made contiguous, and the tile
    config ``(block_q, block_k, num_warps, num_stages)``."""
    import torch

    D = xs[0].shape[3]
    if D > 256:
        raise ShapeError(f"the triton backend supports head dimensions up to 256, got D = {D}")
    Dp = max(16, 1 << (D - 1).bit_length())
    if Dp != D:
        xs = tuple(torch.nn.functional.pad(x, (0, Dp - D)) for x in xs)
    xs = tuple(x.contiguous() for x in xs)
    bq, bk, warps, stages = block_shape(Dp, xs[0].dtype, xs[0].device.type)
    cfg = (block_q or bq, block_k or bk, warps, stages)
    for b in cfg[:2]:
        if isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ShapeError(f"triton block sizes must be powers of two >= 16, got {b!r}")
    return xs, cfg


def sparse_attention(q, k, v, patterns, scale: float, *, block_q: int | None = None,
                     block_k: int | None = None, return_lse: bool = False,
                     autotune: bool | None = None):
    """Run the kernels. ``patterns``: H :class:`spattn.Pattern`. ``block_q``/``block_k``
    override the tile shape; ``autotune`` (default: env ``SPATTN_TRITON_AUTOTUNE=1``) times
    :data:`CANDIDATES` on the first call per shape (CUDA only). With ``return_lse`` also
    returns the natural-log log-sum-exp (B, H, m) (+inf for empty rows; not
    differentiable)."""
    import torch

    global _FN
    if _FN is None:
        _FN = _autograd_fn()
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if decode_enabled(q.shape[2]) and (return_lse or not grad) and (block_q, block_k) == (
            None, None):  # inference with few queries: any strides, no padded copies
        with torch.no_grad():
            o, lse = decode_forward(q, k, v, tuple(patterns), float(scale))
        return (o, lse * math.log(2.0)) if return_lse else o
    D = q.shape[3]
    (q, k, v), cfg = _prepare((q, k, v), block_q, block_k)
    Dp = q.shape[3]
    if autotune is None:
        autotune = os.environ.get("SPATTN_TRITON_AUTOTUNE", "0") not in ("", "0")
    if autotune and q.device.type == "cuda" and block_q is None and block_k is None:
        cfg = _autotune(q, k, v, tuple(patterns), float(scale), cfg)
    if return_lse:
        with torch.no_grad():
            o, lse, _ = _forward(q, k, v, tuple(patterns), float(scale), cfg)
        lse = lse * math.log(2.0)
        return o[..., :D], lse
    o = _FN.apply(q, k, v, tuple(patterns), float(scale), cfg)
    return o[..., :D] if Dp != D else o


class TritonBackend:
    """``backend="triton"``: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""

    name = "triton"

    def is_available(self) -> bool:
        """Triton importable, and CUDA present or TRITON_INTERPRET=1."""
        if not _triton_ok():
            return False
        if interpreting():
            return True
        try:
            import torch

            return torch.cuda.is_available()
        except Exception:  # noqa: BLE001
            return False

    def supports(self, q) -> bool:
        """CUDA tensors (CPU tensors too under the Triton interpreter)."""
        dt = str(q.dtype).replace("torch.", "")
        if dt not in _SUPPORTED or q.shape[-1] > 256:
            return False
        if q.device.type == "cuda":
            return True
        return q.device.type == "cpu" and interpreting()

    def attention(self, q, k, v, patterns, scale):
        """Block-sparse flash attention; see the spattn.backends interface."""
        return sparse_attention(q, k, v, patterns, scale)

    def forward_lse(self, q, k, v, patterns, scale):
        """``(out, lse)`` for the ``spattn::attention`` op: out in float32 (unpadded), lse the
        kernels' base-2 log-sum-exp (B, H, m) float32; no autograd."""
        import torch

        D = q.shape[3]
        if decode_enabled(q.shape[2]):  # any strides and head dim: no padded copies
            with torch.no_grad():
                o, lse = decode_forward(q.detach(), k.detach(), v.detach(), tuple(patterns),
                                        float(scale))
            return o.float(), lse
        (qp, kp, vp), cfg = _prepare((q.detach(), k.detach(), v.detach()))
        with torch.no_grad():
            o, lse, _ = _forward(qp, kp, vp, tuple(patterns), float(scale), cfg)
        return o[..., :D].float(), lse

    def backward_lse(self, q, k, v, out, lse, dout, patterns, scale):
        """First derivatives from :meth:`forward_lse`'s results, no autograd."""
        D = q.shape[3]
        xs, cfg = _prepare(tuple(x.detach().to(q.dtype) for x in (q, k, v, out, dout)))
        qp, kp, vp, op, dp = xs
        plans = _plan_list(tuple(patterns), k.shape[2], q.shape[2], cfg, q.device)
        dq, dk, dv = _backward(qp, kp, vp, op, lse, dp, plans, float(scale), cfg)
        return dq[..., :D], dk[..., :D], dv[..., :D]

    def double_backward(self, q, k, v, dout, patterns, scale, needs):
        """Refused: the Triton kernels have no differentiable backward."""
        _refuse_double_backward()
