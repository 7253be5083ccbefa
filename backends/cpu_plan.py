"""The CPU backend's execution plan: the data the planner (:mod:`.cpu_planner`) produces and
the executor (:mod:`.cpu`) runs.

In: nothing (data classes). Out: :class:`Plan` — components of tiles — with
:class:`Component`, :class:`Group` (tiles of one shape, one batched call), :class:`Segment`
and :class:`Strides` (runs of tiles read through strided views), and :func:`plan_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Strides(NamedTuple):
    """How a run of tiles reads the inputs through strided views (no gather): tile t of the
    run, slot i, reads query row ``q0 + t*q_tile + i*q_step`` and key slot j reads key
    ``k0 + t*k_tile + j*k_step``."""

    q0: int
    q_tile: int
    q_step: int
    k0: int
    k_tile: int
    k_step: int

    def from_tile(self, t: int) -> Strides:
        """The same run started at its tile ``t``."""
        return self._replace(q0=self.q0 + t * self.q_tile, k0=self.k0 + t * self.k_tile)


class Segment(NamedTuple):
    """Tiles ``start:stop`` of a group, read through ``strides`` (None: gathered by index)."""

    start: int
    stop: int
    strides: Strides | None


@dataclass
class Group:
    """Tiles of one shape (``bq`` query rows x ``L`` keys), run as one batched call."""

    T: int
    bq: int
    L: int
    qg: torch.Tensor  # (T*bq,) query row gathered per slot (padding slots read row 0)
    qs: torch.Tensor  # (T*bq,) where a slot's result goes (padding slots go to row m)
    kidx: torch.Tensor  # (T*L,) key per slot (padding slots read key 0, masked)
    bias: torch.Tensor | None  # (T, 1, bq, L) additive mask, None when every slot is live
    #: runs of tiles, each read through strided views or gathered by index
    segments: list[Segment] = field(default_factory=list)
    _cast: dict = field(default_factory=dict, repr=False)  # bias per dtype
    #: the executor's fused head-major runs of ``segments`` (computed on first use)
    fast_runs: list | None = field(default=None, repr=False)

    def bias_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        if self.bias is None or dtype == self.bias.dtype:
            return self.bias
        b = self._cast.get(dtype)
        if b is None:
            b = self._cast[dtype] = self.bias.to(dtype)
        return b


@dataclass
class Component:
    """A set of pairs tiled under one row order."""

    kind: str  # "all", "band", "periodic(s)", "rest", "heavy"
    order: str  # "natural", "mod s", "rows"
    groups: list[Group]
    nnz: int
    area: int
    layout: tuple | None = field(default=None, repr=False)  # the executor's cache


@dataclass
class Plan:
    """How to run one pattern at (n, m): components of tiles, plus row bookkeeping."""

    n: int
    m: int
    nnz: int
    components: list[Component]
    empty: torch.Tensor  # (m,) bool: rows with no key at all
    plan_seconds: float = 0.0

    @property
    def area(self) -> int:
        return sum(c.area for c in self.components)

    def describe(self) -> str:
        parts = []
        for c in self.components:
            tiles = sum(g.T for g in c.groups)
            strided = sum(sg.stop - sg.start for g in c.groups for sg in g.segments
                          if sg.strides is not None)
            parts.append(f"{c.kind}[{c.order}, {len(c.groups)} groups, {tiles} tiles "
                         f"({strided / max(1, tiles):.0%} strided), eff "
                         f"{c.nnz / max(1, c.area):.0%}]")
        return f"nnz {self.nnz:,}, area {self.area:,}: " + " + ".join(parts)


# ---------------------------------------------------------------------------------------------
# helpers


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype tiles are computed in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def heads_by_plan(plans: tuple[Plan, ...]) -> list[tuple[Plan, list[int]]]:
    """Heads grouped by plan (shared patterns share one plan and one batched run)."""
    groups: dict[int, tuple[Plan, list[int]]] = {}
    for h, p in enumerate(plans):
        groups.setdefault(id(p), (p, []))[1].append(h)
    return list(groups.values())


def plan_bytes(plan: Plan) -> int:
    """Memory held by a plan (for cache accounting)."""
    total = 0
    for c in plan.components:
        for g in c.groups:
            total += 8 * (g.qg.numel() + g.qs.numel() + g.kidx.numel())
            if g.bias is not None:
                total += 4 * g.bias.numel()
    return total
