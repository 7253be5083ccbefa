"""Canonical form of pattern IR.

In: a raw :class:`~spattn.ir.Node`. Out: an equivalent node in canonical form: unions and
intersections flattened, deduplicated and sorted by their text; identities with ``full`` and
``none`` applied; ``~~a = a``; each primitive's own identities and merges, from its entry in
the primitive table (:mod:`spattn.prims`: ``stride(1) = full``, ``sink(a) | sink(b) =
sink(max(a, b))``, strides merge when one divides the other …); and windows, which merge
across ``local`` and ``window`` (``local(a) | local(b) = local(max(a, b))``,
``window(a, b) & causal = window(a, 0)``). Only merges that are exact at every sequence length
(constant arguments): arguments that use ``n`` are never merged, so a range error at lowering
is never hidden.
"""

from __future__ import annotations

from . import prims
from .errors import SpattnError
from .ir import FULL, NONE, Const, Diff, Inter, Node, Not, Prim, Union
from .prims.windows import window_node
from .printing import text


def _prim(p: Prim) -> Node:
    """The primitive's own identities (``stride(1) = full``, ``window(a, a) = local(a)`` …)."""
    return prims.of(p).simplify(p.args) or p


def _win(p: Node):
    """(l, r) if p is a window with constant arguments."""
    return prims.of(p).window(p.args) if isinstance(p, Prim) else None


def _merge_same(items: list[Node], op: str) -> list[Node]:
    """Several constant instances of one primitive merged by its table entry
    (``sink(a) | sink(b) = sink(max(a, b))``, ``stride(a) & stride(b) = stride(lcm(a, b))`` …)."""
    groups: dict[str, list[Prim]] = {}
    for x in items:
        if isinstance(x, Prim) and x.args and prims.const_values(x.args) is not None:
            groups.setdefault(x.name, []).append(x)
    for name, xs in groups.items():
        merged = prims.PRIMITIVES[name].merge(op, [prims.const_values(x.args) for x in xs])
        if merged is not None:
            items = [x for x in items if x not in xs]
            items += [Prim(name, tuple(Const(v) for v in vals)) for vals in merged]
    return items


def _split_windows(items: list[Node]):
    """The constant windows (as (l, r)) and the other items."""
    wins, rest = [], []
    for x in items:
        w = _win(x)
        (rest if w is None else wins).append(x if w is None else w)
    return wins, rest


def _merge_union(items: list[Node]) -> list[Node]:
    wins, rest = _split_windows(items)
    if wins:  # windows all contain the diagonal: their union is a window
        l, r = max(w[0] for w in wins), max(w[1] for w in wins)
        if not (prims.CAUSAL in rest and r == 0):  # window(l, 0) ⊆ causal
            rest.append(window_node(l, r))
    return _de_morgan(_merge_same(rest, "union"), Inter)


def _merge_inter(items: list[Node]) -> list[Node]:
    wins, rest = _split_windows(items)
    if wins:
        l, r = min(w[0] for w in wins), min(w[1] for w in wins)
        if prims.CAUSAL in rest:  # window(l, r) & causal = window(l, 0)
            rest.remove(prims.CAUSAL)
            r = 0
        rest.append(window_node(l, r))
    return _de_morgan(_merge_same(rest, "inter"), Union)


def _de_morgan(items: list[Node], inner) -> list[Node]:
    """Several complements under one operator as one: ``~a & ~b = ~(a | b)`` and
    ``~a | ~b = ~(a & b)`` (``inner`` is the dual operator), so that the dual's merges apply
    (``~local(1) & ~local(5) = ~local(5)``) and lowering sweeps once, not once per term."""
    nots = [x for x in items if isinstance(x, Not)]
    if len(nots) < 2:
        return items
    dual = _canon(inner(tuple(x.a for x in nots)), False)
    return [x for x in items if not isinstance(x, Not)] + [_canon(Not(dual), False)]


def _nary(cls, items, unit: Node, zero: Node, merge, deep: bool) -> Node:
    flat: list[Node] = []
    for x in items:
        x = _canon(x, True) if deep else (_prim(x) if isinstance(x, Prim) else x)
        flat.extend(x.items if isinstance(x, cls) else (x,))
    if zero in flat:
        return zero
    flat = [x for x in flat if x != unit]
    flat = merge(list(dict.fromkeys(flat)))
    flat = [y for x in flat for y in (x.items if isinstance(x, cls) else (x,))]
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
