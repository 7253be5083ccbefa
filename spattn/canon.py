"""Canonical form of pattern IR.

In: a raw :class:`~spattn.ir.Node`. Out: an equivalent node in canonical form: unions and
intersections flattened, deduplicated and sorted by their text; identities with ``full`` and
``none`` applied; ``~~a = a``; and only merges that are exact at every sequence length (for
constant arguments): windows merge (``local(a) | local(b) = local(max(a, b))``,
``window(a, b) & causal = window(a, 0)``), sinks merge, strides merge when one divides the
other. Arguments that use ``n`` are never merged, so a range error at lowering is never hidden.
"""

from __future__ import annotations

import math

from .errors import SpattnError
from .ir import (
    FULL,
    NONE,
    Const,
    Diff,
    IndexList,
    Inter,
    Node,
    Not,
    Prim,
    Union,
    text,
)


def _c(*vals) -> tuple[Const, ...]:
    return tuple(Const(v) for v in vals)


def _const_args(p: Prim):
    if all(isinstance(a, Const) for a in p.args):
        return tuple(a.value for a in p.args)
    return None


def _window(l: int, r: int) -> Prim:
    return Prim("local", _c(l)) if l == r else Prim("window", _c(l, r))


def _prim(p: Prim) -> Node:
    v = _const_args(p)
    if p.name in ("rows", "cols", "global"):
        a = p.args[0]
        if isinstance(a, IndexList) and not a.items:
            return NONE
        return p
    if v is None:
        return p
    name = p.name
    if name == "window" and v[0] == v[1]:
        return _window(*v)
    if name == "dilated":
        w, d = v
        if d == 1 or w == 0:
            return _window(w if d == 1 else 0, w if d == 1 else 0)
    if name == "stride" and v[0] == 1:
        return FULL
    if name == "fixed" and v[0] == v[1]:
        return FULL
    if name == "block" and v[0] == 1:
        return _window(0, 0)
    if name in ("sink", "random") and v[0] == 0:
        return NONE
    return p


def _win(p: Node):
    """(l, r) if p is a window with constant arguments."""
    if isinstance(p, Prim) and p.name in ("local", "window"):
        v = _const_args(p)
        if v is not None:
            return (v[0], v[0]) if p.name == "local" else v
    return None


def _merge_sinks(items: list[Node], pick) -> list[Node]:
    """sink(a) | sink(b) = sink(max(a, b)); sink(a) & sink(b) = sink(min(a, b))."""
    sinks = [x for x in items if isinstance(x, Prim) and x.name == "sink" and _const_args(x)]
    if len(sinks) < 2:
        return items
    k = pick(_const_args(s)[0] for s in sinks)
    return [x for x in items if x not in sinks] + [Prim("sink", _c(k))]


def _merge_union(items: list[Node]) -> list[Node]:
    wins = [w for w in map(_win, items) if w is not None]
    rest = [x for x in items if _win(x) is None]
    causal = Prim("causal") in rest
    if wins:
        l, r = max(w[0] for w in wins), max(w[1] for w in wins)
        if not (causal and r == 0):
            rest.append(_window(l, r))
    rest = _merge_sinks(rest, max)
    strides = [x for x in rest if isinstance(x, Prim) and x.name == "stride" and _const_args(x)]
    if len(strides) > 1:
        vals = sorted({_const_args(s)[0] for s in strides})
        keep = [s for s in vals if not any(t != s and s % t == 0 for t in vals)]
        rest = [x for x in rest if x not in strides] + [Prim("stride", _c(s)) for s in keep]
    return rest


def _merge_inter(items: list[Node]) -> list[Node]:
    wins = [w for w in map(_win, items) if w is not None]
    rest = [x for x in items if _win(x) is None]
    if wins:
        l, r = min(w[0] for w in wins), min(w[1] for w in wins)
        if Prim("causal") in rest:
            rest.remove(Prim("causal"))
            r = 0
        rest.append(_window(l, r))
    rest = _merge_sinks(rest, min)
    strides = [x for x in rest if isinstance(x, Prim) and x.name == "stride" and _const_args(x)]
    if len(strides) > 1:
        s = math.lcm(*(_const_args(x)[0] for x in strides))
        rest = [x for x in rest if x not in strides] + [Prim("stride", _c(s))]
    return rest


def _nary(cls, items, unit: Node, zero: Node, merge, deep: bool) -> Node:
    flat: list[Node] = []
    for x in items:
        x = _canon(x, True) if deep else (_prim(x) if isinstance(x, Prim) else x)
        flat.extend(x.items if isinstance(x, cls) else (x,))
    if zero in flat:
        return zero
    flat = [x for x in flat if x != unit]
    flat = merge(list(dict.fromkeys(flat)))
    # merging may have produced identities again
    flat = [_prim(x) if isinstance(x, Prim) else x for x in flat]
    if zero in flat:
        return zero
    flat = [x for x in dict.fromkeys(flat) if x != unit]
    if not flat:
        return unit
    if len(flat) == 1:
        return flat[0]
    return cls(tuple(sorted(flat, key=text)))


def canonicalize(node: Node, shallow: bool = False) -> Node:
    """Return the canonical form of ``node`` (idempotent). With ``shallow=True`` the node's
    children must already be canonical and only the top is rewritten (what the Python
    operators on patterns need: O(top) instead of O(tree) per operation)."""
    try:
        return _canon(node, not shallow)
    except RecursionError:
        raise SpattnError("pattern expression is nested too deeply to canonicalise") from None


def _canon(node: Node, deep: bool) -> Node:
    """Canonicalise ``node``; with ``deep=False`` its children are taken as canonical. Nodes
    built here from canonical parts are canonicalised with ``deep=False``."""
    if isinstance(node, Prim):
        return _prim(node)
    if isinstance(node, Union):
        return _nary(Union, node.items, NONE, FULL, _merge_union, deep)
    if isinstance(node, Inter):
        return _nary(Inter, node.items, FULL, NONE, _merge_inter, deep)
    if isinstance(node, Not):
        a = _canon(node.a, True) if deep else node.a
        if isinstance(a, Not):
            return a.a
        if a == FULL:
            return NONE
        if a == NONE:
            return FULL
        return Not(a)
    if isinstance(node, Diff):
        a, b = (_canon(node.a, True), _canon(node.b, True)) if deep else (node.a, node.b)
        if isinstance(a, Diff):  # (x - y) - b == x - (y | b)
            return _canon(Diff(a.a, _canon(Union((a.b, b)), False)), False)
        if b == NONE:
            return a
        if a == NONE or b == FULL or a == b:
            return NONE
        if a == FULL:
            return _canon(Not(b), False)
        return Diff(a, b)
    raise TypeError(f"not a pattern node: {node!r}")
