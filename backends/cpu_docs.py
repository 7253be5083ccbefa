"""The CPU backend over packed documents: long documents whose pattern is dense run through
PyTorch's fused kernel directly; the rest share one packed plan.

In: q (B, H, N, D), k and v (B, H_kv, N, D), one pattern for every head, the scale and a
:class:`~spattn.documents.Documents`. Out: (B, H, N, D), differentiable.

How: a length class whose pattern is, at that length, exactly ``causal`` or ``full`` (read
from its cached intervals) and whose documents are long (>= :data:`DENSE_MIN`) needs no plan:
its documents are gathered into the batch dimension and run by the fused CPU flash kernel
with ``is_causal`` (memory proportional to the documents, not to their pairs — a plan of a
32K-token causal document would hold half a billion slots). Every other document goes
through the packed plan (:func:`spattn.backends.cpu_planner.build_plan` with those lengths
left out: their rows are empty there). The two parts are put together by ``index_copy``,
so autograd joins them. The dense part's double backward recomputes the documents' scores
with plain torch ops (memory proportional to their pairs, checked against the budget).
"""

from __future__ import annotations

import numpy as np
import torch

from spattn import guard, packed
from spattn.documents import Documents

DENSE_MIN = 1024  #: shortest document run through the dense route

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BW = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def dense_kind(node, length: int, docs: Documents | None = None) -> str | None:
    """"causal" or "full" when the pattern at ``length`` is exactly that, else None."""
    row, lo, hi = packed.class_intervals(node, length, docs)
    if len(row) != length or lo.any():
        return None
    r = np.arange(1, length + 1)
    if (hi == r).all() and (row == r - 1).all():
        return "causal"
    if (hi == length).all() and (row == r - 1).all():
        return "full"
    return None


def dense_classes(node, docs: Documents) -> dict[int, str]:
    """The lengths that take the dense route, with their kind."""
    out = {}
    for L, _ in docs.classes:
        if L >= DENSE_MIN:
            kind = dense_kind(node, L, docs)
            if kind is not None:
                out[L] = kind
    return out


def _math(q, k, v, causal: bool, scale: float):
    """Differentiable attention with plain torch ops (for double backward)."""
    L = q.shape[2]
    guard.check(8.0 * q.shape[0] * q.shape[1] * L * L, f"double backward through dense "
                f"documents of {L:,} tokens (their scores)", "use first derivatives only")
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):  # type: ignore[override]
        ct = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc, kc, vc = (x.to(ct) for x in (q, k, v))
        out, lse = _FLASH(qc, kc, vc, 0.0, causal, scale=scale)
        ctx.causal, ctx.scale = causal, scale
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            xs = [x if x.requires_grad else x.detach().requires_grad_() for x in (q, k, v)]
            with torch.enable_grad():
                o = _math(*xs, ctx.causal, ctx.scale)
                g = torch.autograd.grad(o, xs, dout, create_graph=True)
            return (*g, None, None)
        ct = out.dtype
        gq, gk, gv = _FLASH_BW(dout.to(ct).contiguous(), q.to(ct), k.to(ct), v.to(ct), out,
                               lse, 0.0, ctx.causal, scale=ctx.scale)
        return gq.to(q.dtype), gk.to(k.dtype), gv.to(v.dtype), None, None


def dense_part(q, k, v, docs: Documents, dense: dict[int, str], scale: float):
    """``(positions, out)``: the dense documents' outputs (B, H, P, D) at packed positions
    (int64 tensor of P)."""
    B, H, N, D = q.shape
    g = H // k.shape[1]
    pos_all, outs = [], []
    for L, idx in docs.classes:
        kind = dense.get(L)
        if kind is None:
            continue
        pos = torch.from_numpy(packed.class_positions(docs, idx, L))
        c = len(idx)

        def take(x, pos=pos, c=c, L=L):
            h = x.shape[1]
            return x.index_select(2, pos).view(B, h, c, L, D).transpose(1, 2).reshape(
                B * c, h, L, D)

        kk, vv = take(k), take(v)
        if g > 1:
            kk, vv = kk.repeat_interleave(g, 1), vv.repeat_interleave(g, 1)
        o = _Dense.apply(take(q), kk, vv, kind == "causal", float(scale))
        outs.append(o.view(B, c, H, L, D).transpose(1, 2).reshape(B, H, c * L, D))
        pos_all.append(pos)
    return torch.cat(pos_all), torch.cat(outs, 2)


def combine(sparse_out, pos, dense_out):
    """The packed output: the plan's rows, with the dense documents' rows put in place."""
    return sparse_out.index_copy(2, pos.to(sparse_out.device), dense_out)
