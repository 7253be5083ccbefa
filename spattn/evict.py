"""Closed-form eviction for a pattern-driven KV cache: the last query that attends each key.

In: a canonical :class:`~spattn.ir.Node`. Out: :func:`length_independent`, :func:`eviction`
and :class:`Eviction`, whose ``last(j)`` is, for key positions j, the last query i >= j with
M[i, j] = 1 (:data:`INF`: no last one; -1: none at all). At cache length L (positions 0..L-1
seen), key j < L must be held iff ``last(j) >= L``.

How: each primitive's ``later`` hook (:mod:`spattn.prims.base`) gives C(j) = {i >= j : M[i, j]}
as arithmetic progressions, vectorised over j. A union concatenates its items' progressions
(those with the same step and first elements merge); an intersection intersects them pairwise
by the Chinese remainder theorem (steps are constants, so gcd, lcm and inverses are Python
ints). That is exact for any tree of unions and intersections. ``a - b`` and ``~a`` have no
closed form in general and are bounded above, C(a - b) by C(a) and C(~a) by [j, INF), and so
is any sub-tree that would need more than :data:`MAX_PROGRESSIONS` progressions; the result is
then an upper bound (``exact`` False): never too small, so a key is never dropped too early.

Only length-independent patterns qualify: M[i, j] must not change with n, so no argument uses
n, no index set has a negative position (list element, slice bound or step) and no primitive
is ``n_dependent`` (``random``). Their arguments are evaluated once, without n: integers as
:func:`spattn.bind.arguments` gives them at any n, lists as positions, slices as unbounded
sets (``[a:]`` is every position from a on, ``[a::c]`` a progression without end).
"""

from __future__ import annotations

import math

import numpy as np

from . import bind, ir, prims
from .errors import LoweringError, SpattnError
from .prims.base import INF, progressions

MAX_PROGRESSIONS = 4096  #: a sub-tree needing more progressions is bounded by [j, INF)
_NARROW = 1 << 31  #: steps whose lcm is at most this intersect in int64, larger ones exactly


# --------------------------------------------------------------------------------------------
# Which patterns qualify, and their arguments without n


def _uses_n(e: ir.IntExpr) -> bool:
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, ir.SeqLen):
            return True
        if isinstance(x, ir.BinOp):
            stack += [x.a, x.b]
        elif isinstance(x, ir.Neg):
            stack.append(x.a)
        elif isinstance(x, ir.Func):
            stack.extend(x.args)
    return False


def _fixed(p: ir.Prim) -> bool:
    """Whether a primitive's M is the same at every n."""
    if prims.of(p).n_dependent:
        return False
    for a in p.args:
        if isinstance(a, ir.IndexList):
            exprs = [(e, 0) for e in a.items]
        elif isinstance(a, ir.IndexSlice):
            exprs = [(a.start, 0), (a.stop, 0), (a.step, 1)]
        else:
            exprs = [(a, None)]
        for e, least in exprs:
            if e is None:
                continue
            if _uses_n(e):
                return False
            try:
                if least is not None and ir.evaluate(e, 0) < least:
                    return False
            except LoweringError:  # fails at every n: nothing to evict
                return False
    return True


def length_independent(node: ir.Node) -> bool:
    """Whether M[i, j] of this canonical node is the same at every sequence length n: no
    argument uses n, no index set has a negative position (list element, slice bound or
    step), and no primitive's pairs depend on n (``random``)."""
    stack = [node]
    while stack:
        x = stack.pop()
        stack.extend(ir.children(x))
        if isinstance(x, ir.Prim) and not _fixed(x):
            return False
    return True


