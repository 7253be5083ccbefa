"""Split-K (flash-decoding) Triton attention for few queries (m <= 16) over a gathered key list.

In: q (B, H, m, D) with m <= 16, k and v (B, H_kv, n, D) (any strides; H_kv divides H), one
pattern per head, a scale. Out: :func:`decode_forward`, the output (B, H, m, D) in q's dtype
and the base-2 log-sum-exp (B, H, m) float32 (+inf for a row with no key), the same values and
convention as the block-sparse forward of :mod:`.triton_gpu`, whose backward consumes them.

How: :func:`decode_keys` lowers each distinct pattern's m query rows (positions n-m .. n-1) to
the sorted union of the keys they attend and a bitmask per key (bit r: row r attends it),
from the rows' normal-form intervals: the intervals' end points cut the key axis into segments
of constant mask, so the work is proportional to the intervals plus the keys kept, never to
m x n. The kernel ``_decode_split`` runs program (head x batch, split) over one contiguous
chunk of that list, gathering K and V rows by index inside the kernel, with an online softmax
on a 16-row query tile; ``_decode_combine`` merges the splits' partial results (one split
writes the output directly). Splits are chosen so that a launch has about 4 programs per SM.
``SPATTN_TRITON_DECODE=0`` turns this path off (see :func:`decode_enabled`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from spattn import guard
from spattn.cache import LRUCache
from spattn.errors import ShapeError

from .triton_codegen import kernel_module
from .triton_kernels import ONLINE_STEP

#: the most query rows the decode kernel serves (its query tile)
MAX_M = 16

#: device key lists by (pattern, n, m, device); bounded in bytes (n changes every step)
_KEYS = LRUCache("triton decode key lists", 64, 256 << 20, lambda t: 8 * t[2])
_HEADS = LRUCache("triton decode head indices", 1024)

TEMPLATE = '''
import triton
import triton.language as tl


# builtins only (no tl.zeros / tl.max / tl.cdiv: jit helpers fixed at import break the
# interpreter); reductions through tl.reduce with the standard combine functions

# @ONLINE_STEP@


@triton.jit
def _decode_split(Q, K, V, KIDX, BITS, HEADS, O, LSE, WACC, WM, WL,
                  sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                  sob, soh, som, sod, H_SEL, H, GQA, m, U, CHUNK, qk_scale,
                  D: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  PREC: tl.constexpr, UPCAST: tl.constexpr, FINAL: tl.constexpr):
    pid = tl.program_id(0)
    sp = tl.program_id(1)
    b = (pid // H_SEL).to(tl.int64)
    h = tl.load(HEADS + pid % H_SEL).to(tl.int64)
    hk = h // GQA
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rd = tl.arange(0, DP)
    dmask = rd < D
    q = tl.load(Q + b * sqb + h * sqh + rm[:, None] * sqm + rd[None, :] * sqd,
                mask=(rm[:, None] < m) & dmask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.full([BM], 0.0, tl.float32)
    acc = tl.full([BM, DP], 0.0, tl.float32)
    start = sp * CHUNK
    end = tl.minimum(start + CHUNK, U)
    for j in range(start, end, BN):
        kk = j + rn
        km = kk < end
        kid = tl.load(KIDX + kk, mask=km, other=0).to(tl.int64)
        bits = tl.load(BITS + kk, mask=km, other=0)
        kt = tl.load(kbase + kid[None, :] * skn + rd[:, None] * skd,
                     mask=km[None, :] & dmask[:, None], other=0.0)
        vv = tl.load(vbase + kid[:, None] * svn + rd[None, :] * svd,
                     mask=km[:, None] & dmask[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vv = vv.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale
        keep = ((bits[None, :] >> rm[:, None]) & 1) != 0
        s = tl.where(keep, s, float("-inf"))
        acc, m_i, l_i = _online_step(s, vv, acc, m_i, l_i, PREC)
    if FINAL:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(O + b * sob + h * soh + rm[:, None] * som + rd[None, :] * sod,
                 o.to(O.dtype.element_ty), mask=(rm[:, None] < m) & dmask[None, :])
        lse = tl.where(l_i > 0.0, m_i + tl.math.log2(l_safe), float("inf"))
        tl.store(LSE + (b * H + h) * m + rm, lse, mask=rm < m)
    else:
        w = (pid.to(tl.int64) * tl.num_programs(1) + sp) * BM + rm
        tl.store(WACC + w[:, None] * DP + rd[None, :], acc)
        tl.store(WM + w, m_i)
        tl.store(WL + w, l_i)


@triton.jit
def _decode_combine(O, LSE, HEADS, WACC, WM, WL, sob, soh, som, sod, H_SEL, H, m, NSPLIT,
                    D: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // H_SEL).to(tl.int64)
    h = tl.load(HEADS + pid % H_SEL).to(tl.int64)
    rm = tl.arange(0, BM)
    rd = tl.arange(0, DP)
    mx = tl.full([BM], float("-inf"), tl.float32)
    tot = tl.full([BM], 0.0, tl.float32)
    acc = tl.full([BM, DP], 0.0, tl.float32)
    for s in range(NSPLIT):
        w = (pid.to(tl.int64) * NSPLIT + s) * BM + rm
        ms = tl.load(WM + w)
        mn = tl.maximum(mx, ms)
        safe = tl.where(mn == float("-inf"), 0.0, mn)
        alpha = tl.math.exp2(mx - safe)
        beta = tl.math.exp2(ms - safe)
        tot = tot * alpha + tl.load(WL + w) * beta
        acc = acc * alpha[:, None] + tl.load(WACC + w[:, None] * DP + rd[None, :]) * beta[:, None]
        mx = mn
    t_safe = tl.where(tot > 0.0, tot, 1.0)
    o = acc / t_safe[:, None]
    tl.store(O + b * sob + h * soh + rm[:, None] * som + rd[None, :] * sod,
             o.to(O.dtype.element_ty), mask=(rm[:, None] < m) & (rd[None, :] < D))
    lse = tl.where(tot > 0.0, mx + tl.math.log2(t_safe), float("inf"))
    tl.store(LSE + (b * H + h) * m + rm, lse, mask=rm < m)
'''.replace("# @ONLINE_STEP@", ONLINE_STEP)


def decode_enabled(m: int) -> bool:
    """True when the decode kernel serves ``m`` queries: ``m <= 16`` and the environment
    variable ``SPATTN_TRITON_DECODE`` is not ``0``."""
    return m <= MAX_M and os.environ.get("SPATTN_TRITON_DECODE", "1") not in ("", "0")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pattern_keys(pattern, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kidx, bits)`` of one pattern: the sorted keys attended by query rows n-m .. n-1 and,
    per key, the int32 mask of the rows (bit r = row r) that attend it."""
    from spattn.lower import row_intervals

    if not 1 <= m <= min(MAX_M, n) or n >= 1 << 31:
        raise ShapeError(f"the decode kernel takes 1 <= m <= min(16, n) queries and n < 2**31 "
                         f"keys, got m = {m} with n = {n:,}")
    parts = [(row, lo, hi) for _, _, row, lo, hi in row_intervals(pattern.node, n, n - m, n)]
    if not parts or not sum(len(p[1]) for p in parts):
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    row, lo, hi = (np.concatenate([np.asarray(p[t], np.int64) for p in parts]) for t in range(3))
    if len(lo) > 1 << 16:
        guard.tune_malloc()  # large: keep freed buffers instead of re-faulting them
    total = int((hi - lo).sum())  # U <= total: each row's intervals are disjoint
    base, span = int(lo.min()), int(hi.max() - lo.min())
    dense = span <= 4 * len(lo)  # intervals crowd the span: sweep it, no sort
    guard.check((span * 32.0 if dense else total * 24.0) + len(lo) * 64.0,
                f"the decode key list of {pattern} at n = {n:,}, m = {m}",
                "use a sparser pattern or a smaller n")
    # sweep the intervals' end points with weight 1 << row; each row's intervals are
    # disjoint, so the running sum is the OR of the masks of the rows covering a key
    w = np.int64(1) << (row - (n - m))
    if dense:
        wf = w.astype(np.float64)
        diff = np.bincount(lo - base, wf, span + 1) - np.bincount(hi - base, wf, span + 1)
        cov = np.rint(np.cumsum(diff[:-1])).astype(np.int64)
        keep = np.flatnonzero(cov)
        return (keep + base).astype(np.int32), cov[keep].astype(np.int32)
    ev = np.concatenate([lo, hi])
    order = np.argsort(ev, kind="stable")
    ev, cum = ev[order], np.cumsum(np.concatenate([w, -w])[order])
    last = np.flatnonzero(np.r_[ev[1:] != ev[:-1], True])
    bp, seg = ev[last], cum[last]  # seg[j]: the mask on keys bp[j] .. bp[j+1]-1
    keep = np.flatnonzero(seg[:-1])
    slo, lens, sb = bp[keep], bp[keep + 1] - bp[keep], seg[keep]
    first = np.cumsum(lens) - lens  # where each kept segment starts in the key list
    kidx = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(slo - first, lens)
    return kidx.astype(np.int32), np.repeat(sb, lens).astype(np.int32)


