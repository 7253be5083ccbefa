"""The mask half of spattn's transformers integration: what a model's mask says, compactly.

In: the arguments transformers gives the mask function registered for an attention
implementation in its ``AttentionMaskInterface`` (batch size, query and key lengths and
offsets, the model's mask function, the 2-D padding mask). Out: a :class:`ModelMask`, never an
n×n mask: each batch row's run of real (non-padding) tokens, where the queries and the keys
sit in the sequence (cache positions, not the end of a buffer), and the model's own mask
function evaluated on a few query rows (:data:`PROBE_ROWS`), so that the attention function can
check that the structure it applies (causal, the layer's sliding window, or bidirectional)
is the model's. Every position here is absolute (a cache slot index: padding counts); the
attention function turns them into pattern positions counted from each row's first real token.

A row's real tokens must be one contiguous run (left padding, right padding, or both): a mask
with padding between real tokens (right-padded prompts that then generate) is refused with a
:class:`~spattn.SpattnError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SpattnError

PROBE_ROWS = 8  #: query rows of the model's mask function evaluated per call (O(rows · keys))


@dataclass(frozen=True, eq=False)
class ModelMask:
    """A model's mask for one forward, as :func:`mask_function` found it.

    ``runs[b]`` is ``(first, end)``: row b's real tokens are the absolute positions
    ``first .. end - 1`` (``None``: no padding anywhere). Queries are the positions
    ``q_offset .. q_offset + q_length - 1``; key slot j holds position ``kv_offset + j``.
    ``probe`` maps each probed query position to its attended key interval per batch row,
    ``(lo, hi)`` half-open in absolute positions (``(0, 0)``: none), or ``None`` where the
    model's mask is not one interval for that row.
    """

    q_offset: int
    q_length: int
    kv_offset: int
    kv_length: int
    batch: int
    runs: tuple[tuple[int, int], ...] | None
    probe: dict[int, tuple[tuple[int, int] | None, ...]] | None
    checked: set = field(default_factory=set, repr=False)  #: structures already checked

    #: transformers treats a mask with four dimensions as already prepared (generate builds
    #: masks ahead for static caches and passes them back in): it reaches
    #: :func:`mask_function` again as ``attention_mask``, which keeps its padding runs
    ndim = 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 1, self.q_length, self.kv_length)

    @property
    def end(self) -> int:
        """One past the last query position: the sequence length so far, padding included."""
        return self.q_offset + self.q_length

    def row_runs(self) -> list[tuple[int, int]]:
        """Every batch row's real run clipped to positions before :attr:`end`."""
        if self.runs is None:
            return [(0, self.end)] * self.batch
        return [(min(a, self.end), min(e, self.end)) for a, e in self.runs]

    def check_structure(self, kind: str, window: int | None, where: str) -> None:
        """Raise unless every probed row of the model's mask equals ``kind`` ("causal" or
        "full") cut to the last ``window`` keys (None: no window), over the call's keys."""
        if not self.probe or (kind, window) in self.checked:
            return  # every layer of a forward shares the mask: check each structure once
        k0, k1 = self.kv_offset, self.kv_offset + self.kv_length
        for P, per_row in self.probe.items():
            if kind == "causal":
                want = (k0, min(P + 1, k1)) if window is None else \
                    (max(k0, P - window + 1), min(P + 1, k1))
            else:
                want = (k0, k1) if window is None else \
                    (max(k0, P - window), min(P + window + 1, k1))
            if want[0] >= want[1]:
                want = (0, 0)
            for b, got in enumerate(per_row):
                if got != want:
                    shown = "not one interval" if got is None else \
                        (f"keys {got[0]}..{got[1] - 1}" if got[1] > got[0] else "no key")
                    raise SpattnError(
                        f"{where}: the model's own mask lets query position {P} (batch row "
                        f"{b}) attend {shown}, not the {_describe(kind, window)} spattn "
                        f"applies under its pattern; spattn reproduces causal, sliding-window "
                        f"and bidirectional masks with padding (packed sequences, chunked "
                        f"attention and custom mask overlays are not supported yet)")
        self.checked.add((kind, window))

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """Batch rows by their real run (rows with the same padding share backend calls)."""
        out: dict[tuple[int, int], list[int]] = {}
        for b, r in enumerate(self.row_runs()):
            out.setdefault(r, []).append(b)
        return out


def _describe(kind: str, window: int | None) -> str:
    if window is None:
        return "causal mask" if kind == "causal" else "bidirectional mask"
    return f"sliding window of {window}" if kind == "causal" else \
        f"bidirectional window of {window}"


def _as_int(x: Any) -> int:
    return int(x.item()) if hasattr(x, "item") else int(x)


