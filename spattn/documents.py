"""Packed sequences: :class:`Documents`, several documents sharing one sequence.

In: document lengths (positive integers). Out: an immutable, hashable :class:`Documents` —
``len(docs)`` documents, ``docs.total`` = N tokens, document ``d`` at positions
``starts[d] .. starts[d] + lengths[d] - 1`` — and its *length classes*: the distinct lengths,
each with the documents of that length. A pattern over documents is the pattern inside each
document at that document's own length (positions counted from its first token), and no pair
crosses two documents, so the packed mask is block diagonal. Every pass over documents works
per length class, never per document: the lengths of N tokens take at most ``sqrt(2 N)``
distinct values (``1 + 2 + ... + k <= N``), whatever the number of documents.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from .errors import SpattnError

__all__ = ["Documents", "documents", "as_documents", "is_documents"]

MAX_TOTAL = 2**31 - 1  #: the most tokens a packed sequence may hold (int32 positions)


class Documents:
    """Document lengths of a packed sequence (see the module docstring)."""

    __slots__ = ("lengths", "total", "_hash", "__dict__")

    def __init__(self, lengths: tuple[int, ...]):
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "total", sum(lengths))  # N, the packed sequence length
        object.__setattr__(self, "_hash", hash(("spattn.Documents", lengths)))

    def __setattr__(self, k, v):
        raise AttributeError(f"Documents is immutable (cannot set {k!r})")

    def __delattr__(self, k):
        raise AttributeError(f"Documents is immutable (cannot delete {k!r})")

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(self.lengths)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Documents) and other.lengths == self.lengths

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (Documents, (self.lengths,))

    def __repr__(self) -> str:
        k = len(self.lengths)
        if k <= 8:
            body = ", ".join(map(str, self.lengths))
        else:
            body = ", ".join(map(str, self.lengths[:4])) + f", ... ({k:,} documents)"
        return f"spattn.documents([{body}])"

    @cached_property
    def array(self) -> np.ndarray:
        """The lengths as an int64 array (read-only)."""
        return _frozen(np.asarray(self.lengths, np.int64))

    @cached_property
    def starts(self) -> np.ndarray:
        """First position of each document (int64, read-only)."""
        a = self.array
        return _frozen(np.cumsum(a) - a)

    @cached_property
    def doc_of(self) -> np.ndarray:
        """The document of every packed position (int32, length N, read-only)."""
        return _frozen(np.repeat(np.arange(len(self), dtype=np.int32), self.array))

    @cached_property
    def classes(self) -> list[tuple[int, np.ndarray]]:
        """``(length, documents)`` per distinct length, ascending: the indices (in sequence
        order) of the documents of that length."""
        a = self.array
        order = np.argsort(a, kind="stable")
        vals, first = np.unique(a[order], return_index=True)
        bounds = list(first) + [len(a)]
        return [(int(v), _frozen(order[bounds[k]:bounds[k + 1]])) for k, v in enumerate(vals)]

    def document(self, d: int) -> tuple[int, int]:
        """``(start, length)`` of document ``d``."""
        return int(self.starts[d]), int(self.lengths[d])

    def first_of_length(self, length: int) -> int:
        """The index of the first document of the given length."""
        return int(np.flatnonzero(self.array == length)[0])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def documents(lengths: Any) -> Documents:
    """The document layout of a packed sequence: ``spattn.documents([512, 300, 1208])``.
    Accepts a sequence of positive integers (a list, tuple, numpy array or 1-D integer
    tensor) or a :class:`Documents`."""
    if isinstance(lengths, Documents):
        return lengths
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):  # a torch tensor
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dim() != 1:
            raise SpattnError(f"document lengths must be a 1-D integer tensor, got dtype "
                              f"{lengths.dtype} and shape {tuple(lengths.shape)}")
        lengths = lengths.detach().cpu().tolist()
    elif isinstance(lengths, np.ndarray):
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
            raise SpattnError(f"document lengths must be a 1-D integer array, got dtype "
                              f"{lengths.dtype} and shape {lengths.shape}")
        lengths = lengths.tolist()
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise SpattnError(f"document lengths must be a sequence of positive integers, got "
                          f"{type(lengths).__name__}: {lengths!r:.80}")
    out = []
    for d, x in enumerate(lengths):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise SpattnError(f"document lengths must be positive integers; document {d} "
                              f"has length {x!r:.40} ({type(x).__name__})")
        if x < 1:
            raise SpattnError(f"document lengths must be positive integers; document {d} "
                              f"has length {int(x)}")
        out.append(int(x))
    if not out:
        raise SpattnError("documents([]) holds no document: give at least one length")
    total = sum(out)
    if total > MAX_TOTAL:
        raise SpattnError(f"the documents hold {total:,} tokens in all; the limit is "
                          f"{MAX_TOTAL:,}")
    return Documents(tuple(out))


def is_documents(x: Any) -> bool:
    return isinstance(x, Documents)


def as_documents(x: Any, n: int | None = None) -> Documents:
    """``x`` (lengths or a :class:`Documents`) as Documents, checked against a sequence
    length ``n`` when given."""
    docs = documents(x)
    if n is not None and docs.total != n:
        raise SpattnError(f"the documents hold {docs.total:,} tokens "
                          f"({len(docs):,} documents: {docs!r}) but the sequence has "
                          f"{n:,} positions")
    return docs
