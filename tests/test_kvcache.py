"""spattn.KVCache (SPEC section 5) against the float64 dense reference over every key seen,
and its held set against a brute-force scan of which keys a later query can attend."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spattn

from .test_decode import dense_reference

CHUNKS = [37, 1, 1, 5, 64, 1, 20, 3, 1, 17, 1]

EVICTING = ["streaming(4, 16)", "window(9, 0) & causal", "block(8) & causal",
            "fixed(8, 2) & causal", "dilated(3, 2) & causal", "(local(5) | sink(3)) & causal",
            "window(12, 0) & stride(3)", "(window(6, 0) | stride(7)) & causal", "causal",
            "strided(8)", "window(20, 0) & causal - window(3, 0)", "rows([0:5]) & causal"]
KEEPING = ["local(n // 8) & causal", "(sink(2) | rows([-1])) & causal",
           "random(4, seed=1) & causal", "(window(5, 0) | cols([-1])) & causal"]


def brute_needed(p, L, horizon):
    """Keys j < L that some query i in [L, horizon) attends at length horizon (from the
    dense mask; for length-independent patterns the mask does not depend on n)."""
    M = spattn.compile(p).to_dense(horizon)
    return np.flatnonzero(M[L:, :L].any(0))


def run(p, chunks, B=2, H=3, D=16, dtype=torch.float32, seed=0):
    N = sum(chunks)
    g = torch.Generator().manual_seed(seed)
    Q, K, V = (torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3))
    cache = spattn.KVCache(p)
    pats = p if isinstance(p, list) else [p] * H
    L, outs, refs = 0, [], []
    for t in chunks:
        outs.append(cache.attend(Q[:, :, L:L + t], K[:, :, L:L + t], V[:, :, L:L + t]))
        L += t
        assert cache.length == L
        # the last t rows over every key so far, the pattern at n = L
        refs.append(dense_reference(Q[:, :, L - t:L], K[:, :, :L], V[:, :, :L], pats))
    return cache, torch.cat(outs, 2), torch.cat(refs, 2), (Q, K, V)


@pytest.mark.parametrize("p", EVICTING + KEEPING)
def test_outputs_equal_attention_over_all_keys(p):
    cache, out, ref, _ = run(p, CHUNKS)
    assert torch.allclose(out.double(), ref, atol=2e-6), (out.double() - ref).abs().max()
    assert cache.evicts == (p in EVICTING)


@pytest.mark.parametrize("p", EVICTING)
def test_held_keys_are_exactly_those_still_needed(p):
    cache = spattn.KVCache(p)
    exact = p not in ("window(20, 0) & causal - window(3, 0)",)
    x = torch.randn(1, 1, 1, 4)
    for L in range(1, 120):
        cache.attend(x, x, x)
        need = brute_needed(p, L, 400)
        held = cache.positions
        assert np.isin(need, held).all(), (L, need, held)
        if exact:
            assert np.array_equal(held, need), (L, held, need)
        assert cache.held == len(held)


def test_non_exact_patterns_hold_a_superset_and_still_answer_exactly():
    cache, out, ref, _ = run("window(20, 0) & causal - window(3, 0)", CHUNKS)
    assert torch.allclose(out.double(), ref, atol=2e-6)


@settings(max_examples=25, deadline=None)
@given(p=st.sampled_from(EVICTING + KEEPING),
       chunks=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_any_chunk_sequence(p, chunks):
    _, out, ref, _ = run(p, chunks, B=1, H=2, D=8)
    assert torch.allclose(out.double(), ref, atol=2e-6)


def test_streaming_memory_stays_flat():
    cache = spattn.KVCache("streaming(4, 32)")
    x = torch.randn(1, 2, 1, 8)
    caps = []
    for i in range(2000):
        cache.attend(x, x, x)
        if i % 250 == 249:
            caps.append(cache.capacity)
            assert cache.held == 4 + 32
    assert len(set(caps)) == 1 and caps[0] <= 128 + 4 + 32
    assert list(cache.positions[:4]) == [0, 1, 2, 3]


def test_per_head_patterns_b_and_dtypes():
    pats = ["streaming(2, 8)", "causal", "window(4, 0) & causal"]
    for dtype, tol in [(torch.float32, 2e-6), (torch.float16, 3e-3), (torch.bfloat16, 3e-2)]:
        cache, out, ref, _ = run(pats, CHUNKS, B=2, H=3, D=16, dtype=dtype)
        assert out.dtype == dtype
        assert (out.double() - ref).abs().max() < tol
        # the union of what each head needs is held
        assert cache.held <= sum(CHUNKS)


def test_gradients_flow_to_this_calls_inputs():
    p = "streaming(2, 6)"
    N, t = 30, 3
    Q, K, V = (torch.randn(1, 2, N, 8, dtype=torch.float64) for _ in range(3))
    cache = spattn.KVCache(p)
    cache.attend(Q[:, :, :N - t], K[:, :, :N - t], V[:, :, :N - t])
    q, k, v = (x[:, :, N - t:].clone().requires_grad_() for x in (Q, K, V))
    out = cache.attend(q, k, v)
    out.sum().backward()
    # reference: the same rows with the earlier keys as constants
    qa, ka, va = (x.clone() for x in (Q, K, V))
    q2, k2, v2 = (x[:, :, N - t:].clone().requires_grad_() for x in (Q, K, V))
    ref = dense_reference(q2, torch.cat([ka[:, :, :N - t], k2], 2),
                          torch.cat([va[:, :, :N - t], v2], 2), [p, p])
    ref.sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_refuses_non_causal_patterns_with_a_hint():
    for p in ["local(4)", "streaming(4, 8) | window(0, 1)", "full"]:
        with pytest.raises(spattn.SpattnError, match="& causal"):
            spattn.KVCache(p)


def test_shape_and_dtype_changes_are_errors():
    cache = spattn.KVCache("causal")
    x = torch.randn(1, 2, 3, 8)
    cache.attend(x, x, x)
    with pytest.raises(spattn.ShapeError, match="H=2"):
        y = torch.randn(1, 3, 1, 8)
        cache.attend(y, y, y)
    with pytest.raises(spattn.ShapeError, match="float64"):
        y = torch.randn(1, 2, 1, 8, dtype=torch.float64)
        cache.attend(y, y, y)
    with pytest.raises(spattn.ShapeError):
        cache.attend(x[:, :, :1], x, x)
    with pytest.raises(spattn.ShapeError, match="per-head"):
        spattn.KVCache(["causal"] * 3).attend(x, x, x)


def test_long_prefill_then_decode_matches():
    p = "streaming(4, 64)"
    cache, out, ref, _ = run(p, [700, 1, 1, 1, 33, 1], B=1, H=2, D=8)
    assert torch.allclose(out.double(), ref, atol=2e-6)
    assert cache.held == 4 + 64


def test_encoder_decoding_with_caches_equals_the_full_forward():
    torch.manual_seed(0)
    enc = spattn.nn.SparseEncoder(32, 4, ["streaming(2, 6)", "window(5, 0) & causal"]).eval()
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        full = enc(x)
        caches = enc.new_caches()
        parts = [enc(x[:, :13], caches=caches)]
        parts += [enc(x[:, i:i + 1], caches=caches) for i in range(13, 40)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert [c.held for c in caches] == [2 + 6, 5]
    with pytest.raises(spattn.SpattnError, match="caches"):
        enc(x, caches=caches[:1])


@pytest.mark.parametrize("p", ["streaming(4, 16)", "window(9, 0) & causal", "block(8) & causal",
                               "fixed(8, 2) & causal", "dilated(3, 2) & causal"])
def test_held_keys_match_the_kv_cache_figure(p):
    """The runtime and the analysis agree: the most keys a step needs (held + its own) is
    the pattern's `kv_cache` statistic."""
    n = 160
    cache = spattn.KVCache(p)
    x = torch.randn(1, 1, 1, 4)
    most = 0
    for _ in range(n):
        most = max(most, cache.held + 1)  # a step reads the held keys and its own
        cache.attend(x, x, x)
    assert most == spattn.compile(p).stats(n).to_dict()["kv_cache"]


