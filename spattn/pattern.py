"""The public :class:`Pattern` object and :func:`compile`.

In: pattern text or IR. Out: an immutable, hashable :class:`Pattern` holding the canonical IR,
with the algebra (``| & - ~``) and the facade of every pass: lowering (``to_csr``,
``to_dense``, ``nnz``), analysis (``stats``), block layouts (``to_blocks``) and FlexAttention
(``mask_mod``). The passes take IR nodes, never text or Patterns, and never import this module:
``Pattern`` unwraps itself here. They are imported lazily, so ``import spattn`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import ir
from .cache import LRUCache
from .canon import canonicalize
from .checks import check_n
from .documents import Documents
from .errors import SpattnError
from .parse import parse_program
from .printing import text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import scipy.sparse


MAX_DEPTH = 250  #: deepest operator nesting a pattern may have (lowering recurses on it)


class Pattern:
    """A sparse attention pattern: a length-generic set of (query i, key j) pairs.

    Build one with :func:`spattn.compile` or the operators ``|`` (union), ``&``
    (intersection), ``-`` (difference) and ``~`` (complement), which accept patterns or pattern
    text. Equal patterns (same canonical IR) compare and hash equal, and
    ``spattn.compile(str(p)) == p``.
    """

    __slots__ = ("node", "_text", "_hash", "_depth", "__weakref__")

    def __init__(self, node: ir.Node):
        if not isinstance(node, ir.Node):
            raise SpattnError(f"Pattern() takes an IR node, got {type(node).__name__}; "
                              "use spattn.compile(text)")
        node = canonicalize(node)
        self._init(node, ir.depth(node))

    def _init(self, node: ir.Node, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SpattnError(f"pattern nests {depth} operators deep; the limit is "
                              f"{MAX_DEPTH}")
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "_text", None)
        object.__setattr__(self, "_hash", None)
        object.__setattr__(self, "_depth", depth)

    @classmethod
    def _combine(cls, node: ir.Node, *parts: Pattern) -> Pattern:
        """A pattern from an operator node over canonical parts: only the top is
        canonicalised and the depth is bounded in O(1), so building a pattern with k
        operators costs O(k), not O(k²)."""
        node = canonicalize(node, shallow=True)
        known = {}  # upper bounds of depths we already know, by node identity
        for part in parts:
            known[id(part.node)] = part._depth
            for c in ir.children(part.node):
                known[id(c)] = part._depth - 1
        if id(node) in known:
            depth = known[id(node)]
        else:
            kids = ir.children(node)
            depth = 1 + max((known.get(id(c)) or ir.depth(c) for c in kids), default=0)
        p = cls.__new__(cls)
        p._init(node, depth)
        return p

    def __setattr__(self, k, v):
        raise AttributeError("Pattern is immutable")

    # -- identity
    def __str__(self) -> str:
        if self._text is None:
            object.__setattr__(self, "_text", text(self.node))
        return self._text

    def __repr__(self) -> str:
        return f"Pattern({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and self.node == other.node

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self.node))
        return self._hash

    def __reduce__(self):
        return (compile, (str(self),))

    # -- algebra
    def __or__(self, other: Any) -> Pattern:
        o = as_pattern(other)
        return Pattern._combine(ir.Union((self.node, o.node)), self, o)

    def __and__(self, other: Any) -> Pattern:
        o = as_pattern(other)
        return Pattern._combine(ir.Inter((self.node, o.node)), self, o)

    def __sub__(self, other: Any) -> Pattern:
        o = as_pattern(other)
        return Pattern._combine(ir.Diff(self.node, o.node), self, o)

    def __ror__(self, other: Any) -> Pattern:
        return as_pattern(other) | self

    def __rand__(self, other: Any) -> Pattern:
        return as_pattern(other) & self

    def __rsub__(self, other: Any) -> Pattern:
        return as_pattern(other) - self

    def __invert__(self) -> Pattern:
        return Pattern._combine(ir.Not(self.node), self)

    # -- lowering
    def to_csr(self, n: int | Documents) -> scipy.sparse.csr_array:
        """The exact (n, n) boolean matrix as a ``scipy.sparse.csr_array`` with sorted, unique
        column indices per row (int32 where they fit). Time and memory are proportional to
        the number of pairs; requests over the memory budget raise :class:`ResourceError`.
        ``n`` may be a :class:`spattn.Documents` (every method taking ``n`` accepts one): the
        packed (N, N) matrix, the pattern inside each document at its own length."""
        if isinstance(n, Documents):
            from .packed import to_csr as packed_csr

            return packed_csr(self.node, n)
        from .lower import to_csr

        return to_csr(self.node, n)

    def to_dense(self, n: int | Documents) -> np.ndarray:
        """The (n, n) boolean numpy mask. Refuses n > :data:`spattn.lower.MAX_DENSE_N`."""
        if isinstance(n, Documents):
            from .packed import to_dense as packed_dense

            return packed_dense(self.node, n)
        from .lower import to_dense

        return to_dense(self.node, n)

    def nnz(self, n: int | Documents) -> int:
        """The exact number of (query, key) pairs at sequence length ``n``."""
        if isinstance(n, Documents):
            from .packed import nnz as packed_nnz

            return packed_nnz(self.node, n)
        from .lower import nnz

        return nnz(self.node, n)

    def row_range_csr(self, n: int, start: int, stop: int):
        """CSR of query rows ``start:stop`` only (for m < n queries): ``(indptr, indices)``."""
        from .lower import csr_rows

        return csr_rows(self.node, n, start, stop)

    # -- analysis, block layouts, FlexAttention
    def stats(self, n: int | Documents, block_size: int = 128):
        """Figures that help choose a pattern at sequence length ``n``: see :class:`Stats`."""
        if isinstance(n, Documents):
            from .analysis import document_stats

            return document_stats(self.node, n, block_size=block_size)
        from .analysis import stats

        return stats(self.node, n, block_size=block_size)

    def to_blocks(self, n: int | Documents, block_size: int = 128,
                  key_block_size: int | None = None, *, m: int | None = None):
        """The block layout for the GPU backend: see :class:`spattn.BlockLayout`."""
        if isinstance(n, Documents):
            from .blocks import packed_blocks

            if m is not None and m != n.total:
                raise SpattnError(f"to_blocks over documents takes every query (m = N = "
                                  f"{n.total:,}), got m = {m!r}")
            return packed_blocks(self.node, n, block_size=block_size,
                                 key_block_size=key_block_size)
        from .blocks import to_blocks

        return to_blocks(self.node, n, block_size=block_size, key_block_size=key_block_size,
                         m=m)

    def mask_mod(self, n: int | Documents):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` that evaluates this pattern at
        sequence length ``n`` (torch-traceable; index sets and random keys are captured
        tensors)."""
        if isinstance(n, Documents):
            from .blocks import packed_mask_mod

            return packed_mask_mod(self.node, n)
        from .blocks import mask_mod

        return mask_mod(self.node, check_n(n))


#: parsed and canonicalised patterns, by their text
COMPILED: LRUCache[str, Pattern] = LRUCache("patterns", max_entries=4096)


def compile(pattern: str | Pattern) -> Pattern:  # noqa: A001 - public name from the SPEC
    """Parse pattern text (a program: bindings, presets, final expression) into a
    :class:`Pattern`. Parsing and canonicalisation are cached on the text."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise SpattnError(f"a pattern must be text or a spattn.Pattern, got "
                          f"{type(pattern).__name__}: {pattern!r:.80}")
    return COMPILED.get_or_create(pattern, lambda: Pattern(parse_program(pattern)))


def as_pattern(p: Any) -> Pattern:
    """Coerce text or a Pattern to a Pattern (used by the operators)."""
    return compile(p)
