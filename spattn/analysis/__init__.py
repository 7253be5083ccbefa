"""Pattern analysis: the figures users need to choose a pattern (SPEC section 2).

In: a canonical pattern node, a sequence length and a block size. Out: :class:`Stats`
(:func:`stats`). Modules, by job: :mod:`.families` (rows as affine interval families),
:mod:`.rows` (pairs, degrees, empty rows, causal, symmetric), :mod:`.blockfig` (tile
figures), :mod:`.kv` (the KV-cache figure), :mod:`.receptive` (receptive field),
:mod:`.sampled` (estimates for patterns too large to lower row by row), :mod:`.density` (tile
densities for pictures), :mod:`.stats` (assembly), :mod:`.docstats` (the same over packed
documents) and :mod:`.result` (the :class:`Stats` record).
"""

from __future__ import annotations

from .docstats import document_stats
from .result import Stats
from .stats import stats

__all__ = ["Stats", "stats", "document_stats"]
