"""A CPU plan evaluated with plain, differentiable torch ops: the path for double backward.

In: q (B, H, m, D), k, v (B, H, n, D) (any float dtype, possibly part of an autograd graph),
the per-head plans of :mod:`.cpu_planner` and the scale. Out: the attention output (B, H, m,
D) in q's dtype, built from ordinary tensor operations over the plan's tiles (gathered query
rows and keys, masked softmax, log-sum-exp merge of components), so autograd differentiates it
to any order. The fused kernels of :mod:`.cpu` are faster but their backward is not itself
differentiable; the CPU backend switches to this path when a gradient is asked for with
``create_graph=True`` (gradient penalties, Hessian-vector products, meta-learning). Exact:
every pair is computed once, masked slots contribute exactly zero (the row maxima used as
shifts are constants, as in any stable softmax), and rows with no key give zero output and
zero gradients of every order.
"""

from __future__ import annotations

import torch

from spattn import guard

from .cpu_plan import Plan, compute_dtype, heads_by_plan


def _safe_shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The maximum along ``dim`` as a constant, 0 where every entry is -inf."""
    mx = x.detach().amax(dim=dim, keepdim=True)
    return torch.where(torch.isneginf(mx), torch.zeros_like(mx), mx)


def _component(plan_groups, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, m: int,
               scale: float):
    """Output (m + 1, BH, D) and log-sum-exp (m + 1, BH) of one component's tiles over
    sequence-major q (m, BH, D), k, v (n, BH, D); row m collects padding slots."""
    BH, D = qs.shape[1], qs.shape[2]
    o = qs.new_zeros(m + 1, BH, D)
    lse = qs.new_full((m + 1, BH), float("-inf"))
    qp = torch.cat([qs, qs.new_zeros(1, BH, D)])
    for g in plan_groups:
        T, bq, L = g.T, g.bq, g.L
        qt = qp.index_select(0, g.qg).view(T, bq, BH, D).transpose(1, 2)
        kt = ks.index_select(0, g.kidx).view(T, L, BH, D).transpose(1, 2)
        vt = vs.index_select(0, g.kidx).view(T, L, BH, D).transpose(1, 2)
        s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
        bias = g.bias_as(s.dtype)
        if bias is not None:
            s = s + bias
        sh = _safe_shift(s, -1)
        e = torch.exp(s - sh)
        den = e.sum(-1)
        live = den > 0
        ot = torch.matmul(e / torch.where(live, den, torch.ones_like(den))[..., None], vt)
        lt = torch.where(live, torch.log(torch.where(live, den, torch.ones_like(den)))
                         + sh.squeeze(-1), torch.full_like(den, float("-inf")))
        rows = g.qs
        o = o.index_copy(0, rows, ot.transpose(1, 2).reshape(T * bq, BH, D))
        lse = lse.index_copy(0, rows, lt.transpose(1, 2).reshape(T * bq, BH))
    return o[:m], lse[:m]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans: tuple[Plan, ...],
              scale: float) -> torch.Tensor:
    """Differentiable sparse attention of q over k, v with one plan per head."""
    B, H, m, D = q.shape
    n = k.shape[2]
    ct = compute_dtype(q.dtype)
    area = sum(c.area for p, _ in heads_by_plan(plans) for c in p.components)
    guard.check(float(area) * B * H * (ct.itemsize * 8),
                f"double-backward workspace (score tiles of {area:,} slots, B={B}, H={H})",
                "use smaller tensors, or avoid create_graph=True")
    heads_out = [None] * H
    for plan, heads in heads_by_plan(plans):
        nh = len(heads)
        sel = torch.tensor(heads, dtype=torch.long)

        qs, ks, vs = (x.index_select(1, sel).to(ct).permute(2, 0, 1, 3).reshape(S, B * nh, D)
                      for x, S in ((q, m), (k, n), (v, n)))
        parts = [_component(c.groups, qs, ks, vs, m, scale) for c in plan.components]
        if not parts:
            o = qs.new_zeros(m, B * nh, D)
        else:
            ls = torch.stack([p[1] for p in parts])  # (C, m, BH)
            w = torch.exp(ls - _safe_shift(ls, 0))
            den = w.sum(0)
            w = w / torch.where(den > 0, den, torch.ones_like(den))
            o = sum(wc[..., None] * oc for wc, (oc, _) in zip(w, parts, strict=True))
        o = o.reshape(m, B, nh, D).permute(1, 2, 0, 3)  # (B, nh, m, D)
        for t, h in enumerate(heads):
            heads_out[h] = o[:, t]
    return torch.stack(heads_out, dim=1).to(q.dtype)


def recomputed_grads(f, xs, dout: torch.Tensor, needs=(True, True, True)):
    """Gradients of ``f(*xs)`` against ``dout`` that are themselves differentiable
    (``create_graph=True``), by recomputing ``f`` with plain torch ops: one per input, None
    where ``needs`` is False, zeros where an input does not reach the output."""
    xs = [x if x.requires_grad else x.detach() for x in xs]
    want = [i for i, w in enumerate(needs) if w]
    with torch.enable_grad():
        for i in want:
            if not xs[i].requires_grad:
                xs[i] = xs[i].detach().requires_grad_()
        got = torch.autograd.grad(f(*xs), [xs[i] for i in want], dout, create_graph=True,
                                  allow_unused=True)
    out = [None] * len(xs)
    for i, g in zip(want, got, strict=True):
        out[i] = torch.zeros_like(xs[i]) if g is None else g
    return tuple(out)

