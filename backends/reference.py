"""The reference backend: plain dense masked softmax attention, exact in float64.

In: q (B, H, m, D), k and v (B, H, n, D) on any device, of any floating dtype (float16,
bfloat16, float32, float64), a tuple of H patterns (one per head) and the softmax scale.
Out: (B, H, m, D) in q's dtype and on q's device, differentiable in q, k and v.

For plugin authors (a known-good result to test a backend against) and for users debugging a
mismatch: ``spattn.attention(q, k, v, pattern, backend="reference")``. ``backend="auto"``
never picks it.

How: the inputs are cast to float64 on their own device; head h's mask is rows n - m .. n - 1
of its pattern at sequence length n (bottom-right aligned queries), scattered into an (m, n)
boolean tensor from :func:`spattn.lower.csr_rows` (never an n x n array when m < n; heads
sharing a pattern share one mask). The softmax is written with plain differentiable torch
ops (no custom autograd function), so first and second derivatives are exact; a row with no
key gives an exactly zero output and zero gradients, never NaN. Work and memory are
O(B * H * m * n): sizes over :data:`MAX_CELLS` score cells per head, or over the memory
budget, are refused with a :class:`spattn.ResourceError` before anything is allocated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spattn import guard
from spattn.errors import ResourceError, ShapeError
from spattn.lower import csr_rows
from spattn.pattern import Pattern, compile

__all__ = ["ReferenceBackend", "MAX_CELLS"]

MAX_CELLS = 2**26  #: most query x key cells (m * n) per head the reference backend accepts
_F64_COPIES = 8  #: float64 (B, H, m, n) tensors alive at once: scores, exps, probs, grads
_HINT = "the reference backend is for small sizes; use backend='cpu' or 'triton'"


def mask_rows(pattern: Pattern, n: int, m: int, device: torch.device) -> torch.Tensor:
    """Rows n - m .. n - 1 of ``pattern`` at length n as an (m, n) bool tensor on ``device``."""
    indptr, indices = csr_rows(pattern.node, n, n - m, n)
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr).astype(np.int64))
    flat = np.zeros(m * n, dtype=bool)
    flat[rows * n + indices.astype(np.int64)] = True
    return torch.from_numpy(flat.reshape(m, n)).to(device)


def estimate_bytes(B: int, H: int, Hkv: int, m: int, n: int, D: int, n_masks: int) -> int:
    """Bytes the reference backend allocates for these sizes (forward and backward): the
    float64 score / probability tensors and their gradients, the inputs and output in
    float64, and the boolean masks (one per distinct pattern, plus the per-head stack)."""
    cells = B * H * m * n
    return (_F64_COPIES * 8 * cells + 2 * 8 * (B * H * m * D * 2 + B * Hkv * n * D * 2)
            + (n_masks + H) * m * n + cells)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        patterns: tuple[Any, ...], scale: float) -> torch.Tensor:
    """Dense masked softmax attention in float64 (see the module docstring). ``k`` and ``v``
    may have H_kv heads with H_kv dividing H (query head h uses key head h // (H // H_kv))."""
    if not (isinstance(q, torch.Tensor) and q.is_floating_point()):
        raise ShapeError(f"the reference backend needs floating-point torch tensors, got "
                         f"{getattr(q, 'dtype', type(q).__name__)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShapeError(f"q, k, v must have 4 dimensions (B, H, seq, D), got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, m, D = q.shape
    Hkv, n = k.shape[1], k.shape[2]
    if len(patterns) != H:
        raise ShapeError(f"got {len(patterns)} patterns for H = {H} heads")
    if not 1 <= m <= n:
        raise ShapeError(f"the reference backend needs 1 <= m <= n, got m = {m}, n = {n}")
    if Hkv < 1 or H % Hkv:
        raise ShapeError(f"k and v have {Hkv} heads, which does not divide H = {H}")
    if m * n > MAX_CELLS:
        raise ResourceError(f"the reference backend computes dense (m, n) scores; m = {m:,} "
                            f"queries x n = {n:,} keys = {m * n:,} cells per head is over its "
                            f"limit of {MAX_CELLS:,} (MAX_CELLS): {_HINT}")
    pats = tuple(compile(p) for p in patterns)
    distinct = list(dict.fromkeys(pats))
    guard.check(estimate_bytes(B, H, Hkv, m, n, D, len(distinct)),
                f"reference attention for B={B}, H={H}, m={m:,}, n={n:,}, D={D}", _HINT)

    dev = q.device
    masks = {p: mask_rows(p, n, m, dev) for p in distinct}
    if len(distinct) == 1:
        mask = masks[distinct[0]].expand(H, m, n)
    else:
        mask = torch.stack([masks[p] for p in pats])
    g = H // Hkv
    mask = mask.view(Hkv, g, m, n)  # (H_kv, group, m, n), broadcast over the batch

    q64 = q.to(torch.float64).reshape(B, Hkv, g, m, D)
    k64 = k.to(torch.float64)
    v64 = v.to(torch.float64)
    s = torch.einsum("bhgmd,bhnd->bhgmn", q64, k64) * float(scale)
    s = s.masked_fill(~mask, float("-inf"))
    has_key = mask.any(dim=-1, keepdim=True)
    # the row maximum only shifts the exponent (the softmax does not depend on it)
    mx = torch.where(has_key, s.detach().amax(dim=-1, keepdim=True), 0.0)
    e = torch.where(mask, torch.exp(s - mx), 0.0)
    den = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(den > 0, den, 1.0)
    out = torch.einsum("bhgmn,bhnd->bhgmd", p, v64).reshape(B, H, m, D)
    return out.to(q.dtype)


class ReferenceBackend:
    """Dense float64 masked softmax attention for small sizes (see the module docstring)."""

    name = "reference"

    def is_available(self) -> bool:
        """Always True: it needs nothing beyond torch."""
        return True

    def supports(self, q: Any) -> bool:
        """A torch tensor of a floating dtype, on any device."""
        return isinstance(q, torch.Tensor) and q.is_floating_point()

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  patterns: tuple[Pattern, ...], scale: float) -> torch.Tensor:
        """Exact dense attention; see :class:`spattn.backends.Backend` for the contract."""
        return reference_attention(q, k, v, patterns, scale)
