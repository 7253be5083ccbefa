"""The primitive table: one entry per primitive of the language, the single home of its
meaning.

In: nothing. Out: :data:`PRIMITIVES` (name → :class:`~spattn.prims.base.Primitive`),
:func:`of` (the entry of an IR primitive node) and :data:`CAUSAL` (the node ``causal``).
Every pass — parsing, canonical form, printing, lowering to rows and to tiles, analysis, the
element predicate on numpy / torch / Triton — asks the entry of a primitive instead of testing
its name. Adding a primitive is one entry here plus one test per pass (see
docs/ARCHITECTURE.md for the checklist).
"""

from __future__ import annotations

from .. import ir
from . import indexed, periodic, random, windows
from .base import Param, Primitive, const_values

_ORDER = ("local", "window", "causal", "stride", "dilated", "block", "fixed", "rows", "cols",
          "global", "sink", "random", "full", "none")  # the order of SPEC's table
_ENTRIES = {p.name: p for p in (*windows.ENTRIES, *periodic.ENTRIES, *indexed.ENTRIES,
                                *random.ENTRIES)}
assert set(_ORDER) == set(_ENTRIES), "every entry is listed in _ORDER"
PRIMITIVES: dict[str, Primitive] = {name: _ENTRIES[name] for name in _ORDER}

CAUSAL = ir.Prim("causal")


def of(node: ir.Prim) -> Primitive:
    """The table entry of a primitive node."""
    return PRIMITIVES[node.name]


__all__ = ["PRIMITIVES", "Param", "Primitive", "of", "const_values", "CAUSAL"]