def _slice_runs(s: ir.IndexSlice) -> ir.IndexRuns:
    """A slice with non-negative bounds as the set it denotes at every n (unbounded when it
    has no stop); bounds are capped at INF."""
    a = 0 if s.start is None else min(ir.evaluate(s.start, 0), INF)
    b = INF if s.stop is None else min(ir.evaluate(s.stop, 0), INF)
    c = 1 if s.step is None else min(ir.evaluate(s.step, 0), INF)
    if a >= b:
        return ir.IndexRuns(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return ir.IndexRuns(np.array([a], np.int64), np.array([b], np.int64), c)


def _arguments(p: ir.Prim) -> tuple:
    """A length-independent primitive's arguments, checked as at lowering, without n."""
    vals = list(bind.arguments(p, INF))  # integers as at any n; lists as positions
    for k, a in enumerate(p.args):
        if isinstance(a, ir.IndexSlice):
            vals[k] = _slice_runs(a)
    return tuple(vals)


# --------------------------------------------------------------------------------------------
# Progressions: (first, last, step), int64 arrays shaped like j and a Python int


def _merge(progs: list[tuple]) -> list[tuple]:
    """The same union in fewer progressions: those that are empty for every j go, and those
    with the same step and first elements become one, up to the largest ``last``."""
    out: dict[tuple, tuple] = {}
    for f, l, s in progs:
        if np.all(f > l):
            continue
        key = (s, f.tobytes())
        if key in out:
            l = np.maximum(out[key][1], l)
        out[key] = (f, l, s)
    return list(out.values())


def _meet(p: tuple, q: tuple) -> list[tuple]:
    """The intersection of two progressions (Chinese remainder theorem, per j)."""
    (f1, l1, s1), (f2, l2, s2) = p, q
    lo, hi = np.maximum(f1, f2), np.minimum(l1, l2)
    g = math.gcd(s1, s2)
    big = s1 // g * s2  # the lcm
    if big == 1:
        return [(lo, hi, 1)]
    wide = big > _NARROW  # products of residues could overflow int64: Python ints
    a, b, low = (x.astype(object) for x in (f1, f2, lo)) if wide else (f1, f2, lo)
    d = b - a
    m = s2 // g
    x = a + s1 * ((d // g) % m * pow(s1 // g, -1, m) % m)  # ≡ f1 (s1), ≡ f2 (s2), >= f1
    x = x + (low - x + (big - 1)) // big * big  # the first such x >= lo
    ok = d % g == 0
    x = np.minimum(x, INF)
    if wide:
        x, ok = x.astype(np.int64), ok.astype(bool)
    # past INF everything is the far point: a solution there counts where both are unbounded
    keep = (ok & (x <= hi)) | ((lo >= INF) & (hi >= INF))
    return progressions(np.where(keep, x, INF), np.where(keep, hi, -1), big)


def _top(j: np.ndarray) -> list[tuple]:
    return [(j, np.full_like(j, INF), 1)]


def _later(plan: tuple, j: np.ndarray) -> list[tuple]:
    kind = plan[0]
    if kind == "top":
        return _top(j)
    if kind == "prim":
        return _merge(plan[1].later(plan[2], j))
    parts = [_later(x, j) for x in plan[1]]
    if kind == "union":
        return _merge([p for part in parts for p in part])
    acc = parts[0]
    for part in parts[1:]:
        acc = _merge([r for p in acc for q in part for r in _meet(p, q)])
    return acc


def _plan(node: ir.Node) -> tuple[tuple, int, bool] | None:
    """``(plan, progressions at most, exact)`` of a length-independent node, or None when a
    primitive it needs has no closed form."""
    if isinstance(node, ir.Not):
        return ("top",), 1, False
    if isinstance(node, ir.Diff):
        sub = _plan(node.a)
        return None if sub is None else (sub[0], sub[1], False)
    if isinstance(node, ir.Prim):
        spec = prims.of(node)
        args = _arguments(node)
        probe = spec.later(args, np.zeros(0, np.int64))
        if probe is None:
            return None
        plan, count, exact = ("prim", spec, args), len(probe), True
    else:
        subs = [_plan(x) for x in ir.children(node)]
        if any(s is None for s in subs):
            return None
        counts = [s[1] for s in subs]
        union = isinstance(node, ir.Union)
        count = sum(counts) if union else math.prod(counts) + 1  # + 1: the far point
        plan = ("union" if union else "inter", tuple(s[0] for s in subs))
        exact = all(s[2] for s in subs)
    if count > MAX_PROGRESSIONS:
        return ("top",), 1, False
    return plan, count, exact


# --------------------------------------------------------------------------------------------
# The result


class Eviction:
    """When each key of a length-independent pattern can go: ``last(j)``, the last query at or
    after key j that attends it. ``exact``: ``last`` is exactly that (a tree of unions and
    intersections of primitives); otherwise it is an upper bound (``a - b``, ``~a``, or a
    sub-tree over :data:`MAX_PROGRESSIONS` progressions). Built by :func:`eviction`."""

    __slots__ = ("node", "exact", "_plan")

    def __init__(self, node: ir.Node, plan: tuple, exact: bool):
        self.node, self._plan, self.exact = node, plan, exact

    def __repr__(self) -> str:
        return f"Eviction({'exact' if self.exact else 'upper bound'})"

    def last(self, j: np.ndarray) -> np.ndarray:
        """Per key position j (int, any shape, in [0, INF)): the last query i >= j with
        M[i, j] = 1 as int64; INF when there is no last one (the key is never evicted), -1
        when no query at or after j attends it. Key j < L is held at cache length L iff
        ``last(j) >= L``."""
        j = np.asarray(j, np.int64)
        if j.size and (int(j.min()) < 0 or int(j.max()) >= INF):
            raise SpattnError(f"key positions must be in 0..2**62 - 1, got {int(j.min())}.."
                              f"{int(j.max())}")
        out = np.full(j.shape, -1, np.int64)
        for f, l, s in _later(self._plan, j):
            top = np.where(l >= INF, INF, f + (l - f) // s * s)  # the largest element
            np.maximum(out, np.where(f <= l, top, -1), out=out)
        return out


def eviction(node: ir.Node) -> Eviction | None:
    """The closed-form eviction of a canonical node; None when the pattern is not
    :func:`length_independent` (a cache must then keep every key) or a primitive it needs has
    no closed form."""
    if not length_independent(node):
        return None
    planned = _plan(node)
    if planned is None:
        return None
    plan, _, exact = planned
    return Eviction(node, plan, exact)


__all__ = ["INF", "MAX_PROGRESSIONS", "Eviction", "eviction", "length_independent"]