def decode_keys(patterns, n: int, m: int) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Per distinct pattern of ``patterns`` (one per head): ``(kidx, bits, heads)``, see
    :func:`pattern_keys`; ``heads`` lists the heads with that pattern."""
    return [(*pattern_keys(p, n, m), heads) for p, heads in _groups(patterns)]


def _groups(patterns):
    out: dict = {}
    for h, p in enumerate(patterns):
        out.setdefault(p, []).append(h)
    return list(out.items())


def _device_keys(pattern, n: int, m: int, device):
    import torch

    def make():
        kidx, bits = pattern_keys(pattern, n, m)
        return (torch.from_numpy(kidx).to(device), torch.from_numpy(bits).to(device),
                len(kidx))

    return _KEYS.get_or_create((pattern, n, m, str(device)), make)


def _heads(heads: list[int], device):
    import torch

    return _HEADS.get_or_create((tuple(heads), str(device)), lambda: torch.tensor(
        heads, dtype=torch.int32, device=device))


def _sm_count(device) -> int:
    import torch

    try:
        return torch.cuda.get_device_properties(device).multi_processor_count
    except Exception:  # noqa: BLE001 - no properties: assume an H100/H200
        return 132


def split_plan(U: int, BN: int, programs: int, device, splits: int | None = None):
    """``(number of splits, keys per split)`` for U keys and ``programs`` (heads x batch):
    about 4 programs per SM on CUDA, at most 2 splits under the interpreter."""
    blocks = -(-U // BN)
    if splits is None:
        if device.type == "cuda" and not _interpreting():
            splits = -(-4 * _sm_count(device) // max(programs, 1))
        else:
            splits = 2
    splits = max(1, min(int(splits), blocks, 65535))
    chunk = -(-blocks // splits) * BN
    return -(-U // chunk), chunk


def kernel_config(DP: int, device_type: str) -> tuple[int, int, int]:
    """``(BLOCK_N, num_warps, num_stages)`` of the split kernel for padded head dim DP."""
    if device_type != "cuda":
        return 64, 4, 1
    return (64, 4, 3) if DP <= 128 else (32, 4, 3)


def decode_forward(q, k, v, patterns, scale: float, *, block_n: int | None = None,
                   splits: int | None = None):
    """``(out (B, H, m, D) in q's dtype, lse (B, H, m) float32, base 2, +inf when empty)``.
    ``block_n``/``splits`` override the key tile and the number of splits (for tests)."""
    import torch

    B, H, m, D = q.shape
    n, Hk = k.shape[2], k.shape[1]
    if m > MAX_M or D > 256 or H % Hk or len(patterns) != H:
        raise ShapeError(f"the decode kernel takes m <= 16, D <= 256 and H_kv dividing H, got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, {len(patterns)} patterns")
    DP = max(16, 1 << (D - 1).bit_length())
    dev = q.device
    BN, warps, stages = kernel_config(DP, dev.type)
    BN = block_n or BN
    extra = {} if _interpreting() else {"num_warps": warps, "num_stages": stages}
    mod = kernel_module("", TEMPLATE)
    o = torch.empty((B, H, m, D), dtype=q.dtype, device=dev)
    lse = torch.empty((B, H, m), dtype=torch.float32, device=dev)
    meta = dict(D=D, DP=DP, BM=MAX_M, BN=BN,
                PREC="ieee" if q.dtype == torch.float32 else "tf32",
                UPCAST=_interpreting() and q.dtype == torch.bfloat16, **extra)
    strides = (*q.stride(), *k.stride(), *v.stride(), *o.stride())
    for pat, heads in _groups(patterns):
        kidx, bits, U = _device_keys(pat, n, m, dev)
        if U == 0:  # no row of this pattern attends anything
            o[:, heads] = 0
            lse[:, heads] = math.inf
            continue
        hs = _heads(heads, dev)
        P = B * len(heads)
        S, chunk = split_plan(U, BN, P, dev, splits)
        if S == 1:
            ws = (lse, lse, lse)
        else:
            ws = (torch.empty((P, S, MAX_M, DP), dtype=torch.float32, device=dev),
                  torch.empty((P, S, MAX_M), dtype=torch.float32, device=dev),
                  torch.empty((P, S, MAX_M), dtype=torch.float32, device=dev))
        mod._decode_split[(P, S)](q, k, v, kidx, bits, hs, o, lse, *ws, *strides, len(heads),
                                  H, H // Hk, m, U, chunk, scale * math.log2(math.e),
                                  FINAL=S == 1, **meta)
        if S > 1:
            mod._decode_combine[(P,)](o, lse, hs, *ws, *o.stride(), len(heads), H, m, S,
                                      D=D, DP=DP, BM=MAX_M, **({} if _interpreting() else
                                                                {"num_warps": 4}))
    return o, lse
