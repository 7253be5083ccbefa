"""``spattn.hf.PatternCache``: a transformers ``Cache`` whose layers are spattn KV caches.

In: a model switched to spattn with :func:`spattn.hf.use`. Out: a ``Cache`` to pass as
``past_key_values`` (``model.generate(..., past_key_values=PatternCache(model))``) whose
layer i stores only the keys that layer i's pattern can still attend (a
:class:`spattn.KVCache` of the layer's effective pattern), so memory stays bounded for
``streaming`` and window patterns however long generation runs.

How: a model's attention layer calls ``cache.update(k, v, layer)`` and then its attention
function with the result. :class:`PatternLayer` cannot attend in ``update`` (it has no query),
so it returns the new keys unchanged and marks them pending; spattn's attention function
(:mod:`spattn.hf`) finds the layer with :func:`pending` and calls :meth:`PatternLayer.attend`,
which appends the keys to the layer's KV caches and returns the outputs. Batch rows are grouped
by their run of real tokens (a left-padded batch has one group per padding length): each group
has its own KV cache, whose positions count from the group's first real token.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .errors import SpattnError
from .hf_mask import assemble, batch_index
from .kvcache import KVCache

#: id of a pending key tensor -> the layer that holds it (the layer keeps the tensor alive,
#: so the id cannot be reused while the entry exists)
_PENDING: dict[int, PatternLayer] = {}


def pending(key) -> PatternLayer | None:
    """The :class:`PatternLayer` whose ``update`` returned ``key``, if any."""
    layer = _PENDING.get(id(key))
    return layer if layer is not None and layer.pending is key else None


class _Group:
    """Batch rows that share one run start, and their KV cache."""

    def __init__(self, rows: list[int], first: int, patterns: tuple):
        self.rows = rows
        self.first = first
        self.cache = KVCache(list(patterns))


class PatternLayer(CacheLayerMixin):
    """One layer of a :class:`PatternCache`: KV caches of the layer's effective pattern."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self.length = 0  # positions seen, padding included
        self.pending: Any = None
        self.groups: list[_Group] | None = None
        self.patterns: tuple | None = None
        self.batch = 0

    def __repr__(self) -> str:
        held = [g.cache.held for g in self.groups or []]
        return f"PatternLayer({self.index}, length={self.length}, held={held})"

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.pending is not None:
            raise SpattnError(
                f"PatternCache layer {self.index} got new keys before its previous keys were "
                f"attended: PatternCache works only with spattn's attention (call "
                f"spattn.hf.use(model, patterns) and keep the model on it)")
        self.pending = key_states
        _PENDING[id(key_states)] = self
        self.length += key_states.shape[-2]
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    @property
    def held(self) -> int:
        """Keys held, summed over the batch-row groups."""
        return sum(g.cache.held for g in self.groups or [])

    @property
    def nbytes(self) -> int:
        """Bytes of key and value storage allocated."""
        return sum(g.cache.nbytes for g in self.groups or [])

    def attend(self, q, k, v, patterns: tuple, mask, scale: float):
        """The attention rows of this call's queries (B, H, t, D) over the layer's held keys
        plus ``k, v`` (the pending keys), which are appended."""
        _PENDING.pop(id(k), None)
        self.pending = None
        t = q.shape[2]
        if mask.q_offset + t != self.length:
            raise SpattnError(f"PatternCache layer {self.index} holds {self.length - t} "
                              f"positions but the model placed {t} queries at position "
                              f"{mask.q_offset}; was this cache used with another input?")
        runs = mask.row_runs()
        if self.groups is None:
            self._start(mask, patterns)
        elif patterns != self.patterns:
            raise SpattnError(f"PatternCache layer {self.index} was filled with pattern "
                              f"{self.patterns[0]!s} but is now asked for "
                              f"{patterns[0]!s}: start a new PatternCache after spattn.hf.use")
        parts = []
        for g in self.groups:
            a, e = runs[g.rows[0]]
            if any(runs[r] != (a, e) for r in g.rows) or (g.cache.length and a != g.first):
                raise SpattnError(f"PatternCache layer {self.index}: the padding of batch rows "
                                  f"{g.rows} changed between calls; padding must stay on the "
                                  f"left of each row")
            q0 = max(mask.q_offset, a)
            if q0 >= e:
                continue
            if q0 - a != g.cache.length:
                raise SpattnError(f"PatternCache layer {self.index}: batch rows {g.rows} hold "
                                  f"{g.cache.length} real tokens but the next real token is "
                                  f"number {q0 - a} (padding between real tokens)")
            sel = batch_index(g.rows, q.device)
            s0, s1 = q0 - mask.q_offset, e - mask.q_offset
            parts.append((sel, s0, s1, g.cache.attend(
                q[sel][:, :, s0:s1], k[sel][:, :, s0:s1], v[sel][:, :, s0:s1], scale=scale)))
        return assemble(parts, q, v)

    def _start(self, mask, patterns: tuple) -> None:
        self.patterns = patterns
        self.batch = mask.batch
        self.groups = [_Group(rows, r[0], patterns) for r, rows in mask.groups().items()]

    # -- what generate() may ask of a cache

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise SpattnError("PatternCache cannot be cropped: it has already dropped keys it "
                          "no longer needs (assisted decoding and other rollbacks need "
                          "DynamicCache)")

    def reorder_cache(self, beam_idx) -> None:
        self.select(beam_idx)

    def batch_select_indices(self, indices) -> None:
        self.select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.select(torch.arange(self.batch).repeat_interleave(repeats))

    def select(self, index) -> None:
        """Row i of the batch becomes old row ``index[i]`` (beam search, batch expansion)."""
        if self.groups is None:
            return
        index = [int(x) for x in torch.as_tensor(index).reshape(-1).tolist()]
        if any(not 0 <= x < self.batch for x in index):
            raise SpattnError(f"PatternCache layer {self.index}: batch index {index} out of "
                              f"range for batch {self.batch}")
        where = {r: (gi, j) for gi, g in enumerate(self.groups) for j, r in enumerate(g.rows)}
        groups = []
        for gi, g in enumerate(self.groups):
            new = [i for i, x in enumerate(index) if where[x][0] == gi]
            if new:
                g.cache.select_batch([where[index[i]][1] for i in new])
                g.rows = new
                groups.append(g)
        self.groups, self.batch = groups, len(index)

    def reset(self) -> None:
        self.length, self.groups, self.patterns, self.pending, self.batch = 0, None, None, None, 0


