"""The CPU backend over packed documents: documents whose pattern is dense at their length
run through PyTorch's fused kernel directly; the rest share one packed plan.

In: q (B, H, N, D), k and v (B, H_kv, N, D), one pattern for every head, the scale and a
:class:`~spattn.documents.Documents`. Out: (B, H, N, D), differentiable.

How: a length class whose pattern is, at that length, exactly ``full``, or exactly
``causal`` with documents short (<= :data:`SHORT_MAX`: one batched call beats many small
tiles) or long (>= :data:`DENSE_MIN`), needs no plan (read from its cached intervals): its
documents are gathered into the batch dimension and run by the fused CPU flash kernel with
``is_causal`` (memory proportional to the documents, not to their pairs — a plan of a
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
from spattn.cache import LRUCache
from spattn.documents import Documents

DENSE_MIN = 1024  #: shortest long document run through the dense route
#: longest short document run through it (between the two, the plan's tiles skip more of a
#: causal document's upper triangle than the fused kernel's 512-key blocks do)
SHORT_MAX = 128

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


_DENSE_CLASSES = LRUCache("cpu dense documents", 256)


def dense_classes(node, docs: Documents) -> dict[int, str]:
    """The lengths that take the dense route, with their kind (cached per pattern and
    documents)."""
    key = (node, docs, DENSE_MIN, SHORT_MAX)
    got = _DENSE_CLASSES.get(key)
    if got is None:
        got = _DENSE_CLASSES.put(key, _dense_classes(node, docs))
    return got


def _dense_classes(node, docs: Documents) -> dict[int, str]:
    out = {}
    for L, _ in docs.classes:
        kind = dense_kind(node, L, docs)
        if kind == "full" or (kind == "causal" and not SHORT_MAX < L < DENSE_MIN):
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
            from .cpu_graph import recomputed_grads

            g = recomputed_grads(lambda *xs: _math(*xs, ctx.causal, ctx.scale), (q, k, v),
                                 dout, tuple(ctx.needs_input_grad[:3]))
            return (*g, None, None)
        ct = out.dtype
        gq, gk, gv = _FLASH_BW(dout.to(ct).contiguous(), q.to(ct), k.to(ct), v.to(ct), out,
                               lse, 0.0, ctx.causal, scale=ctx.scale)
        return gq.to(q.dtype), gk.to(k.dtype), gv.to(v.dtype), None, None


def dense_part(q, k, v, docs: Documents, dense: dict[int, str], scale: float):
    """``(positions, out)``: the dense documents' outputs (B, H, P, D) at packed positions
    (int64 tensor of P)."""
    g = q.shape[1] // k.shape[1]
    pos_all, outs = [], []
    for L, idx in docs.classes:
        kind = dense.get(L)
        if kind is None:
            continue
        pos = torch.from_numpy(packed.class_positions(docs, idx, L))
        qq, kk, vv = (packed.class_batch(x, pos, len(idx), L) for x in (q, k, v))
        if g > 1:
            kk, vv = kk.repeat_interleave(g, 1), vv.repeat_interleave(g, 1)
        o = _Dense.apply(qq, kk, vv, kind == "causal", float(scale))
        outs.append(packed.class_unbatch(o, q.shape[0]))
        pos_all.append(pos)
    return torch.cat(pos_all), torch.cat(outs, 2)


def combine(sparse_out, pos, dense_out):
    """The packed output: the plan's rows, with the dense documents' rows put in place."""
    return sparse_out.index_copy(2, pos.to(sparse_out.device), dense_out)
