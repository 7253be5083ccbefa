"""What a primitive is: its signature and the hooks every pass calls.

In: nothing (a base class). Out: :class:`Param` (one parameter of a primitive's signature) and
:class:`Primitive`, the class each entry of the primitive table (:mod:`spattn.prims`)
subclasses. A primitive states, once, everything a pass needs to know about it:

========================  ===================================================================
signature                 ``name``, ``params`` (kinds, minimums, defaults), ``doc`` (SPEC's
                          defining predicate), ``check`` (constraints between arguments)
binding                   ``clamp``: the arguments at sequence length n, clamped once so that
                          every value fits a signed 32-bit integer and means the same
canonical form            ``simplify`` (identities such as ``stride(1) = full``), ``window``
                          (its arguments as a window around the diagonal, for merging) and
                          ``merge`` (several of it under ``|`` or ``&`` as fewer)
element predicate         ``mask(ops, i, j, d, a)``: M[i, j] written with operators that
                          numpy arrays, torch tensors and the Triton code generator's symbolic
                          values all share (``ops`` supplies table lookups)
lowering (rows)           ``est`` (intervals per row), ``interval`` (one interval per row) or
                          ``progression`` (single keys in arithmetic progression), ``rows``
                          (the exact normal-form intervals of a range of rows)
lowering (tiles)          ``tiles``: closed-form labelled runs of key blocks per query block;
                          ``period`` (shift invariance) for settling undecided tiles
analysis                  ``structure`` (the end points of its intervals, for the compressed
                          row families), ``causal_form``, ``symmetric``, ``progression_step``
eviction (KV cache)       ``later``: C(j) = {i >= j : M[i, j]}, the queries at or after key j
                          that attend it, as arithmetic progressions (:mod:`spattn.evict`);
                          ``n_dependent``: M changes with n even at constant arguments
========================  ===================================================================

Predicates must not branch on argument values (the Triton kernel generated from them is
shared by every sequence length) and may take ``%`` and ``//`` only of non-negative operands
or compare a remainder with zero, so that C semantics (Triton's integer division truncates)
and Python's agree.

``later`` works without n, on arguments evaluated once (``a`` as :func:`spattn.bind.arguments`
gives them, unclamped; index sets as :class:`~spattn.ir.IndexRuns` resolved as unbounded sets
by :mod:`spattn.evict`, an end at :data:`INF` meaning "no end"). It returns C(j) for an int64
array of key positions j as a list of progressions ``(first, last, step)`` whose union is
C(j): ``first`` and ``last`` int64 arrays shaped like j, ``step`` an int >= 1; the elements are
first, first + step, ... up to ``last`` (which need not be one of them); ``last = INF`` means
unbounded and ``first > last`` empty (for that j). The list's length depends on the arguments
only, never on j. Every argument and position is capped at :data:`INF` (:func:`capped_add`,
:func:`progressions`) so that int64 arithmetic never overflows: a position at INF stands for
"some query past every real sequence", and an argument at or above INF counts as unbounded.
``later`` returns None when there is no closed form (``random``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import intervals as iv
from .. import ir

INF = 2**62
"""``later``'s unbounded end: no sequence reaches it, and int64 arithmetic near it cannot
overflow."""


def capped_add(j: np.ndarray, w: int) -> np.ndarray:
    """``min(j + w, INF)`` for int64 ``j`` in [0, INF] and an int ``w >= 0``, without overflow."""
    w = min(int(w), INF)
    return np.minimum(j, INF - w) + w


def progressions(first: np.ndarray, last: np.ndarray, step: int) -> list[tuple]:
    """The progression ``(first, last, step)`` as ``later`` returns it: itself when the step
    is below INF, else its first element plus, where it is unbounded, the far point INF."""
    if step < INF:
        return [(first, last, int(step))]
    far = np.where(last >= INF, INF, -1).astype(np.int64)
    return [(first, np.minimum(last, first), 1), (np.full_like(first, INF), far, 1)]


@dataclass(frozen=True)
class Param:
    """One parameter of a primitive: name, kind ("int" or "index"), minimum, default."""

    name: str
    kind: str = "int"  # "int" or "index"
    minimum: int | None = None
    default: int | None = None  # keyword parameters have a default


def const_values(args: tuple) -> tuple | None:
    """The integer values of IR arguments when every one is a literal, else None."""
    if all(isinstance(a, ir.Const) for a in args):
        return tuple(a.value for a in args)
    return None


class Primitive:
    """Base class of the primitive table's entries (see the module docstring)."""

    name: str = ""
    params: tuple[Param, ...] = ()
    doc: str = ""
    #: M equals its transpose at every n
    symmetric: bool = False
    #: every row's keys are one interval (``interval`` is defined)
    single_interval: bool = False
    #: the pairs are exactly ``i ≡ j (mod s)`` for its one argument s (``stride``)
    residue_class: bool = False
    #: M changes with n even when every argument is a constant (``random``: the draw)
    n_dependent: bool = False

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"

    # -- signature and binding

    def check(self, vals: tuple, where: str = "") -> str | None:
        """A problem with argument values ``vals`` that their minimums do not catch (``where``
        is appended to the values, e.g. " at n = 100"), or None."""
        return None

    def clamp(self, vals: tuple, n: int) -> tuple:
        """The arguments at sequence length ``n``, clamped so that each is at most n while
        meaning the same (|i − j| < n). Index sets are already resolved."""
        return tuple(min(v, n) if isinstance(v, int) else v for v in vals)

    # -- canonical form (IR arguments, constant or not)

    def simplify(self, args: tuple) -> ir.Node | None:
        """An equal, simpler node for these arguments (exact at every n), or None."""
        return None

    def window(self, args: tuple) -> tuple[int, int] | None:
        """``(l, r)`` when this primitive with these constant arguments is ``window(l, r)``."""
        return None

    def merge(self, op: str, vals: list[tuple]) -> list[tuple] | None:
        """Constant argument tuples of several of this primitive under ``op`` ("union" or
        "inter") merged into an equal, shorter list; None when they do not merge."""
        return None

    def causal_form(self, args: tuple) -> bool:
        """Whether this primitive with these IR arguments has no pair j > i at any n."""
        return False

    # -- semantics

    def mask(self, ops: Any, i: Any, j: Any, d: Any, a: tuple) -> Any:
        """M[i, j] for broadcastable positions ``i``, ``j`` in [0, n) and ``d = i - j``."""
        raise NotImplementedError

    def key_table(self, a: tuple, n: int) -> np.ndarray | None:
        """For predicates that look keys up per row (``ops.random``): the (n, k) table of
        every row's keys that torch and Triton evaluation read; None when not needed."""
        return None

    # -- lowering to rows

    def est(self, a: tuple, n: int) -> float:
        """About how many intervals one row has (sizes row chunks)."""
        return 1.0

    def passes(self, a: tuple, n: int, rows: int) -> float:
        """About how many vectorised numpy passes lowering ``rows`` rows at once costs beyond
        its intervals (bounds lowering time; 0 for closed-form primitives)."""
        return 0.0

    def interval(self, a: tuple, n: int, i: np.ndarray):
        """``(lo, hi)`` per row for single-interval primitives (``lo >= hi``: empty row)."""
        raise NotImplementedError

    def progression(self, a: tuple, n: int, i, clo, chi):
        """``(first, count, step)`` per row when the row's keys within ``[clo, chi)`` are
        single keys in arithmetic progression with step > 1; None otherwise."""
        return None

    def progression_step(self, a: tuple) -> int | None:
        """The step of the primitive's key progressions (stride, dilation), if it has one."""
        return None

    def rows(self, a: tuple, n: int, i: np.ndarray, clo: np.ndarray, chi: np.ndarray):
        """Normal-form intervals ``(row, lo, hi)`` of rows ``i`` within ``[clo, chi)``."""
        lo, hi = self.interval(a, n, i)
        return iv.per_row(i, np.maximum(lo, clo), np.minimum(hi, chi))

    # -- lowering to tiles

    def tiles(self, a: tuple, g) -> tuple:
        """Labelled runs (:mod:`spattn.tiles`) of the tiles of grid ``g``."""
        raise NotImplementedError

    def period(self, a: tuple) -> int | None:
        """p when shifting i and j together by a multiple of p keeps M (None: no such p)."""
        return None

    # -- eviction (KV cache)

    def later(self, a: tuple, j: np.ndarray) -> list[tuple] | None:
        """C(j) = {i >= j : M[i, j]} as progressions ``(first, last, step)`` (see the module
        docstring), or None when there is no closed form."""
        return None

    # -- analysis

    def saturates(self, a: tuple) -> bool:
        """Whether some position's row and column are both full with these arguments (global
        tokens): any union containing it links every pair within two hops."""
        return False

    def structure(self, a: tuple, n: int, st) -> bool:
        """Add the end points of this primitive's intervals to ``st`` (offsets ``D``: ends at
        ``i + d``; constants ``C``; row breakpoints ``R``; block sizes ``blocks``) and return
        True, or return False when its rows are not piecewise affine in i."""
        return False
