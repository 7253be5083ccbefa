"""``spattn.KVCache``: a decoding cache that holds only the keys its pattern can still use.

In: a causal pattern (text, :class:`~spattn.Pattern`, or a list with one per head), then
``attend(q, k, v)`` calls with the next t positions (B, H, t, D). Out: the attention rows of
those positions over every key seen so far, exactly as :func:`spattn.attention` over the whole
sequence gives them (the pattern evaluated at n = length).

How: each key's *last query* — the last position that can attend it at any later length — comes
in closed form from the pattern (:mod:`spattn.evict`); a key is stored only while that position
is still ahead. Keys and values live in fixed arenas of slots (B, H, slots, D); an evicted key's
slot goes back to a first-in-first-out free list and the next key reuses it (for a window this
is a ring buffer), and new arenas are added (the total doubling) only when no slot is free, so
an append copies only the new keys and existing storage is never reallocated. New keys go to
the newest arena first, so older ones drain and are released once empty. Each step maps
the rows' intervals from positions to the held keys (one ``searchsorted``) and runs
:mod:`spattn.backends.cpu_decode` over the arenas plus the call's own keys: work is
proportional to the keys the rows attend. Patterns whose rows change with n (``n`` in an
argument, negative indices, ``random``) keep every key (``evicts`` is False).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import evict, guard
from .api import check_scale as _check_scale
from .api import resolve_patterns, validate
from .errors import ShapeError, SpattnError

_ROWS = 16  #: query rows per engine call (the engine's MAX_M)
_ARENA_MIN = 128  #: slots of the first arena (one page)
_AHEAD = 4096  #: positions whose last queries are computed at once


class NotCausalError(SpattnError):
    """The pattern has a pair j > i: a cache cannot serve it."""


def _not_causal(p, detail: str) -> NotCausalError:
    return NotCausalError(f"KVCache needs a causal pattern, and `{p}` {detail}; decoding "
                          f"cannot see future keys: use `({p}) & causal`")


def _check_causal(p) -> None:
    from .analysis.rows import structurally_causal

    if structurally_causal(p.node):
        return
    n = 1024
    bad = (p - "causal").nnz(n)
    if bad:
        raise _not_causal(p, f"has {bad:,} pairs with key j > query i at n = {n}")


class KVCache:
    """A pattern-driven KV cache for autoregressive decoding (SPEC section 5).

    ``cache.attend(q, k, v)`` appends the next t positions' keys and values and returns their
    attention rows (B, H, t, D); ``cache.append(k, v)`` only appends. ``length`` is the
    number of positions seen, ``positions`` the ascending positions of the keys still held,
    ``held`` their count, ``evicts`` whether keys are ever dropped, ``capacity`` the slots
    allocated and ``nbytes`` their bytes (keys and values).
    """

    def __init__(self, pattern: Any):
        from .pattern import Pattern, compile

        if isinstance(pattern, (str, Pattern)):
            self._spec: Any = compile(pattern)
            distinct = [self._spec]
        else:
            self._spec = [compile(x) for x in pattern]
            distinct = list(dict.fromkeys(self._spec))
            if not distinct:
                raise SpattnError("KVCache got an empty list of patterns")
        for p in distinct:
            _check_causal(p)
        rules = [evict.eviction(p.node) for p in distinct]
        self._rules = None if any(r is None for r in rules) else rules
        self._groups: list | None = None
        self._patterns: tuple | None = None
        self.length = 0
        self._pos = np.zeros(0, np.int64)  # held positions, ascending
        self._slot = np.zeros(0, np.int64)  # their global slots
        self._last = np.zeros(0, np.int64)  # their last queries
        self._free = np.zeros(0, np.int64)  # free global slots, first in first out
        self._arenas: list[tuple[Any, Any]] = []
        self._offsets: list[int] = []
        self._meta: tuple | None = None
        self._ahead: tuple[int, np.ndarray] = (0, np.zeros(0, np.int64))

    # -- public state

    @property
    def evicts(self) -> bool:
        """Whether keys are dropped (False: the pattern's rows change with n, all are kept)."""
        return self._rules is not None

    @property
    def held(self) -> int:
        """How many keys are held."""
        return len(self._pos)

    @property
    def positions(self) -> np.ndarray:
        """The ascending positions of the keys still held."""
        out = self._pos.copy()
        out.flags.writeable = False
        return out

    @property
    def capacity(self) -> int:
        """Slots allocated (held keys plus free slots)."""
        return sum(a[0].shape[2] for a in self._arenas)

    @property
    def nbytes(self) -> int:
        """Bytes of key and value storage allocated."""
        return sum(2 * a[0].numel() * a[0].element_size() for a in self._arenas)

    def __repr__(self) -> str:
        return (f"KVCache({self._spec!s}, length={self.length}, held={self.held}, "
                f"evicts={self.evicts})")

    # -- the step

    def attend(self, q, k, v, *, scale: float | None = None):
        """Append the next t positions (q, k, v of shape (B, H, t, D)) and return their
        attention rows (B, H, t, D) over every key seen so far."""
        import torch

        self._check_inputs(q, k, v)
        B, H, t, D = q.shape
        scale = _check_scale(scale, D)
        if self._patterns is None or len(self._patterns) != H:
            self._resolve(H)
        L, n = self.length, self.length + t
        last = self._last_of(L, n)
        grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        # every new key is kept (a window step): store first, then read storage only
        prefill = L == 0 and t > _ROWS  # a first prefill: plain attention over its own keys
        stored = not prefill and not grad and bool((last >= n).all())
        with torch.no_grad():
            if stored:
                self._store(k, v, L, n, last)
        if prefill:
            from .api import attention

            out = attention(q, k, v, list(self._patterns), scale=scale)
        else:
            out = self._one_row(q, scale, n) if stored and t == 1 else None
            if out is None:
                out = self._attend(q, k, v, scale, stored, grad)
        with torch.no_grad():
            self._evict(n)
            if not stored:
                self._store(k, v, L, n, last)
        self.length = n
        return out

    def append(self, k, v) -> None:
        """Append the next t positions' keys and values (B, H, t, D) without computing any
        output (when their queries were run elsewhere, or to restore a cache)."""
        import torch

        self._check_inputs(k, k, v)
        if self._patterns is None:  # query heads unknown here: per-head lists give them
            self._resolve(len(self._spec) if isinstance(self._spec, list) else k.shape[1])
        L, n = self.length, self.length + k.shape[2]
        with torch.no_grad():
            self._evict(n)
            self._store(k, v, L, n, self._last_of(L, n))
        self.length = n

    def _resolve(self, H: int) -> None:
        """The per-head patterns for H query heads, and their head groups."""
        from spattn.backends import cpu_decode

        self._patterns = resolve_patterns(self._spec, H)
        self._groups = cpu_decode.head_groups(self._patterns)

    def select_batch(self, index) -> None:
        """Keep batch rows ``index`` (a sequence of row numbers, repeats allowed): row i
        becomes old row ``index[i]`` (beam search reorders and expands a batch this way)."""
        import torch

        if self._meta is None:
            return
        B = self._meta[0]
        idx = [int(i) for i in index]
        if not idx or any(not 0 <= i < B for i in idx):
            raise SpattnError(f"KVCache.select_batch: rows {idx} for a batch of {B}")
        if self._arenas:
            t = torch.tensor(idx, device=self._arenas[0][0].device)
            self._arenas = [(K.index_select(0, t), V.index_select(0, t))
                            for K, V in self._arenas]
        self._meta = (len(idx), *self._meta[1:])

    def _check_inputs(self, q, k, v) -> None:
        validate(q, k, v)
        if q.shape[2] != k.shape[2]:
            raise ShapeError(f"KVCache.attend takes the same t positions for q, k and v; got "
                             f"q with {q.shape[2]} and k with {k.shape[2]}")
        meta = (k.shape[0], k.shape[1], k.shape[3], k.dtype, k.device)
        if self._meta is None:
            self._meta = meta
        elif meta != self._meta:
            B, H, D, dt, dev = self._meta
            raise ShapeError(f"this KVCache holds B={B}, H={H}, D={D}, {dt} on {dev}; got "
                             f"B={meta[0]}, H={meta[1]}, D={meta[2]}, {meta[3]} on "
                             f"{meta[4]}")

    def _virtual(self, x: np.ndarray, L: int) -> np.ndarray:
        """Positions (≤ L: held keys, ≥ L: this call's keys) as virtual key indices."""
        held = np.searchsorted(self._pos, np.minimum(x, L))
        return np.where(x <= L, held, len(self._pos) + x - L)

    def _layout(self, t: int):
        from spattn.backends import cpu_decode

        s = self._slot
        if len(s) == 0:
            return cpu_decode.contiguous(t, len(self._arenas))
        off = np.asarray(self._offsets, np.int64)
        arena = self._arena_of(s)
        brk = np.flatnonzero((np.diff(s) != 1) | (np.diff(arena) != 0)) + 1
        start = np.concatenate([[0], brk, [len(s)]])
        src = np.append(arena[start[:-1]], len(self._arenas))
        slot = np.append(s[start[:-1]] - off[arena[start[:-1]]], 0)
        return cpu_decode.Layout(start, src, slot, len(s) + t)

    def _one_row(self, q, scale: float, n: int):
        """A one-token step whose keys are all in storage, one pattern for every head, a
        few keys (up to 8x the engine's gather limit): gather them from their arenas and run
        one fused kernel (a decode step's common case, without the piece planning of the
        general path). None: take the general path."""
        import torch

        from spattn.backends import cpu_decode

        if len(self._groups) != 1 or q.device.type != "cpu" or not self._arenas:
            return None
        row, lo, hi = cpu_decode.pattern_rows(self._groups[0][0], n, n - 1, n)
        a, b = np.searchsorted(self._pos, lo), np.searchsorted(self._pos, hi)
        count = int((b - a).sum())
        if count == 0 or count > 8 * cpu_decode.gather_limit(self._arenas[0][0]):
            return None
        if not np.array_equal(b - a, hi - lo):  # pragma: no cover - a bug
            raise AssertionError("KVCache: an attended key was evicted")
        size = b - a  # held keys a[i] .. b[i] - 1 of each interval, as one index array
        u = np.repeat(a - (np.cumsum(size) - size), size) + np.arange(count)
        slots = self._slot[u]
        arena = self._arena_of(slots)
        idx = [(x, torch.from_numpy(slots[arena == x] - self._offsets[x]))
               for x in np.unique(arena).tolist()]  # key order is immaterial
        with cpu_decode.serial(2 * q.numel() * count):
            kg = cpu_decode.gather([K for K, _ in self._arenas], idx)
            vg = cpu_decode.gather([V for _, V in self._arenas], idx)
            return torch.nn.functional.scaled_dot_product_attention(
                q, kg, vg, scale=scale, enable_gqa=kg.shape[1] != q.shape[1]).to(q.dtype)

    def _attend(self, q, k, v, scale: float, stored: bool, grad: bool):
        """The rows of this call's t positions; with ``stored``, its keys are already in
        storage (virtual keys are then the held keys only)."""
        from spattn.backends import cpu_decode

        t = q.shape[2]
        L, n = self.length, self.length + t
        lay = self._layout(0 if stored else t)
        hl = n if stored else L  # positions below hl are held keys
        # the arenas are rewritten by this call's append: a graph must keep its own copy
        ks = [a[0].clone() if grad else a[0] for a in self._arenas] + [k]
        vs = [a[1].clone() if grad else a[1] for a in self._arenas] + [v]

        def check(p, row, lo, hi):
            if len(lo) and (hi > row + 1).any():
                bad = int(np.flatnonzero(hi > row + 1)[0])
                raise _not_causal(p, f"lets query {int(row[bad])} attend key "
                                  f"{int(hi[bad]) - 1} at n = {n}")

        def virtual(lo, hi):
            vlo, vhi = self._virtual(lo, hl), self._virtual(hi, hl)
            if not np.array_equal(vhi - vlo, hi - lo):  # pragma: no cover - a bug
                raise AssertionError("KVCache: an attended key was evicted")
            return vlo, vhi

        return cpu_decode.attend_rows(q, ks, vs, self._groups, n, lay, virtual, scale, check)

    # -- storage

    def _last_of(self, L: int, n: int) -> np.ndarray:
        """The last queries of keys L..n-1 (computed ahead in blocks: one-token steps would
        otherwise pay the closed form's fixed cost every step)."""
        if self._rules is None:
            return np.full(n - L, evict.INF, np.int64)
        a, buf = self._ahead
        if not (a <= L and n <= a + len(buf)):
            j = np.arange(L, max(n, L + _AHEAD), dtype=np.int64)
            buf = self._rules[0].last(j)
            for r in self._rules[1:]:
                buf = np.maximum(buf, r.last(j))
            self._ahead = (L, buf)
            a = L
        return buf[L - a:n - a]

    def _evict(self, n: int) -> None:
        """Drop the held keys that no query from n on can attend."""
        if len(self._pos):
            alive = self._last >= n
            if not alive.all():
                self._free = np.concatenate([self._free, self._slot[~alive]])
                self._pos, self._slot = self._pos[alive], self._slot[alive]
                self._last = self._last[alive]
                self._release()

    def _store(self, k, v, L: int, n: int, last: np.ndarray) -> None:
        """Store the keys of positions L..n-1 that a query from n on can attend."""
        j = np.arange(L, n, dtype=np.int64)
        keep = last >= n
        new = int(keep.sum())
        if new == 0:
            return
        if new > len(self._free):
            self._grow(new - len(self._free), k)
        slots = self._take(new)
        sel = np.flatnonzero(keep)
        self._write(slots, sel, k, v)
        self._pos = np.concatenate([self._pos, j[sel]])
        self._slot = np.concatenate([self._slot, slots])
        self._last = np.concatenate([self._last, last[sel]])

    def _arena_of(self, slots: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self._offsets, np.int64), slots, "right") - 1

    def _take(self, count: int) -> np.ndarray:
        """``count`` free slots, newest arena first (first in first out within one), so that
        older, smaller arenas drain and can be released."""
        if len(self._arenas) == 1:
            slots, self._free = self._free[:count], self._free[count:]
            return slots
        order = np.argsort(-self._arena_of(self._free), kind="stable")[:count]
        slots = self._free[order]
        rest = np.ones(len(self._free), bool)
        rest[order] = False
        self._free = self._free[rest]
        return slots

    def _release(self) -> None:
        """Drop arenas (all but the newest) that hold no key any more."""
        if len(self._arenas) < 2:
            return
        used = np.bincount(self._arena_of(self._slot), minlength=len(self._arenas))
        empty = [a for a in range(len(self._arenas) - 1) if used[a] == 0]
        if not empty:
            return
        gone = np.isin(self._arena_of(self._free), empty)
        self._free = self._free[~gone]
        for a in reversed(empty):
            del self._arenas[a], self._offsets[a]

    def _grow(self, need: int, k) -> None:
        import torch

        cap = max(need, self.capacity, _ARENA_MIN)
        cap = -(-cap // _ARENA_MIN) * _ARENA_MIN
        B, H, _, D = k.shape
        guard.check(2 * B * H * cap * D * k.element_size() + self.nbytes,
                    f"KVCache storage of {self.capacity + cap:,} slots (B={B}, H={H}, D={D}, "
                    f"{k.dtype})", "use a pattern that evicts, or shorter sequences")
        base = self._offsets[-1] + self._arenas[-1][0].shape[2] if self._arenas else 0
        self._arenas.append((torch.empty(B, H, cap, D, dtype=k.dtype, device=k.device),
                             torch.empty(B, H, cap, D, dtype=k.dtype, device=k.device)))
        self._offsets.append(base)
        self._free = np.concatenate([self._free, np.arange(base, base + cap, dtype=np.int64)])

    def _write(self, slots: np.ndarray, sel: np.ndarray, k, v) -> None:
        import torch

        off = np.asarray(self._offsets, np.int64)
        if len(slots) == 1:  # one key (a decode step): plain slice copies
            a = int(self._arena_of(slots[:1])[0])
            d, j = int(slots[0] - off[a]), int(sel[0])
            K, V = self._arenas[a]
            K[:, :, d:d + 1].copy_(k[:, :, j:j + 1])
            V[:, :, d:d + 1].copy_(v[:, :, j:j + 1])
            return
        arena = self._arena_of(slots)
        for a in np.unique(arena).tolist():
            m = arena == a
            dst = torch.from_numpy(slots[m] - off[a]).to(k.device)
            src = torch.from_numpy(sel[m]).to(k.device)
            K, V = self._arenas[a]
            K.index_copy_(2, dst, k.detach().index_select(2, src))
            V.index_copy_(2, dst, v.detach().index_select(2, src))