def text_config(model):
    """The config that describes a model's decoder layers (the text part of a multimodal
    model)."""
    c = model.config
    return c.get_text_config() if hasattr(c, "get_text_config") else c


def num_layers(config) -> int:
    """``config.num_hidden_layers``, checked."""
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SpattnError(f"cannot tell the model's layer count (config.num_hidden_layers = "
                          f"{n!r})")
    return n


class PatternCache(Cache):
    """A transformers ``Cache`` for a model switched to spattn (SPEC section 6): layer i
    holds only the keys that layer i's pattern can still attend. Pass it as
    ``past_key_values`` to the model or to ``generate``."""

    def __init__(self, model):
        impl = getattr(model.config, "_attn_implementation", None)
        if impl != "spattn":
            raise SpattnError(f"PatternCache needs a model on spattn's attention (it runs "
                              f"{impl!r}); call spattn.hf.use(model, patterns) first")
        super().__init__(layers=[PatternLayer(i) for i in range(num_layers(text_config(model)))])

    @property
    def held(self) -> list[int]:
        """Keys held per layer (summed over batch-row groups)."""
        return [layer.held for layer in self.layers]

    @property
    def nbytes(self) -> int:
        """Bytes of key and value storage allocated over all layers."""
        return sum(layer.nbytes for layer in self.layers)
