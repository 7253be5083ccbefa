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

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


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
    """Check shapes, dtypes and devices of q, k, v; raise :class:`ShapeError` naming the problem."""
    import torch

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{name} must have 4 dimensions (B, H, seq, D), got shape "
                             f"{tuple(t.shape)}")
        if str(t.dtype).replace("torch.", "") not in _FLOAT_DTYPES:
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
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ShapeError(f"q has shape {tuple(q.shape)} (B, H, m, D) but k has "
                         f"{tuple(k.shape)}; B, H and D must match")
    n = k.shape[2]
    if n < 1:
        raise ShapeError("k and v have no positions (n = 0)")
    if m > n:
        raise ShapeError(f"q has m = {m} queries but k has only n = {n} keys; spattn needs "
                         "m <= n (queries are the last m positions)")
    if B == 0 or H == 0 or D == 0:
        raise ShapeError(f"empty dimension in q's shape {tuple(q.shape)}")


def attention(q, k, v, pattern, *, backend: str = "auto", scale: float | None = None):
    """Sparse attention of ``q`` over ``k, v`` restricted to ``pattern``.

    ``q``: (B, H, m, D); ``k``, ``v``: (B, H, n, D) with m <= n; query row r is position
    n - m + r. ``pattern``: text, :class:`Pattern`, or a list of H of them (one per head).
    ``scale`` defaults to 1/sqrt(D). ``backend``: "auto" (triton for CUDA tensors, cpu
    otherwise), "cpu", "triton", or a registered plugin's name. Differentiable in q, k, v.
    A query with no key gets a zero output and zero gradients.
    """
    from spattn import backends

    validate(q, k, v)
    H, D = q.shape[1], q.shape[3]
    pats = resolve_patterns(pattern, H)
    if scale is None:
        scale = D ** -0.5
    else:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise SpattnError(f"scale must be a number, got {scale!r}") from None
    if not isinstance(backend, str):
        raise SpattnError(f"backend must be a name, got {backend!r}")
    b = backends.select(backend, q)
    return b.attention(q, k, v, pats, scale)
