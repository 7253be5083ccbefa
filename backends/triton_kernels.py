"""Triton kernel templates for block-sparse attention over a :class:`spattn.BlockLayout`.

In: nothing at import (the template is text). :mod:`.triton_codegen` pastes a pattern's
generated ``_mask_fn`` into ``TEMPLATE`` and imports the result. Out (in the generated
module): ``_fwd`` (online softmax over the layout's full then partial key blocks; the element
mask only on partial blocks; writes the output and the base-2 log-sum-exp), ``_bwd_dq`` (dq
over the layout's rows) and ``_bwd_dkdv`` (dk and dv over its transpose: no atomics).

Conventions: q/k/v/o/do are (B, H, seq, D) with unit stride in D; LSE and DELTA are float32
(B, H, m) contiguous; query row r is position ``off + r`` (``off = n - m``); heads processed
by a launch are listed in ``HEADS`` (per-head patterns run one launch per distinct pattern).
Empty rows keep LSE = +inf so that every recomputed probability is 0.
"""

#: one online-softmax step over a tile of base-2 scores ``s`` (masked entries -inf) and its
#: values ``v``: the running (acc, row max, row sum) updated; a row with no key stays at
#: (0, -inf, 0). Pasted into every kernel template that accumulates attention.
ONLINE_STEP = '''
@triton.jit
def _online_step(s, v, acc, m_i, l_i, PREC: tl.constexpr):
    m_new = tl.maximum(m_i, tl.reduce(s, 1, tl.standard._elementwise_max))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i
'''

