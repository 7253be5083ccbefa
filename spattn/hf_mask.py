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

Packed sequences (``DataCollatorWithFlattening``: position ids that restart, no attention mask,
no cache): transformers then makes its mask block-diagonal, one block per sequence. The mask
function finds the blocks where the model's mask stops attending the previous key (query i
not attending key i - 1), one O(batch · length) evaluation, and records each batch row's
document lengths (:attr:`ModelMask.documents`); :meth:`ModelMask.check_positions` checks them
against the call's ``position_ids`` (a new document wherever a position is not the previous
one plus 1, transformers' rule) and refuses position ids that restart where the model's mask
does not separate the documents (a cache is in use).
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
    model's mask is not one interval for that row. ``documents[b]`` is row b's document
    lengths when the model's mask separates packed sequences (``None``: no row is packed);
    ``packable``: the call could be packed (no padding mask, queries and keys the same
    positions from 0), the only case where transformers packs.
    """

    q_offset: int
    q_length: int
    kv_offset: int
    kv_length: int
    batch: int
    runs: tuple[tuple[int, int], ...] | None
    probe: dict[int, tuple[tuple[int, int] | None, ...]] | None
    documents: tuple[tuple[int, ...], ...] | None = None
    packable: bool = False
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

    def segment(self, b: int, P: int) -> tuple[int, int]:
        """The absolute positions ``(start, end)`` of the document of batch row b that holds
        position P (the whole sequence when the row is not packed)."""
        if self.documents is None:
            return 0, self.kv_offset + self.kv_length
        start = 0
        for n in self.documents[b]:
            if P < start + n:
                return start, start + n
            start += n
        return start, start

    def check_structure(self, kind: str, window: int | None, where: str) -> None:
        """Raise unless every probed row of the model's mask equals ``kind`` ("causal" or
        "full") cut to the last ``window`` keys (None: no window), over the call's keys and
        inside the row's document."""
        if not self.probe or (kind, window) in self.checked:
            return  # every layer of a forward shares the mask: check each structure once
        for P, per_row in self.probe.items():
            for b, got in enumerate(per_row):
                s, e = self.segment(b, P)
                k0 = max(self.kv_offset, s)
                k1 = min(self.kv_offset + self.kv_length, e)
                if kind == "causal":
                    want = (k0, min(P + 1, k1)) if window is None else \
                        (max(k0, P - window + 1), min(P + 1, k1))
                else:
                    want = (k0, k1) if window is None else \
                        (max(k0, P - window), min(P + window + 1, k1))
                if want[0] >= want[1]:
                    want = (0, 0)
                if got != want:
                    shown = "not one interval" if got is None else \
                        (f"keys {got[0]}..{got[1] - 1}" if got[1] > got[0] else "no key")
                    inside = "" if self.documents is None else \
                        f" inside its packed sequence (positions {s}..{e - 1})"
                    raise SpattnError(
                        f"{where}: the model's own mask lets query position {P} (batch row "
                        f"{b}) attend {shown}, not the {_describe(kind, window)}{inside} "
                        f"spattn applies under its pattern; spattn reproduces causal, "
                        f"sliding-window and bidirectional masks with padding or packed "
                        f"sequences (chunked attention and custom mask overlays are not "
                        f"supported yet)")
        self.checked.add((kind, window))

    def check_positions(self, position_ids: Any, where: str) -> None:
        """Raise unless the call's ``position_ids`` split the sequence into the documents the
        model's mask separates (checked once per mask, only where transformers packs)."""
        import torch

        if not self.packable or "positions" in self.checked:
            return
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or \
                position_ids.shape[1] != self.q_length or \
                position_ids.shape[0] not in (1, self.batch):
            return  # no usable position ids (or a model-specific layout): trust the mask
        got = position_documents(position_ids.expand(self.batch, -1))
        if got != self.documents:
            if self.documents is None:
                b = next(i for i, d in enumerate(got) if len(d) > 1)
                raise SpattnError(
                    f"{where}: position_ids restart inside batch row {b} (packed sequences "
                    f"of lengths {_shown(got[b])}) but the model's own mask does not separate "
                    f"them: transformers separates packed sequences only when there is no "
                    f"attention_mask and no cache; pass use_cache=False (packing is for "
                    f"training and scoring, not for generation)")
            by_pos = got or ((self.q_length,),) * self.batch
            b = next(i for i in range(self.batch) if by_pos[i] != self.documents[i])
            raise SpattnError(
                f"{where}: the model's own mask separates batch row {b} into blocks of "
                f"lengths {_shown(self.documents[b])}, but its position_ids describe "
                f"sequences of lengths {_shown(by_pos[b])}; spattn runs packed sequences as "
                f"the position ids give them (chunked attention and custom mask overlays "
                f"are not supported yet)")
        self.checked.add("positions")

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """Batch rows by their real run (rows with the same padding share backend calls)."""
        out: dict[tuple[int, int], list[int]] = {}
        for b, r in enumerate(self.row_runs()):
            out.setdefault(r, []).append(b)
        return out

    def doc_groups(self) -> dict[tuple[tuple[int, int], tuple[int, ...] | None], list[int]]:
        """Batch rows by their real run and document lengths (None: not packed): rows with
        the same layout share backend calls (packed rows with different layouts do not)."""
        out: dict = {}
        for b, r in enumerate(self.row_runs()):
            d = None if self.documents is None or len(self.documents[b]) < 2 else \
                self.documents[b]
            out.setdefault((r, d), []).append(b)
        return out


