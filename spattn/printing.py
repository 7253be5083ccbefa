"""Canonical text of pattern IR.

In: a :class:`~spattn.ir.Node`. Out: its text with minimal parentheses (Python precedence:
``~`` > ``-`` > ``&`` > ``|``), keyword arguments only when they differ from their default;
``parse`` of that text gives an equal node.
"""

from __future__ import annotations

from . import ir, prims

_PREC = {ir.Union: 1, ir.Inter: 2, ir.Diff: 3, ir.Not: 4}


def prim_text(p: ir.Prim) -> str:
    """Canonical text of one primitive (keyword arguments only when not default)."""
    spec = prims.of(p)
    if not spec.params:
        return p.name
    parts = []
    for par, a in zip(spec.params, p.args):
        s = a.text() if par.kind == "index" else ir.int_text(a)
        if par.default is not None:
            if isinstance(a, ir.Const) and a.value == par.default:
                continue
            s = f"{par.name}={s}"
        parts.append(s)
    return f"{p.name}({', '.join(parts)})"


def text(node: ir.Node, prec: int = 0) -> str:
    """Canonical text of a pattern node; parses back to an equal node."""
    if isinstance(node, ir.Prim):
        return prim_text(node)
    p = _PREC[type(node)]
    if isinstance(node, ir.Union):
        s = " | ".join(text(x, 1) for x in node.items)
    elif isinstance(node, ir.Inter):
        s = " & ".join(text(x, 2) for x in node.items)
    elif isinstance(node, ir.Diff):
        s = f"{text(node.a, 3)} - {text(node.b, 4)}"
    elif isinstance(node, ir.Not):
        s = "~" + text(node.a, 4)
    else:
        raise TypeError(node)
    return f"({s})" if prec > p else s
