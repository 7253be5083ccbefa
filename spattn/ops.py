"""``spattn::attention``: the built-in backends as one opaque PyTorch operator, so that
``torch.compile`` (``fullgraph=True`` included) treats sparse attention as a single node.

In: q (B, H, m, D), k, v (B, H, n, D), one pattern text per head (joined by NUL into one
string argument: operators take no lists of strings), the scale and a backend
name ("auto", "cpu" or "triton"). Out: the attention output, differentiable. The operator is a
``torch.library.custom_op`` with a fake (meta) implementation, so Dynamo and Inductor see its
output shape without running it, and an autograd formula that calls a second operator for the
backward: the pattern lowering, the plan caches and the kernels all run inside the operators,
never in traced code, so compiling a model neither traces numpy nor recompiles when a pattern
is lowered at a new length. Gradients of gradients (``create_graph=True``) are computed by the
backend's differentiable path (CPU) or refused (Triton) in eager mode.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from .pattern import compile as compile_pattern

#: backend names served through the operator (the others are called directly)
OP_BACKENDS = ("auto", "cpu", "triton")

#: separates the per-head pattern texts in the operator's one string argument (NUL never
#: occurs in valid pattern text)
SEP = "\x00"


def _backend(name: str, q: torch.Tensor, texts: str):
    from . import backends

    b = backends.select(name, q)
    if not hasattr(b, "forward_lse"):  # a plugin registered under a built-in name
        raise RuntimeError(f"backend {name!r} has no forward_lse")
    return b, tuple(compile_pattern(t) for t in texts.split(SEP))


def _docs(lengths: str):
    """The operator's ``documents`` argument ("" or comma-separated lengths) as keywords."""
    if not lengths:
        return {}
    from .documents import documents

    return {"documents": documents([int(x) for x in lengths.split(",")])}


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@custom_op("spattn::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patterns: str,
                 scale: float, backend: str, documents: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``: out (B, H, m, D) and the backend's log-sum-exp (B, H, m), both in
    float64 for float64 inputs and float32 otherwise. ``documents``: "" or the packed
    documents' lengths, comma-separated."""
    b, pats = _backend(backend, q, patterns)
    out, lse = b.forward_lse(q, k, v, pats, scale, **_docs(documents))
    ct = _compute_dtype(q)
    return out.to(ct).contiguous(), lse.to(ct).contiguous()


@attention_op.register_fake
def _attention_fake(q, k, v, patterns, scale, backend, documents):
    ct = _compute_dtype(q)
    B, H, m, D = q.shape
    return q.new_empty((B, H, m, D), dtype=ct), q.new_empty((B, H, m), dtype=ct)


@custom_op("spattn::attention_backward", mutates_args=())
def attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                          patterns: str, scale: float, backend: str, documents: str
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` from :func:`attention_op`'s results and the output gradient."""
    b, pats = _backend(backend, q, patterns)
    dq, dk, dv = b.backward_lse(q, k, v, out, lse, dout, pats, scale, **_docs(documents))
    return dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()


@attention_backward_op.register_fake
def _attention_backward_fake(q, k, v, out, lse, dout, patterns, scale, backend, documents):
    # contiguous, as the real implementation returns them (strides must agree)
    return tuple(x.new_empty(x.shape) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, patterns, scale, backend, documents = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.patterns, ctx.scale, ctx.backend = patterns, float(scale), backend
    ctx.documents = documents


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (eager only)
        b, pats = _backend(ctx.backend, q, ctx.patterns)
        dq, dk, dv = b.double_backward(q, k, v, dout.to(q.dtype), pats, ctx.scale,
                                       tuple(ctx.needs_input_grad[:3]),
                                       **_docs(ctx.documents))
    else:
        dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout.contiguous(),
                                           ctx.patterns, ctx.scale, ctx.backend,
                                           ctx.documents)
    return dq, dk, dv, None, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patterns: list[str],
              scale: float, backend: str, documents: tuple[int, ...] = ()) -> torch.Tensor:
    """Sparse attention through the operator (over packed ``documents`` when given, CPU
    only); the output in q's dtype."""
    out, _ = attention_op(q, k, v, SEP.join(patterns), scale, backend,
                          ",".join(map(str, documents)))
    return out.to(q.dtype)