def _shown(lengths: tuple[int, ...], limit: int = 12) -> str:
    body = ", ".join(map(str, lengths[:limit]))
    return f"[{body}{', …' if len(lengths) > limit else ''}]"


def _lengths(starts: np.ndarray, n: int) -> tuple[int, ...]:
    """Document lengths of n positions whose documents begin at ``starts`` (after 0)."""
    edges = np.concatenate([[0], starts, [n]])
    return tuple(int(x) for x in np.diff(edges))


def position_documents(position_ids) -> tuple[tuple[int, ...], ...] | None:
    """Each row's document lengths from (B, N) position ids, transformers' rule: a new
    document wherever a position is not the previous one plus 1; None when no row has
    more than one."""
    pos = position_ids.detach().cpu().numpy()
    n = pos.shape[1]
    out = tuple(_lengths(np.flatnonzero(np.diff(row) != 1) + 1, n) for row in pos)
    return None if all(len(d) == 1 for d in out) else out


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


def _packed(mask_function, B: int, n: int, device) -> tuple[tuple[int, ...], ...] | None:
    """Each row's document lengths where the model's mask makes query i not attend key
    i - 1 (a new packed sequence at i); None when no row has such a break."""
    import torch

    if mask_function is None or n < 2:
        return None
    b = torch.arange(B, device=device)[:, None, None]
    h = torch.zeros((), dtype=torch.long, device=device)
    qi = torch.arange(1, n, device=device)[None, :, None]
    try:
        got = mask_function(b, h, qi, qi - 1)
    except Exception as e:  # a mask function that only runs under vmap: cannot be checked
        raise SpattnError(f"spattn cannot evaluate this model's mask function "
                          f"({type(e).__name__}: {e}); custom mask overlays are not supported "
                          f"yet") from None
    got = torch.as_tensor(got).expand(B, n - 1, 1)[..., 0].cpu().numpy()
    if got.all():
        return None
    return tuple(_lengths(np.flatnonzero(~row) + 1, n) for row in got)


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
    # transformers packs only without a padding mask and without a cache (queries = keys)
    packable = attention_mask is None and q_offset == 0 and kv_offset == 0 and \
        kv_length == q_length
    window = kwargs.get("local_size")  # a window of 1 never attends the previous key
    docs = None
    if packable and not (isinstance(window, int) and window < 2):
        docs = _packed(mask_function, batch_size, q_length, device)
    span = range(q_offset, end)
    step = max(1, (len(span) - 1) // (PROBE_ROWS - 1)) if len(span) > 1 else 1
    rows = set(list(span[::step])[:PROBE_ROWS - 1] + [end - 1])
    if docs is not None:  # and where documents start (up to PROBE_ROWS of them)
        starts = sorted({int(x) for d in docs for x in np.cumsum(d)[:-1]})
        rows.update(starts[::max(1, len(starts) // PROBE_ROWS)][:PROBE_ROWS])
    probe = _probe(mask_function, batch_size, sorted(rows), kv_offset, kv_offset + kv_length,
                   device)
    return ModelMask(q_offset, q_length, kv_offset, kv_length, batch_size, runs, probe, docs,
                     packable)


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
