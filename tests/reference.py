"""Independent references for tests. Shares no code with spattn's lowering.

- ``oracle_mask(pattern, n)``: the boolean n×n mask, built per pair on numpy index grids
  straight from SPEC's table (small n only).
- ``oracle_random_keys``: ``random(r, seed)`` re-implemented in pure Python integers from the
  definition in ``spattn.random_keys``'s docstring.
- ``dense_attention``: float64 dense masked softmax attention (bottom-right aligned queries,
  zero output for empty rows).
"""

from __future__ import annotations

import math

import numpy as np

import spattn
from spattn import ir

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    x &= M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def oracle_random_keys(n: int, r: int, seed: int, i: int) -> list[int]:
    k = min(r, n)
    base = _mix(_mix((seed % (1 << 64)) ^ GOLDEN) ^ n)
    s = _mix(base ^ i)
    chosen: set[int] = set()
    for step in range(k):
        t = n - k + step
        x = _mix((s + (step + 1) * GOLDEN) & M64) % (t + 1)
        chosen.add(t if x in chosen else x)
    return sorted(chosen)


def _iv(e, n):
    return ir.evaluate(e, n)  # the language's integer semantics


def _index_positions(s, n) -> list[int]:
    if isinstance(s, ir.IndexSlice):
        a = None if s.start is None else _iv(s.start, n)
        b = None if s.stop is None else _iv(s.stop, n)
        c = None if s.step is None else _iv(s.step, n)
        return list(range(n))[slice(a, b, c)]
    out = []
    for e in s.items:
        v = _iv(e, n)
        assert -n <= v < n
        out.append(v % n)
    return out


def _prim(p: ir.Prim, n: int) -> np.ndarray:
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    a = [x if isinstance(x, (ir.IndexList, ir.IndexSlice)) else _iv(x, n) for x in p.args]
    name = p.name
    if name == "local":
        m = np.abs(i - j) <= a[0]
    elif name == "window":
        m = (-a[0] <= j - i) & (j - i <= a[1])
    elif name == "causal":
        m = j <= i
    elif name == "stride":
        m = (i - j) % a[0] == 0
    elif name == "dilated":
        m = (np.abs(i - j) <= a[0] * a[1]) & ((i - j) % a[1] == 0)
    elif name == "block":
        m = i // a[0] == j // a[0]
    elif name == "fixed":
        l, c = a
        m = (i // l == j // l) | (j % l >= l - c)
    elif name == "rows":
        m = np.isin(i, _index_positions(a[0], n)) & (j >= 0)
    elif name == "cols":
        m = np.isin(j, _index_positions(a[0], n)) & (i >= 0)
    elif name == "global":
        pos = _index_positions(a[0], n)
        m = np.isin(i, pos) | np.isin(j, pos)
    elif name == "sink":
        m = (j < a[0]) & (i >= 0)
    elif name == "random":
        m = np.zeros((n, n), bool)
        for row in range(n):
            m[row, oracle_random_keys(n, a[0], a[1], row)] = True
    elif name == "full":
        m = np.ones((n, n), bool)
    elif name == "none":
        m = np.zeros((n, n), bool)
    else:
        raise AssertionError(name)
    return np.broadcast_to(m, (n, n)).copy()


def _node(node, n):
    if isinstance(node, ir.Prim):
        return _prim(node, n)
    if isinstance(node, ir.Union):
        out = np.zeros((n, n), bool)
        for x in node.items:
            out |= _node(x, n)
        return out
    if isinstance(node, ir.Inter):
        out = np.ones((n, n), bool)
        for x in node.items:
            out &= _node(x, n)
        return out
    if isinstance(node, ir.Diff):
        return _node(node.a, n) & ~_node(node.b, n)
    if isinstance(node, ir.Not):
        return ~_node(node.a, n)
    raise AssertionError(node)


def oracle_mask(pattern, n: int, raw: bool = False) -> np.ndarray:
    """The mask of ``pattern`` (text or Pattern) at ``n``. With ``raw=True`` the text is
    evaluated without canonicalisation, so canonicalisation is checked too."""
    if raw and isinstance(pattern, str):
        from spattn.parse import parse_program

        return _node(parse_program(pattern), n)
    return _node(spattn.compile(pattern).node, n)


def dense_attention(q, k, v, masks, scale=None):
    """Float64 reference. q (B, H, m, D), k/v (B, H, n, D) torch tensors; masks: a list of H
    boolean (n, n) numpy arrays (or one shared). Returns float64 (B, H, m, D)."""
    import torch

    B, H, m, D = q.shape
    n = k.shape[2]
    if isinstance(masks, np.ndarray):
        masks = [masks] * H
    scale = 1 / math.sqrt(D) if scale is None else scale
    q64, k64, v64 = q.double(), k.double(), v.double()
    out = torch.zeros(B, H, m, D, dtype=torch.float64)
    for h in range(H):
        mk = torch.from_numpy(np.ascontiguousarray(masks[h][n - m:, :]))
        s = torch.einsum("bmd,bnd->bmn", q64[:, h], k64[:, h]) * scale
        s = s.masked_fill(~mk, float("-inf"))
        p = torch.softmax(s, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)
        p = p.masked_fill(~mk, 0.0)
        out[:, h] = p @ v64[:, h]
    return out