TEMPLATE = '''
import triton
import triton.language as tl


# @MASK_FN@


# Only builtins below, and reductions through tl.reduce with the standard library's combine
# functions (which the CPU interpreter runs with numpy): helpers such as tl.zeros / tl.max are
# jit functions fixed when triton.language is imported, which breaks the interpreter if that
# happened before TRITON_INTERPRET=1 was set.

# @ONLINE_STEP@

@triton.jit
def _qpos(QPOS, rm, m, n, off, PERM: tl.constexpr):
    """Query positions of rows ``rm`` (clamped): ``off + rm``, or a permutation's table."""
    p = tl.minimum(off + rm, n - 1)
    if PERM:
        p = tl.load(QPOS + tl.minimum(rm, m - 1))
    return p


@triton.jit
def _kpos(KPOS, kn, n, PERM: tl.constexpr):
    """Key positions of columns ``kn`` (clamped): ``kn``, or a permutation's table."""
    p = tl.minimum(kn, n - 1)
    if PERM:
        p = tl.load(KPOS + p)
    return p


@triton.jit
def _fwd_tile(q, acc, m_i, l_i, kbase, vbase, c, rn, rd, qi, skn, svn, n, qk_scale, PRM, TAB,
              KPOS,
              BN: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, PERM: tl.constexpr):
    kn = c * BN + rn
    kt = tl.load(kbase + kn[None, :] * skn + rd[:, None], mask=kn[None, :] < n, other=0.0)
    if UPCAST:
        kt = kt.to(tl.float32)
    v = tl.load(vbase + kn[:, None] * svn + rd[None, :], mask=kn[:, None] < n, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    s = tl.dot(q, kt, input_precision=PREC) * qk_scale
    keep = (kn[None, :] < n) & (qi >= 0)
    if MASKED:
        keep = keep & _mask_fn(qi, _kpos(KPOS, kn, n, PERM)[None, :], n, PRM, TAB)
    s = tl.where(keep, s, float("-inf"))
    return _online_step(s, v, acc, m_i, l_i, PREC)


@triton.jit
def _fwd(Q, K, V, O, LSE, HEADS, FPTR, FIDX, PPTR, PIDX, PRM, TAB, QPOS, KPOS,
         sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
         H_SEL, H, m, n, off, qk_scale,
         D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, PERM: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_SEL).to(tl.int64)  # int64: offsets of large tensors overflow int32
    h = tl.load(HEADS + pid_bh % H_SEL).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rd = tl.arange(0, D)
    q = tl.load(Q + b * sqb + h * sqh + rm[:, None] * sqm + rd[None, :],
                mask=rm[:, None] < m, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    qi = _qpos(QPOS, rm, m, n, off, PERM)[:, None]
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.full([BM], 0.0, tl.float32)
    acc = tl.full([BM, D], 0.0, tl.float32)
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    t0 = tl.load(FPTR + pid_m)
    t1 = tl.load(FPTR + pid_m + 1)
    for t in range(t0, t1):
        c = tl.load(FIDX + t)
        acc, m_i, l_i = _fwd_tile(q, acc, m_i, l_i, kbase, vbase, c, rn, rd, qi, skn, svn, n,
                                  qk_scale, PRM, TAB, KPOS, BN, False, PREC, UPCAST, PERM)
    t0 = tl.load(PPTR + pid_m)
    t1 = tl.load(PPTR + pid_m + 1)
    for t in range(t0, t1):
        c = tl.load(PIDX + t)
        acc, m_i, l_i = _fwd_tile(q, acc, m_i, l_i, kbase, vbase, c, rn, rd, qi, skn, svn, n,
                                  qk_scale, PRM, TAB, KPOS, BN, True, PREC, UPCAST, PERM)
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    tl.store(O + b * sob + h * soh + rm[:, None] * som + rd[None, :], o.to(O.dtype.element_ty),
             mask=rm[:, None] < m)
    lse = tl.where(l_i > 0.0, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(LSE + (b * H + h) * m + rm, lse, mask=rm < m)


@triton.jit
def _dq_tile(q, do, lse, delta, dq, kbase, vbase, c, rn, rd, qi, skn, svn, n, qk_scale,
             PRM, TAB, KPOS, BN: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, PERM: tl.constexpr):
    kn = c * BN + rn
    kt = tl.load(kbase + kn[None, :] * skn + rd[:, None], mask=kn[None, :] < n, other=0.0)
    if UPCAST:
        kt = kt.to(tl.float32)
    vt = tl.load(vbase + kn[None, :] * svn + rd[:, None], mask=kn[None, :] < n, other=0.0)
    if UPCAST:
        vt = vt.to(tl.float32)
    s = tl.dot(q, kt, input_precision=PREC) * qk_scale
    keep = (kn[None, :] < n) & (qi >= 0)
    if MASKED:
        keep = keep & _mask_fn(qi, _kpos(KPOS, kn, n, PERM)[None, :], n, PRM, TAB)
    p = tl.where(keep, tl.math.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, vt, input_precision=PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
    return dq


@triton.jit
def _bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, HEADS, FPTR, FIDX, PPTR, PIDX, PRM, TAB, QPOS, KPOS,
            sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom,
            H_SEL, H, m, n, off, qk_scale, scale,
            D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, PERM: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_SEL).to(tl.int64)  # int64: offsets of large tensors overflow int32
    h = tl.load(HEADS + pid_bh % H_SEL).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rd = tl.arange(0, D)
    rmask = rm[:, None] < m
    q = tl.load(Q + b * sqb + h * sqh + rm[:, None] * sqm + rd[None, :], mask=rmask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    do = tl.load(DO + b * sdob + h * sdoh + rm[:, None] * sdom + rd[None, :], mask=rmask,
                 other=0.0)
    if UPCAST:
        do = do.to(tl.float32)
    lse = tl.load(LSE + (b * H + h) * m + rm, mask=rm < m, other=float("inf"))
    delta = tl.load(DELTA + (b * H + h) * m + rm, mask=rm < m, other=0.0)
    qi = _qpos(QPOS, rm, m, n, off, PERM)[:, None]
    dq = tl.full([BM, D], 0.0, tl.float32)
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    t0 = tl.load(FPTR + pid_m)
    t1 = tl.load(FPTR + pid_m + 1)
    for t in range(t0, t1):
        c = tl.load(FIDX + t)
        dq = _dq_tile(q, do, lse, delta, dq, kbase, vbase, c, rn, rd, qi, skn, svn, n,
                      qk_scale, PRM, TAB, KPOS, BN, False, PREC, UPCAST, PERM)
    t0 = tl.load(PPTR + pid_m)
    t1 = tl.load(PPTR + pid_m + 1)
    for t in range(t0, t1):
        c = tl.load(PIDX + t)
        dq = _dq_tile(q, do, lse, delta, dq, kbase, vbase, c, rn, rd, qi, skn, svn, n,
                      qk_scale, PRM, TAB, KPOS, BN, True, PREC, UPCAST, PERM)
    dq = dq * scale
    tl.store(DQ + b * sqb + h * sqh + rm[:, None] * sqm + rd[None, :],
             dq.to(DQ.dtype.element_ty), mask=rmask)


@triton.jit
def _dkdv_tile(k, v, dk, dv, qbase, dobase, LSE, DELTA, lbase, a, rmb, rd, kn, kj, sqm, sdom,
               m, n, off, qk_scale, PRM, TAB, QPOS,
               BM: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, PERM: tl.constexpr):
    rm = a * BM + rmb
    qt = tl.load(qbase + rm[None, :] * sqm + rd[:, None], mask=rm[None, :] < m, other=0.0)
    if UPCAST:
        qt = qt.to(tl.float32)
    do = tl.load(dobase + rm[:, None] * sdom + rd[None, :], mask=rm[:, None] < m, other=0.0)
    if UPCAST:
        do = do.to(tl.float32)
    lse = tl.load(LSE + lbase + rm, mask=rm < m, other=float("inf"))
    delta = tl.load(DELTA + lbase + rm, mask=rm < m, other=0.0)
    st = tl.dot(k, qt, input_precision=PREC) * qk_scale
    keep = (kn[:, None] < n) & (rm[None, :] < m)
    if MASKED:
        qi = _qpos(QPOS, rm, m, n, off, PERM)[None, :]
        keep = keep & _mask_fn(qi, kj, n, PRM, TAB)
    pt = tl.where(keep, tl.math.exp2(st - lse[None, :]), 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
    dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, HEADS, FPTR, FIDX, PPTR, PIDX, PRM, TAB, QPOS, KPOS,
              sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom,
              H_SEL, H, m, n, off, qk_scale, scale,
              D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, PERM: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_SEL).to(tl.int64)  # int64: offsets of large tensors overflow int32
    h = tl.load(HEADS + pid_bh % H_SEL).to(tl.int64)
    kn = pid_n * BN + tl.arange(0, BN)
    rmb = tl.arange(0, BM)
    rd = tl.arange(0, D)
    kmask = kn[:, None] < n
    k = tl.load(K + b * skb + h * skh + kn[:, None] * skn + rd[None, :], mask=kmask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    v = tl.load(V + b * svb + h * svh + kn[:, None] * svn + rd[None, :], mask=kmask, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    kj = _kpos(KPOS, kn, n, PERM)[:, None]
    dk = tl.full([BN, D], 0.0, tl.float32)
    dv = tl.full([BN, D], 0.0, tl.float32)
    qbase = Q + b * sqb + h * sqh
    dobase = DO + b * sdob + h * sdoh
    lbase = (b * H + h) * m
    t0 = tl.load(FPTR + pid_n)
    t1 = tl.load(FPTR + pid_n + 1)
    for t in range(t0, t1):
        a = tl.load(FIDX + t)
        dk, dv = _dkdv_tile(k, v, dk, dv, qbase, dobase, LSE, DELTA, lbase, a, rmb, rd, kn, kj,
                            sqm, sdom, m, n, off, qk_scale, PRM, TAB, QPOS, BM, False,
                            PREC, UPCAST, PERM)
    t0 = tl.load(PPTR + pid_n)
    t1 = tl.load(PPTR + pid_n + 1)
    for t in range(t0, t1):
        a = tl.load(PIDX + t)
        dk, dv = _dkdv_tile(k, v, dk, dv, qbase, dobase, LSE, DELTA, lbase, a, rmb, rd, kn, kj,
                            sqm, sdom, m, n, off, qk_scale, PRM, TAB, QPOS, BM, True,
                            PREC, UPCAST, PERM)
    dk = dk * scale
    tl.store(DK + b * skb + h * skh + kn[:, None] * skn + rd[None, :],
             dk.to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + b * svb + h * svh + kn[:, None] * svn + rd[None, :],
             dv.to(DV.dtype.element_ty), mask=kmask)
'''

TEMPLATE = TEMPLATE.replace("# @ONLINE_STEP@", ONLINE_STEP)
