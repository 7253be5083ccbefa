"""``spattn.attention``: validate inputs, resolve patterns, dispatch to a backend.

In: torch tensors q (B, H, m, D), k and v (B, H, n, D) and a pattern (text, Pattern, or a list
of H of them). Out: (B, H, m, D) like q. Queries are the last m of the n positions
(bottom-right alignment). Empty rows give zero output and zero gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ShapeError, SpattnError
from .pattern import Pattern, compile

#: backends that take k, v with fewer heads than q themselves (others get them expanded)
_NATIVE_GQA = ("cpu", "reference")


def resolve_patterns(pattern: Any, H: int) -> tuple[Pattern, ...]:
    """One pattern per head: a single pattern is shared by all heads."""
    if isinstance(pattern, (str, Pattern)):
        p = compile(pattern)
        return (p,) * H
    if isinstance(pattern, Sequence) and not isinstance(pattern, (bytes, bytearray)):
        pats = tuple(compile(x) for x in pattern)
        if len(pats) != H:
            raise ShapeError(f"got {len(pats)} per-head patterns for H = {H} heads; give one "
                             "pattern, or exactly one per head")
        return pats
    raise SpattnError(f"pattern must be text, a spattn.Pattern or a list of them, got "
                      f"{type(pattern).__name__}")


def validate(q, k, v) -> None:
    """Check shapes, dtypes, layouts and devices of q, k, v; raise :class:`ShapeError` naming
    the problem."""
    import torch

    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise ShapeError(f"{name} has layout {t.layout}; spattn needs dense (strided) "
                             "tensors: call .to_dense() first")
        if t.dim() != 4:
            raise ShapeError(f"{name} must have 4 dimensions (B, H, seq, D), got shape "
                             f"{tuple(t.shape)}")
        if t.dtype not in floats:
            raise ShapeError(f"{name} has dtype {t.dtype}; spattn needs float16, bfloat16, "
                             "float32 or float64")
    if not (q.dtype == k.dtype == v.dtype):
        raise ShapeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ShapeError(f"q, k, v must be on one device, got {q.device}, {k.device}, "
                         f"{v.device}")
    B, H, m, D = q.shape
    if k.shape != v.shape:
        raise ShapeError(f"k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ShapeError(f"q has shape {tuple(q.shape)} (B, H, m, D) but k has "
                         f"{tuple(k.shape)}; B and D must match")
    if k.shape[1] < 1 or H % k.shape[1]:
        raise ShapeError(f"q has H = {H} heads but k and v have {k.shape[1]}; the key/value "
                         "heads must divide the query heads (grouped-query attention: query "
                         "head h uses key head h // (H // H_kv))")
    n = k.shape[2]
    if n < 1:
        raise ShapeError("k and v have no positions (n = 0)")
    if m > n:
        raise ShapeError(f"q has m = {m} queries but k has only n = {n} keys; spattn needs "
                         "m <= n (queries are the last m positions)")
    if B == 0 or H == 0 or D == 0:
        raise ShapeError(f"empty dimension in q's shape {tuple(q.shape)}")


def check_scale(scale: Any, D: int) -> float:
    """The softmax scale as a finite float (default 1/sqrt(D))."""
    import math

    import torch

    if scale is None:
        return D ** -0.5
    if isinstance(scale, bool):
        raise SpattnError(f"scale must be a number, got {scale!r}")
    if isinstance(scale, torch.Tensor):
        if scale.requires_grad:
            raise SpattnError("scale is a tensor that requires grad; spattn's scale is a "
                              "constant (its gradient would be silently dropped): pass a float, "
                              "or scale q yourself")
        if scale.numel() != 1:
            raise SpattnError(f"scale must be one number, got a tensor of shape "
                              f"{tuple(scale.shape)}")
    try:
        value = float(scale)
    except (TypeError, ValueError, RuntimeError):
        raise SpattnError(f"scale must be a number, got {scale!r:.60}") from None
    if not math.isfinite(value):
        raise SpattnError(f"scale must be finite, got {value!r}")
    return value


def _pattern_texts(pattern: Any, H: int) -> list[str]:
    """One pattern text per head for the ``spattn::attention`` operator, without compiling
    (this runs while ``torch.compile`` traces; the operator compiles, outside traced code).
    Patterns give their cached canonical text."""
    items = [pattern] * H if isinstance(pattern, (str, Pattern)) else list(pattern)
    if len(items) != H:
        raise ShapeError(f"got {len(items)} per-head patterns for H = {H} heads; give one "
                         "pattern, or exactly one per head")
    return [x if isinstance(x, str) else str(x) for x in items]


def _no_queries(q, k, v):
    """The (B, H, 0, D) output for m = 0 queries, connected to q, k and v (zero gradients)."""
    return q * 0 + ((k.sum() + v.sum()) * 0).to(q.dtype)


def attention(q, k, v, pattern, *, backend: str = "auto", scale: float | None = None,
              documents: Any = None):
    """Sparse attention of ``q`` over ``k, v`` restricted to ``pattern``.

    ``q``: (B, H, m, D); ``k``, ``v``: (B, H_kv, n, D) with m <= n and H_kv dividing H
    (grouped-query attention: query head h reads key head h // (H // H_kv)); query row r is
    position n - m + r. ``pattern``: text, :class:`Pattern`, or a list of H of them (one per head).
    ``scale`` (a finite number) defaults to 1/sqrt(D). ``backend``: "auto" (triton for CUDA
    tensors, cpu otherwise), "cpu", "triton", "reference" (dense float64, small sizes: for
    checking a result), or a registered plugin's name. Differentiable in q, k, v (on the cpu
    and reference backends to any order). A query with no key gets a zero output and zero
    gradients; m = 0 queries give an empty output. Under ``torch.compile`` the built-in
    backends run as one opaque operator (:mod:`spattn.ops`).

    ``documents`` (a :class:`spattn.Documents` or a list of lengths summing to N): a packed
    batch, m = n = N, the same document layout in every batch row. The pattern applies inside
    each document at that document's length, positions counted from its first token, and no
    pair crosses documents: the result equals attention on each document alone.
    """
    import torch

    from spattn import backends

    if torch.jit.is_tracing() or torch.jit.is_scripting():
        raise SpattnError("spattn.attention cannot be traced or scripted by TorchScript "
                          "(torch.jit); use torch.compile, which spattn supports")
    validate(q, k, v)
    H, m, D = q.shape[1], q.shape[2], q.shape[3]
    scale = check_scale(scale, D)
    if not isinstance(backend, str):
        raise SpattnError(f"backend must be a name, got {backend!r}")
    if documents is not None:
        if torch.compiler.is_compiling() and backend in ("auto", "cpu") \
                and q.device.type == "cpu":
            from . import ops
            from .documents import as_documents

            _packed_shapes(q, k)
            docs = as_documents(documents, k.shape[2])
            return ops.attention(q, k, v, _pattern_texts(pattern, H), scale, "cpu",
                                 docs.lengths)
        return _packed(q, k, v, pattern, backend, scale, documents)
    if m == 0:
        resolve_patterns(pattern, H)
        return _no_queries(q, k, v)
    if torch.compiler.is_compiling():
        from . import ops  # one opaque operator for torch.compile; eager calls skip it

        if backend in ops.OP_BACKENDS and backends.is_builtin(backend):
            native = backend in _NATIVE_GQA or (backend == "auto" and q.device.type == "cpu")
            k, v = (k, v) if native else _expand_kv(k, v, H)
            return ops.attention(q, k, v, _pattern_texts(pattern, H), scale, backend)
    pats = resolve_patterns(pattern, H)
    b = backends.select(backend, q)
    if b.name not in _NATIVE_GQA:
        k, v = _expand_kv(k, v, H)
    return b.attention(q, k, v, pats, scale)


def _packed(q, k, v, pattern, backend: str, scale: float, documents: Any):
    """:func:`attention` over packed documents: backends that plan packed sequences
    (``supports_documents``) get the documents; others run once per length class, the
    documents of one length batched (at most ``sqrt(2 N)`` calls)."""
    from spattn import backends

    from .documents import as_documents

    _packed_shapes(q, k)
    n = k.shape[2]
    docs = as_documents(documents, n)
    H = q.shape[1]
    pats = resolve_patterns(pattern, H)
    b = backends.select(backend, q)
    if getattr(b, "supports_documents", False):
        return b.attention(q, k, v, pats, scale, documents=docs)
    if b.name not in _NATIVE_GQA:
        k, v = _expand_kv(k, v, H)
    return by_length(q, k, v, docs, lambda qq, kk, vv: b.attention(qq, kk, vv, pats, scale))


def _packed_shapes(q, k) -> None:
    m, n = q.shape[2], k.shape[2]
    if m != n:
        raise ShapeError(f"attention over documents needs every position as a query (m = n);"
                         f" got m = {m} queries and n = {n} keys")


def by_length(q, k, v, docs, run):
    """Packed attention as one ``run(q, k, v)`` per length class: the documents of one
    length gathered into the batch dimension, results put back in place (differentiable)."""
    import numpy as np
    import torch

    from .packed import class_batch, class_positions, class_unbatch

    outs, where = [], []
    for L, idx in docs.classes:
        pos = torch.from_numpy(class_positions(docs, idx, L)).to(q.device)
        c = len(idx)
        o = run(*(class_batch(x, pos, c, L) for x in (q, k, v)))
        outs.append(class_unbatch(o, q.shape[0]))
        where.append(pos)
    if len(outs) == 1:  # one length: the documents are already in sequence order
        return outs[0]
    inv = np.argsort(torch.cat(where).cpu().numpy())
    return torch.cat(outs, 2).index_select(2, torch.from_numpy(inv).to(q.device))


def _expand_kv(k, v, H: int):
    """k, v with H_kv < H heads repeated per query head, for backends that need H heads (a
    copy; autograd sums the gradients back)."""
    if k.shape[1] == H:
        return k, v
    g = H // k.shape[1]
    return k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