@pytest.mark.parametrize("p", ["streaming(3, 20)", "window(40, 0) & causal",
                               "(sink(2) | window(9, 0) | window(30, 0) & stride(7)) & causal"])
def test_one_token_steps_gather_without_planning(p, monkeypatch):
    """One-token steps over few stored keys (a window) gather them and run one kernel: no
    piece planning, and still the reference's rows (GQA: 4 query heads over 2 key heads)."""
    from spattn.backends import cpu_decode

    g = torch.Generator().manual_seed(5)
    N = 150
    Q = torch.randn(2, 4, N, 16, generator=g, dtype=torch.float64)
    K, V = (torch.randn(2, 2, N, 16, generator=g, dtype=torch.float64) for _ in range(2))
    cache = spattn.KVCache(p)
    cache.attend(Q[:, :, :40], K[:, :, :40], V[:, :, :40])
    cache.attend(Q[:, :, 40:41], K[:, :, 40:41], V[:, :, 40:41])  # arenas settle

    def no_planning(*a, **k):
        raise AssertionError("a one-token window step planned pieces")

    monkeypatch.setattr(cpu_decode, "pieces", no_planning)
    for t in range(41, N):
        got = cache.attend(Q[:, :, t:t + 1], K[:, :, t:t + 1], V[:, :, t:t + 1])
        ref = spattn.attention(Q[:, :, t:t + 1], K[:, :, :t + 1], V[:, :, :t + 1], p,
                               backend="reference")
        assert (got - ref).abs().max().item() < 1e-12, t
