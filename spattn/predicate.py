"""The element predicate M[i, j] of a bound pattern, evaluated over an array module.

In: a :class:`~spattn.bind.Bound` tree, broadcastable integer positions ``i`` (queries) and
``j`` (keys) inside ``[0, n)``, and an *ops* object. Out: a boolean array of the broadcast
shape. Each primitive's predicate is written once, in its table entry
(:meth:`spattn.prims.base.Primitive.mask`), with plain operators (``- <= >= == % // & | ~``)
that numpy arrays, torch tensors and the Triton code generator's symbolic values all support;
the ops object supplies what differs between array modules (and ``ops.let(x)``, which names
an intermediate result: the identity here, a local variable in generated Triton code):

* ``ops.member(runs, x)``: whether positions ``x`` lie in an index set (a search in the runs
  on numpy; a membership table on torch, captured by FlexAttention's ``mask_mod``);
* ``ops.random(args, i, j)``: whether key j is one of row i's ``random`` keys (drawn for the
  rows at hand on numpy; a per-row key table on torch).

:class:`NumpyOps` serves block-level tile resolution and ``BlockLayout.tile_mask``;
:class:`TorchOps` serves ``mask_mod`` (FlexAttention); the Triton backend has its own ops that
emit kernel source (``spattn.backends.triton_codegen``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bind import Bound
from .ir import IndexRuns
from .random_keys import row_keys


def evaluate(b: Bound, ops: Any, i: Any, j: Any, d: Any = None) -> Any:
    """M[i, j] of the bound pattern ``b`` (``d = i - j`` may be passed when computed
    already)."""
    if d is None:
        d = i - j
    let = ops.let
    if b.kind == "prim":
        return let(b.spec.mask(ops, i, j, d, b.args))
    if b.kind in ("union", "inter"):
        out = evaluate(b.items[0], ops, i, j, d)
        for x in b.items[1:]:
            y = evaluate(x, ops, i, j, d)
            out = let((out | y) if b.kind == "union" else (out & y))
        return out
    if b.kind == "diff":
        return let(evaluate(b.items[0], ops, i, j, d) & ~evaluate(b.items[1], ops, i, j, d))
    if b.kind == "not":
        return let(~evaluate(b.items[0], ops, i, j, d))
    raise TypeError(b.kind)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# numpy


class NumpyOps:
    """numpy positions (int32 or int64 arrays inside [0, n)); no O(n) tables."""

    def __init__(self, n: int):
        self.n = n

    @staticmethod
    def let(x):
        return x

    def member(self, runs: IndexRuns, x: np.ndarray) -> np.ndarray:
        return runs.contains(x)

    def random(self, a: tuple, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        k, seed = a
        n = self.n
        tiled = _random_tiles(i, j, n, k, seed)
        if tiled is not None:
            return tiled
        shape = np.broadcast_shapes(np.shape(i), np.shape(j))
        ib, jb = np.broadcast_to(i, shape).ravel(), np.broadcast_to(j, shape).ravel()
        rows, inv = np.unique(ib, return_inverse=True)
        keys = row_keys(n, k, seed, rows)
        if keys.shape[1] == 0:
            return np.zeros(shape, bool)
        flat = (np.arange(len(rows), dtype=np.int64)[:, None] * n + keys).ravel()
        q = inv.ravel() * n + jb
        pos = np.minimum(np.searchsorted(flat, q), len(flat) - 1)
        return (flat[pos] == q).reshape(shape)


def _random_tiles(i, j, n, k, seed):
    """random's mask on tiles ``i`` (..., X, 1) × ``j`` (..., 1, Y) whose keys are
    consecutive (clipped at n - 1): scatter each row's keys instead of searching."""
    i, j = np.asarray(i), np.asarray(j)
    if i.ndim < 2 or i.ndim != j.ndim or i.shape[-1] != 1 or j.shape[-2] != 1:
        return None
    lead = np.broadcast_shapes(i.shape[:-2], j.shape[:-2])
    X, Y = i.shape[-2], j.shape[-1]
    rows = np.broadcast_to(i[..., 0], lead + (X,)).reshape(-1, X)
    jr = np.broadcast_to(j[..., 0, :], lead + (Y,)).reshape(-1, Y)
    j0 = jr[:, :1]
    if not ((jr == np.minimum(j0 + np.arange(Y), n - 1)).all()):
        return None
    keys = row_keys(n, k, seed, rows.ravel())
    kk = keys.shape[1]
    G = rows.shape[0]
    out = np.zeros((G, X, Y), bool)
    if kk:
        rel = keys.reshape(G, X, kk) - j0[:, :, None]
        g, x, t = np.nonzero((rel >= 0) & (rel < Y))
        col = rel[g, x, t]
        out[g, x, col] = True
        # a clipped tail repeats key n - 1: mirror its value there
        last = np.minimum(j0[:, 0] + np.arange(Y)[:, None], n - 1).T == n - 1
        if last.any():
            gl, yl = np.nonzero(last)
            y0 = np.argmax(last, axis=1)
            out[gl, :, yl] = out[gl, :, y0[gl]]
    return out.reshape(lead + (X, Y))


def numpy_mask(b: Bound, i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """M[i, j] on numpy positions inside [0, n)."""
    return evaluate(b, NumpyOps(n), i, j)


# --------------------------------------------------------------------------------------------
# torch


def membership(runs: IndexRuns, n: int) -> np.ndarray:
    """The index set as a length-n boolean table (n bytes: checked against the budget)."""
    from . import guard

    guard.check(float(n), f"a membership table of n = {n:,} positions",
                "use a slice with a step (closed form) or a smaller n")
    t = np.zeros(n, bool)
    if runs.step > 1:
        t[int(runs.starts[0]):int(runs.ends[0]):runs.step] = True
        return t
    for s, e in zip(runs.starts.tolist(), runs.ends.tolist(), strict=True):
        t[s:e] = True
    return t


#: index sets of at most this many runs are tested by comparisons, without a table
FEW_RUNS = 8


class TorchOps:
    """torch positions (tensors, traceable by FlexAttention); the tables a bound pattern
    needs are built once, on ``device``, when the ops object is made."""

    def __init__(self, b: Bound, n: int, device: Any = "cpu"):
        import torch

        self.n = n
        self._member: dict[int, Any] = {}
        self._keys: dict[int, Any] = {}
        for p in b.prims():
            for x in p.args:
                if isinstance(x, IndexRuns) and x.step == 1 and len(x.starts) > FEW_RUNS \
                        and id(x) not in self._member:
                    self._member[id(x)] = torch.from_numpy(membership(x, n)).to(device)
            keys = p.spec.key_table(p.args, n)
            if keys is not None:
                self._keys[id(p.args)] = torch.from_numpy(keys).to(device)
        self._bound = b  # keeps the ids above alive

    @staticmethod
    def let(x):
        return x

    def member(self, runs: IndexRuns, x):
        if runs.step > 1:  # one progression: closed form (operators torch shares)
            return runs.contains(x)
        if len(runs.starts) <= FEW_RUNS:
            out = x < 0
            for s, e in zip(runs.starts.tolist(), runs.ends.tolist(), strict=True):
                out = out | ((x >= s) & (x < e))
            return out
        return self._member[id(runs)][x]

    def random(self, a: tuple, i, j):
        k = a[0]
        if k == 0:
            return (i < 0) & (j < 0)
        if k == self.n:
            return (i >= 0) & (j >= 0)
        t = self._keys[id(a)]
        out = t[i, 0] == j
        for s in range(1, k):
            out = out | (t[i, s] == j)
        return out
