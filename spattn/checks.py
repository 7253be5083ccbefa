"""Validation of the plain numbers users pass: sequence lengths, block sizes, query counts,
head counts.

In: a value from the caller. Out: the value as a Python ``int``, or a
:class:`~spattn.errors.SpattnError` subclass whose message names the argument and shows the
value. Every public entry point validates through these, so the messages read alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import LoweringError, ResourceError, SpattnError

MAX_N = 2**31 - 1  #: largest sequence length that can be lowered


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def positive_int(v: Any, what: str) -> int:
    """``v`` as an int >= 1; otherwise :class:`SpattnError` naming ``what``."""
    if not _is_int(v) or v < 1:
        raise SpattnError(f"{what} must be a positive integer, got {v!r:.60}")
    return int(v)


def check_n(n: Any) -> int:
    """A sequence length: an int with 1 <= n <= :data:`MAX_N`."""
    if not _is_int(n):
        raise LoweringError(f"sequence length n must be an integer, got {type(n).__name__} "
                            f"{n!r:.40}")
    n = int(n)
    if n < 1:
        raise LoweringError(f"sequence length n must be >= 1, got {n}")
    if n > MAX_N:
        raise ResourceError(f"sequence length n = {n:,} is over the largest supported "
                            f"({MAX_N:,})")
    return n


def query_count(m: Any, n: int) -> int:
    """The number of queries ``m`` (default n): an int with 1 <= m <= n."""
    m = n if m is None else m
    if not _is_int(m):
        raise SpattnError(f"m (number of queries) must be an integer, got {m!r:.60}")
    m = int(m)
    if not 1 <= m <= n:
        raise SpattnError(f"m = {m} queries must be between 1 and n = {n}")
    return m