def padding_runs(attention_mask, end: int) -> tuple[tuple[int, int], ...] | None:
    """Each row's ``(first, end)`` run of real tokens from a 2-D padding mask (True: real),
    or None when every position is real; positions past the mask's length are padding."""
    import torch

    if attention_mask is None:
        return None
    m = attention_mask.to(torch.bool)
    if m.dim() != 2:
        raise SpattnError(f"spattn expects a 2-D padding mask (batch, length); got shape "
                          f"{tuple(m.shape)}")
    if m.shape[1] >= end and bool(m[:, :end].all()):
        return None
    m = m.cpu().numpy()
    L = m.shape[1]
    runs = []
    for b, row in enumerate(m):
        idx = np.flatnonzero(row)
        if len(idx) == 0:
            runs.append((0, 0))
            continue
        a, e = int(idx[0]), int(idx[-1]) + 1
        if len(idx) != e - a:
            shown = "".join("1" if x else "0" for x in row[:64]) + ("…" if L > 64 else "")
            raise SpattnError(
                f"batch row {b} of the attention mask has padding between real tokens "
                f"({shown}); spattn needs each row's real tokens in one run (pad on the left "
                f"for generation: tokenizer.padding_side = 'left')")
        runs.append((a, e))
    return tuple(runs)


def _probe(mask_function, B: int, rows: list[int], k0: int, k1: int, device):
    """The model's mask function on ``rows`` × keys k0..k1-1, as intervals per row."""
    import torch

    if mask_function is None or k1 <= k0:
        return None
    b = torch.arange(B, device=device)[:, None, None]
    h = torch.zeros((), dtype=torch.long, device=device)
    qi = torch.tensor(rows, dtype=torch.long, device=device)[None, :, None]
    kv = torch.arange(k0, k1, device=device)[None, None, :]
    try:
        got = mask_function(b, h, qi, kv)
    except Exception as e:  # a mask function that only runs under vmap: cannot be checked
        raise SpattnError(f"spattn cannot evaluate this model's mask function "
                          f"({type(e).__name__}: {e}); custom mask overlays are not supported "
                          f"yet") from None
    got = torch.as_tensor(got).expand(B, len(rows), k1 - k0).cpu().numpy()
    out: dict[int, list] = {P: [] for P in rows}
    for bi in range(B):
        for r, P in enumerate(rows):
            idx = np.flatnonzero(got[bi, r])
            if len(idx) == 0:
                out[P].append((0, 0))
            elif len(idx) != idx[-1] - idx[0] + 1:
                out[P].append(None)
            else:
                out[P].append((k0 + int(idx[0]), k0 + int(idx[-1]) + 1))
    return {P: tuple(v) for P, v in out.items()}


def mask_function(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0,
                  kv_offset: Any = 0, mask_function: Any = None, attention_mask: Any = None,
                  device: Any = None, **kwargs) -> ModelMask:
    """The function registered as the "spattn" entry of transformers'
    ``AttentionMaskInterface``: a :class:`ModelMask` instead of a dense mask."""
    q_offset, kv_offset = _as_int(q_offset), _as_int(kv_offset)
    q_length, kv_length = _as_int(q_length), _as_int(kv_length)
    end = q_offset + q_length
    if isinstance(attention_mask, ModelMask):  # prepared ahead by generate for this step
        runs = attention_mask.runs
    else:
        runs = padding_runs(attention_mask, end)
    span = range(q_offset, end)
    step = max(1, (len(span) - 1) // (PROBE_ROWS - 1)) if len(span) > 1 else 1
    rows = sorted(set(list(span[::step])[:PROBE_ROWS - 1] + [end - 1]))
    probe = _probe(mask_function, batch_size, rows, kv_offset, kv_offset + kv_length, device)
    return ModelMask(q_offset, q_length, kv_offset, kv_length, batch_size, runs, probe)


def batch_index(rows: list[int], device):
    """An index for batch ``rows``: a slice (a view) when they are consecutive."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    import torch

    return torch.tensor(rows, device=device)


def assemble(parts, q, v):
    """The (B, H, t, D_v) output from ``parts``, each ``(rows, s0, s1, out)``: ``out`` holds
    query rows s0..s1-1 of batch ``rows`` (a :func:`batch_index`); zeros elsewhere (padding
    queries). One part covering everything is returned as is."""
    B, H, t = q.shape[:3]
    if len(parts) == 1:
        rows, s0, s1, o = parts[0]
        if isinstance(rows, slice) and rows == slice(0, B) and (s0, s1) == (0, t):
            return o
    out = q.new_zeros(B, H, t, v.shape[-1])
    for rows, s0, s1, o in parts:
        out[rows, :, s0:s1] = o
    return out


def default_mask(q, k) -> ModelMask:
    """The mask of an attention call that got none: no padding, the queries last."""
    m, n = q.shape[2], k.shape[2]
    return ModelMask(n - m, m, 0, n, q.shape[0], None, None)
