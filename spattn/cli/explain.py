"""``spattn explain PATTERN [-n N]``.

In: pattern text and a sequence length (4096 by default). Out: the canonical form and the IR
as a tree, each node labelled with its density at n (or the error lowering it gives); status 0.
"""

from __future__ import annotations

import argparse

from ..errors import SpattnError
from .base import command, compile_pattern, console, seq_len


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="pattern text")
    p.add_argument("-n", dest="n", type=seq_len, default=4096,
                   help="sequence length for node densities (4096)")


@command("explain", "canonical form and the IR as a tree with each node's density",
         _explain_args)
def cmd_explain(args: argparse.Namespace) -> int:
    """`spattn explain`: canonical form and the IR tree with each node's density."""
    from rich.markup import escape
    from rich.tree import Tree

    from .. import ir
    from ..lower import check_n, nnz
    from ..printing import text

    p = compile_pattern(args.pattern)
    n = check_n(args.n)
    con = console()
    con.print(f"[bold]canonical:[/bold] {escape(str(p))}")

    errors: list[str] = []

    def label(node) -> str:
        kind = {ir.Union: "| union", ir.Inter: "& intersection", ir.Diff: "- difference",
                ir.Not: "~ complement"}.get(type(node))
        head = escape(text(node)) if kind is None else f"[bold]{kind}[/bold]"
        try:
            d = f"{nnz(node, n) / (float(n) * n):.4g}"
        except SpattnError as e:
            errors.append(str(e).splitlines()[0])
            d = f"error: {escape(errors[-1])}"
        if kind is not None and len(text(node)) <= 60:
            head += f"  {escape(text(node))}"
        return f"{head}  [dim]density {d}[/dim]"

    tree = Tree(label(p.node))
    stack = [(p.node, tree)]
    while stack:
        node, t = stack.pop()
        for c in ir.children(node):
            sub = t.add(label(c))
            stack.append((c, sub))
    con.print(f"IR at n = {n:,}:")
    con.print(tree)
    if errors:  # like `spattn stats`: a pattern that cannot be lowered at n is an error
        raise SpattnError(f"the pattern cannot be lowered at n = {n:,}: {errors[0]}")
    return 0
