"""The pattern IR: small, immutable, hashable nodes.

In: nothing (this module is the bottom of the stack). Out: node classes for integer argument
expressions (:class:`IntExpr`), index sets (:class:`IndexList`, :class:`IndexSlice`) and
patterns (:class:`Prim`, :class:`Union`, :class:`Inter`, :class:`Diff`, :class:`Not`), the
evaluation of integer expressions and index sets at a sequence length, and the canonical text
of expressions and index sets. What each primitive *means* lives in :mod:`spattn.prims`;
printing whole patterns in :mod:`spattn.printing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union as _U

import numpy as np

from .errors import LoweringError

# --------------------------------------------------------------------------------------------
# Integer argument expressions


class IntExpr:
    """An integer expression in ``n`` (the sequence length)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Const(IntExpr):
    """An integer literal."""
    value: int


@dataclass(frozen=True, slots=True)
class SeqLen(IntExpr):
    """The sequence length ``n``."""


@dataclass(frozen=True, slots=True)
class BinOp(IntExpr):
    """A binary operation ``a op b`` (``depth`` bounds evaluation recursion)."""
    op: str  # one of + - * // %
    a: IntExpr
    b: IntExpr
    depth: int = field(default=1, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Neg(IntExpr):
    """Integer negation ``-a``."""
    a: IntExpr
    depth: int = field(default=1, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Func(IntExpr):
    """A call of ``sqrt``, ``log2``, ``min`` or ``max``."""
    name: str  # sqrt, log2, min, max
    args: tuple[IntExpr, ...]
    depth: int = field(default=1, compare=False, repr=False)


MAX_EXPR_DEPTH = 64  #: deepest argument expression accepted (evaluation recurses)


def expr_depth(e: IntExpr) -> int:
    """Operator depth of an integer expression (0 for literals and ``n``)."""
    return getattr(e, "depth", 0)


FUNCTIONS = {"sqrt": 1, "log2": 1, "min": 2, "max": 2}

_INT_PREC = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}


def int_text(e: IntExpr, prec: int = 0) -> str:
    """Canonical text of an integer expression (minimal parentheses)."""
    if isinstance(e, Const):
        s = str(e.value)
        return f"({s})" if e.value < 0 and prec > 2 else s
    if isinstance(e, SeqLen):
        return "n"
    if isinstance(e, Neg):
        s = "-" + int_text(e.a, 3)
        return f"({s})" if prec > 3 else s
    if isinstance(e, Func):
        return f"{e.name}({', '.join(int_text(a) for a in e.args)})"
    if isinstance(e, BinOp):
        p = _INT_PREC[e.op]
        s = f"{int_text(e.a, p)} {e.op} {int_text(e.b, p + 1)}"
        return f"({s})" if prec > p else s
    raise TypeError(e)


class ArgumentError(LoweringError):
    """An argument expression cannot be evaluated at this n."""
    pass


def evaluate(e: IntExpr, n: int) -> int:
    """Value of ``e`` at sequence length ``n``. Errors (division by zero, square root of a
    negative number) are :class:`LoweringError` naming the expression."""
    if isinstance(e, Const):
        return e.value
    if isinstance(e, SeqLen):
        return n
    if isinstance(e, Neg):
        return -evaluate(e.a, n)
    if isinstance(e, BinOp):
        a, b = evaluate(e.a, n), evaluate(e.b, n)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            if abs(a).bit_length() + abs(b).bit_length() > 4096:
                raise ArgumentError(f"`{int_text(e)}` is too large at n = {n}")
            return a * b
        if b == 0:
            raise ArgumentError(f"division by zero in `{int_text(e)}` at n = {n}")
        return a // b if e.op == "//" else a % b
    if isinstance(e, Func):
        vals = [evaluate(a, n) for a in e.args]
        if e.name == "sqrt":
            if vals[0] < 0:
                raise ArgumentError(f"sqrt of a negative number ({vals[0]}) in `{int_text(e)}` "
                                    f"at n = {n}")
            return math.isqrt(vals[0])
        if e.name == "log2":
            if vals[0] <= 0:
                raise ArgumentError(f"log2 of a non-positive number ({vals[0]}) in "
                                    f"`{int_text(e)}` at n = {n}")
            return vals[0].bit_length() - 1
        if e.name == "min":
            return min(vals)
        if e.name == "max":
            return max(vals)
    raise TypeError(e)


def fold(e: IntExpr) -> IntExpr:
    """Constant-fold the top of an expression whose children are already folded (errors are
    left for evaluation, so that they name the sequence length)."""
    if isinstance(e, (Const, SeqLen)):
        return e
    if all(isinstance(x, Const) for x in _children(e)):
        try:
            return Const(evaluate(e, 0))
        except ArgumentError:
            return e
    return e


def _children(e: IntExpr) -> tuple[IntExpr, ...]:
    if isinstance(e, BinOp):
        return (e.a, e.b)
    if isinstance(e, Neg):
        return (e.a,)
    if isinstance(e, Func):
        return e.args
    return ()


# --------------------------------------------------------------------------------------------
# Index sets


@dataclass(frozen=True, slots=True)
class IndexList:
    """``[a, b, c]``: positions; negative ones count from the end."""

    items: tuple[IntExpr, ...]

    def text(self) -> str:
        """Canonical text of the list."""
        return "[" + ", ".join(int_text(i) for i in self.items) + "]"


@dataclass(frozen=True, slots=True)
class IndexSlice:
    """``[start:stop:step]`` with Python's meaning (clipped)."""

    start: IntExpr | None
    stop: IntExpr | None
    step: IntExpr | None

    def text(self) -> str:
        """Canonical text of the slice."""
        a = "" if self.start is None else int_text(self.start)
        b = "" if self.stop is None else int_text(self.stop)
        s = f"[{a}:{b}"
        if self.step is not None:
            s += ":" + int_text(self.step)
        return s + "]"


IndexSet = _U[IndexList, IndexSlice]  # noqa: UP007 - a runtime alias


class IndexRuns:
    """A resolved index set: sorted unique positions, stored in O(runs) memory. With
    ``step == 1`` (lists, unit-step slices) the positions are the runs ``[starts[k], ends[k])``;
    with ``step > 1`` (a slice ``[a:b:c]``) they are ONE arithmetic progression ``starts[0],
    starts[0] + step, ...`` below ``ends[0]``, never expanded: counts and membership are closed
    form, so ``cols([::2])`` at n = 2**31 costs O(1) memory."""

    __slots__ = ("starts", "ends", "step")

    def __init__(self, starts: np.ndarray, ends: np.ndarray, step: int = 1):
        self.starts = starts
        self.ends = ends
        self.step = int(step)

    @property
    def count(self) -> int:
        """Number of positions."""
        if self.step == 1 or not len(self.starts):
            return int((self.ends - self.starts).sum())
        return int((self.ends[0] - self.starts[0] + self.step - 1) // self.step)

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Whether each position of ``x`` (numpy, int) is in the set."""
        if len(self.starts) == 0:
            return np.zeros(np.shape(x), bool)
        if self.step > 1:
            s, e = int(self.starts[0]), int(self.ends[0])
            return (x >= s) & (x < e) & ((x - s) % self.step == 0)
        k = np.searchsorted(self.ends, x, side="right")
        inside = k < len(self.starts)
        return inside & (self.starts[np.minimum(k, len(self.starts) - 1)] <= x)

    def count_below(self, x: np.ndarray) -> np.ndarray:
        """How many positions are < each of ``x`` (numpy, int64)."""
        x = np.asarray(x, np.int64)
        if len(self.starts) == 0:
            return np.zeros(x.shape, np.int64)
        if self.step > 1:
            s, c = int(self.starts[0]), self.step
            return np.clip((x - s + c - 1) // c, 0, self.count)
        cum = np.concatenate([[0], np.cumsum(self.ends - self.starts)])
        k = np.searchsorted(self.starts, x, side="right")  # runs starting before x
        km = np.maximum(k - 1, 0)
        part = np.clip(x - self.starts[km], 0, self.ends[km] - self.starts[km])
        return np.where(k > 0, cum[km] + part, 0)

    def points(self, limit: int) -> set[int] | None:
        """Every run's start and end (for a progression: every position and position + 1), or
        None when there are more than ``limit`` of them."""
        if self.step == 1:
            if len(self.starts) > limit:
                return None
            return set(self.starts.tolist()) | set(self.ends.tolist())
        if self.count > limit // 2:
            return None
        pos = self.positions().tolist()
        return set(pos) | {p + 1 for p in pos}

    def positions(self) -> np.ndarray:
        """The positions as a sorted int64 array (memory O(count): checked first)."""
        if len(self.starts) == 0:
            return np.zeros(0, np.int64)
        from .guard import check

        check(8.0 * self.count, f"the {self.count:,} positions of an index set")
        if self.step > 1:
            return np.arange(self.starts[0], self.ends[0], self.step, dtype=np.int64)
        return np.concatenate([np.arange(a, b) for a, b in zip(self.starts, self.ends)]) \
            if len(self.starts) < 64 else _expand_runs(self.starts, self.ends)


def _expand_runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lens = ends - starts
    out = np.ones(int(lens.sum()), np.int64)
    offs = np.cumsum(lens) - lens
    out[offs[0]] = starts[0]
    out[offs[1:]] = starts[1:] - ends[:-1] + 1
    return np.cumsum(out, out=out)


def _runs_from_sorted(pos: np.ndarray) -> IndexRuns:
    if len(pos) == 0:
        return IndexRuns(np.zeros(0, np.int64), np.zeros(0, np.int64))
    brk = np.flatnonzero(np.diff(pos) != 1) + 1
    starts = pos[np.concatenate([[0], brk])]
    ends = pos[np.concatenate([brk - 1, [len(pos) - 1]])] + 1
    return IndexRuns(starts.astype(np.int64), ends.astype(np.int64))


def resolve_index_set(s: IndexSet, n: int, where: str) -> IndexRuns:
    """Resolve an index set at sequence length ``n``. A listed position outside −n..n−1 is a
    :class:`LoweringError` naming the position and n; slices clip like Python's."""
    if isinstance(s, IndexSlice):
        start = None if s.start is None else evaluate(s.start, n)
        stop = None if s.stop is None else evaluate(s.stop, n)
        step = None if s.step is None else evaluate(s.step, n)
        if step == 0:
            raise LoweringError(f"{where}: slice step is zero in {s.text()} at n = {n}")
        a, b, c = slice(start, stop, step).indices(n)
        r = range(a, b, c)  # Python's clipping; a range object, never expanded
        if len(r) == 0:
            return IndexRuns(np.zeros(0, np.int64), np.zeros(0, np.int64))
        first, last = min(r[0], r[-1]), max(r[0], r[-1])
        step = 1 if len(r) == 1 else abs(c)
        return IndexRuns(np.array([first], np.int64), np.array([last + 1], np.int64), step)
    vals = []
    for e in s.items:
        v = evaluate(e, n)
        if not -n <= v < n:
            raise LoweringError(
                f"{where}: position {v} (from `{int_text(e)}`) is outside -{n}..{n - 1} at n = {n}")
        vals.append(v + n if v < 0 else v)
    pos = np.unique(np.asarray(vals, dtype=np.int64))
    return _runs_from_sorted(pos)


# --------------------------------------------------------------------------------------------
# Patterns


class Node:
    """A pattern IR node. Nodes are immutable and hashable; equal nodes denote equal patterns
    (the converse holds only after canonicalisation, and not always)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Prim(Node):
    """A primitive with its arguments in declaration order (keywords resolved)."""

    name: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Union(Node):
    """Set union of the items (a pair covered twice is one pair)."""
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Inter(Node):
    """Set intersection of the items."""
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Diff(Node):
    """Pairs of ``a`` that are not in ``b``."""
    a: Node
    b: Node


@dataclass(frozen=True, slots=True)
class Not(Node):
    """Complement: every pair not in ``a``."""
    a: Node


FULL = Prim("full")
NONE = Prim("none")


# --------------------------------------------------------------------------------------------
# Structure


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-patterns of a node."""
    if isinstance(node, (Union, Inter)):
        return node.items
    if isinstance(node, Diff):
        return (node.a, node.b)
    if isinstance(node, Not):
        return (node.a,)
    return ()


def depth(node: Node) -> int:
    """Nesting depth, computed without recursion."""
    best, stack = 0, [(node, 1)]
    while stack:
        x, d = stack.pop()
        best = max(best, d)
        stack.extend((c, d + 1) for c in children(x))
    return best
