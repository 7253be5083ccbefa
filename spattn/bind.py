"""A pattern at one sequence length: every argument evaluated, checked and clamped, once.

In: a canonical :class:`~spattn.ir.Node` and a sequence length ``n``. Out: a tree of
:class:`Bound` nodes, the input of every pass that works at a given n (lowering to rows and
tiles, element predicates, kernel parameters). Each primitive's arguments are evaluated at n
(range errors name the primitive, the argument, its value and n), checked against its
signature, and clamped by its table entry so that each integer is at most n and means the
same; index sets are resolved to runs. Each node also carries an estimate of intervals per row,
which sizes the row chunks of lowering.
"""

from __future__ import annotations

from . import ir, prims
from .errors import LoweringError

KINDS = ("prim", "union", "inter", "diff", "not")


class Bound:
    """A node at sequence length ``n``: ``kind`` (one of :data:`KINDS`), the IR ``node``,
    ``spec`` and clamped ``args`` for primitives, ``items`` for operators (for ``diff``:
    ``(a, b)``; for ``not``: ``(a,)``), and ``est``, about how many intervals a row has."""

    __slots__ = ("kind", "node", "spec", "args", "items", "est")

    def __init__(self, kind: str, node: ir.Node, spec: prims.Primitive | None = None,
                 args: tuple = (), items: tuple = (), est: float = 1.0):
        self.kind, self.node, self.spec, self.args = kind, node, spec, args
        self.items, self.est = items, est

    @property
    def name(self) -> str | None:
        """The primitive's name (None for operators)."""
        return None if self.spec is None else self.spec.name

    def __repr__(self) -> str:
        if self.kind == "prim":
            return f"Bound({self.name}{self.args})"
        return f"Bound({self.kind}, {len(self.items)} items)"

    def prims(self) -> list[Bound]:
        """The bound primitives of the tree, in evaluation order (depth first, left to
        right)."""
        out, stack = [], [self]
        while stack:
            x = stack.pop()
            if x.kind == "prim":
                out.append(x)
            else:
                stack.extend(reversed(x.items))
        return out


def arguments(node: ir.Prim, n: int) -> tuple:
    """Evaluate a primitive's arguments at ``n`` and check them (not clamped): integers as
    ``int``, index sets as :class:`~spattn.ir.IndexRuns`."""
    spec = prims.of(node)
    out = []
    for par, a in zip(spec.params, node.args):
        if par.kind == "index":
            out.append(ir.resolve_index_set(a, n, f"{node.name}({a.text()})"))
            continue
        v = ir.evaluate(a, n)
        if par.minimum is not None and v < par.minimum:
            src = "" if isinstance(a, ir.Const) else f" (from `{ir.int_text(a)}`)"
            raise LoweringError(
                f"{node.name}: argument {par.name} = {v}{src} at n = {n}; "
                f"{par.name} must be >= {par.minimum}")
        out.append(v)
    problem = spec.check(tuple(out), f" at n = {n}")
    if problem:
        raise LoweringError(problem)
    return tuple(out)


def bind(node: ir.Node, n: int) -> Bound:
    """The bound tree of ``node`` at ``n`` (raising range errors before any work)."""
    if isinstance(node, ir.Prim):
        spec = prims.of(node)
        args = spec.clamp(arguments(node, n), n)
        return Bound("prim", node, spec, args, est=spec.est(args, n))
    if isinstance(node, (ir.Union, ir.Inter)):
        items = tuple(bind(x, n) for x in node.items)
        kind = "union" if isinstance(node, ir.Union) else "inter"
        return Bound(kind, node, items=items, est=sum(x.est for x in items))
    if isinstance(node, ir.Diff):
        items = (bind(node.a, n), bind(node.b, n))
        return Bound("diff", node, items=items, est=items[0].est + items[1].est)
    if isinstance(node, ir.Not):
        a = bind(node.a, n)
        return Bound("not", node, items=(a,), est=a.est + 1)
    raise TypeError(f"not a pattern node: {node!r}")
