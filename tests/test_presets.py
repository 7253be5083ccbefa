"""The shipped presets against what they mean in the library or paper they come from.

Each preset is compared, at several n, with a per-pair definition written from the source's
own convention (not from spattn's primitives), so an off-by-one in the prelude shows up here:

- ``longformer(w, I)``: Longformer / transformers ``LongformerSelfAttention``: a window of
  ``attention_window // 2`` keys each side of the query plus the query itself, and symmetric
  global tokens (``global_attention_mask``); ``attention_window = 2·w``.
- ``bigbird(w, I, r)``: BigBird's token-level ITC: window w each side, symmetric global
  tokens, r random keys per query (the random keys from the independent re-implementation in
  ``reference.oracle_random_keys``).
- ``strided(l)``: Sparse Transformer (Child et al. 2019, §4.2), merged head:
  A¹ᵢ = {t, …, i} with t = max(0, i − l) (the query and the l before it) and
  A²ᵢ = {j ≤ i : (i − j) mod l = 0}.
- ``fixed_causal(l, c)``: Sparse Transformer "fixed": A¹ᵢ = {j ≤ i : ⌊j/l⌋ = ⌊i/l⌋},
  A²ᵢ = {j ≤ i : j mod l ∈ {l − c, …, l − 1}}.
- ``streaming(k, w)``: StreamingLLM's ``StartRecentKVCache(start_size=k, recent_size=w)``
  driven one token at a time as in its ``eval_long_ppl.py``, simulated here.
- ``sliding(W)``: transformers' ``sliding_window = W``: ``kv_idx > q_idx - W`` and causal,
  i.e. W keys including the query; checked against transformers itself when installed.
- ``chunked_causal(b)``: Llama 4 chunked attention (transformers ``chunked_overlay``): same
  chunk of b tokens, causal.
- ``dilated_local(w, d, l)``: Longformer dilated window (w positions each side, d apart) plus a
  dense window of l each side.
- ``sqrt_strided``: ``local(s) | stride(s)`` with s = ⌊√n⌋.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import oracle_mask, oracle_random_keys

import spattn
from spattn import ir
from spattn.parse import prelude_env, presets

NS = (1, 2, 17, 64, 100)


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n)[:, None], np.arange(n)[None, :]


def positions(items: list[int], n: int) -> list[int]:
    return sorted({x % n for x in items})


def member(x: np.ndarray, pos: list[int]) -> np.ndarray:
    return np.isin(x, pos)


# --------------------------------------------------------------------------------------------
# the sources' definitions, one function per preset, each returning the (n, n) boolean mask


def longformer_ref(n: int, attention_window: int, global_positions: list[int]) -> np.ndarray:
    i, j = grid(n)
    one_sided = attention_window // 2  # LongformerSelfAttention.one_sided_attn_window_size
    g = positions(global_positions, n)
    return (np.abs(i - j) <= one_sided) | member(i, g) | member(j, g)


def bigbird_ref(n: int, w: int, global_positions: list[int], r: int, seed: int) -> np.ndarray:
    i, j = grid(n)
    g = positions(global_positions, n)
    m = (np.abs(i - j) <= w) | member(i, g) | member(j, g)
    for row in range(n):
        m[row, oracle_random_keys(n, r, seed, row)] = True
    return m


def strided_ref(n: int, l: int) -> np.ndarray:
    i, j = grid(n)
    a1 = (j >= np.maximum(0, i - l)) & (j <= i)  # {t, t + 1, ..., i}, t = max(0, i - l)
    a2 = (j <= i) & ((i - j) % l == 0)
    return a1 | a2


def fixed_causal_ref(n: int, l: int, c: int) -> np.ndarray:
    i, j = grid(n)
    a1 = j // l == i // l
    a2 = np.isin(j % l, list(range(l - c, l)))  # {t, ..., l} with t = l - c; j mod l < l
    return (a1 | a2) & (j <= i)


def streaming_ref(n: int, start_size: int, recent_size: int) -> np.ndarray:
    """StartRecentKVCache as eval_long_ppl.py drives it: feed token i, attend the cache plus
    itself, then cut the cache to the first start_size and the last recent_size positions."""
    m = np.zeros((n, n), bool)
    cache: list[int] = []
    for i in range(n):
        cache.append(i)
        m[i, cache] = True
        if len(cache) > start_size + recent_size:
            cache = cache[:start_size] + cache[len(cache) - recent_size:]
    return m


def sliding_ref(n: int, W: int) -> np.ndarray:
    i, j = grid(n)
    return (j > i - W) & (j <= i)  # transformers: sliding_window_overlay & causal_mask_function


def chunked_causal_ref(n: int, b: int) -> np.ndarray:
    i, j = grid(n)
    return (j // b == i // b) & (j <= i)


def dilated_local_ref(n: int, w: int, d: int, l: int) -> np.ndarray:
    i, j = grid(n)
    dist = np.abs(i - j)
    return ((dist <= w * d) & (dist % d == 0)) | (dist <= l)


def sqrt_strided_ref(n: int) -> np.ndarray:
    i, j = grid(n)
    s = math.isqrt(n)
    return (np.abs(i - j) <= s) | ((i - j) % s == 0)


# --------------------------------------------------------------------------------------------
# (preset text, reference) per shipped preset

CASES: dict[str, list[tuple[str, object]]] = {
    "longformer": [
        ("longformer(2, [0])", lambda n: longformer_ref(n, 4, [0])),
        ("longformer(3, [0, -1])", lambda n: longformer_ref(n, 6, [0, -1])),
        ("longformer(8 // 2, [0])", lambda n: longformer_ref(n, 8, [0])),
    ],
    "bigbird": [
        ("bigbird(2, [0, -1], 3)", lambda n: bigbird_ref(n, 2, [0, -1], 3, 0)),
        ("bigbird(1, [0], 2, seed=7)", lambda n: bigbird_ref(n, 1, [0], 2, 7)),
    ],
    "strided": [(f"strided({l})", lambda n, l=l: strided_ref(n, l)) for l in (1, 3, 8)],
    "fixed_causal": [(f"fixed_causal({l}, {c})", lambda n, l=l, c=c: fixed_causal_ref(n, l, c))
                     for l, c in ((4, 1), (8, 3), (5, 5))],
    "streaming": [(f"streaming({k}, {w})", lambda n, k=k, w=w: streaming_ref(n, k, w))
                  for k, w in ((1, 2), (4, 8), (0, 5), (3, 0))],
    "sliding": [(f"sliding({W})", lambda n, W=W: sliding_ref(n, W)) for W in (1, 2, 5, 16)],
    "chunked_causal": [(f"chunked_causal({b})", lambda n, b=b: chunked_causal_ref(n, b))
                       for b in (1, 4, 16)],
    "dilated_local": [
        ("dilated_local(2, 3, 1)", lambda n: dilated_local_ref(n, 2, 3, 1)),
        ("dilated_local(4, 2, 0)", lambda n: dilated_local_ref(n, 4, 2, 0)),
    ],
    "sqrt_strided": [("sqrt_strided", sqrt_strided_ref)],
}


def shipped_names() -> set[str]:
    env = prelude_env()
    return set(presets()) | {k for k, v in env.values.items() if isinstance(v, ir.Node)}


def test_every_shipped_preset_has_a_reference():
    assert shipped_names() == set(CASES), "a shipped preset without a reference definition here"


PARAMS = [(text, ref, n) for cases in CASES.values() for text, ref in cases for n in NS]


@pytest.mark.parametrize("text, ref, n", PARAMS, ids=[f"{t}@{n}" for t, _, n in PARAMS])
def test_preset_matches_its_source(text, ref, n):
    want = ref(n)
    p = spattn.compile(text)
    got = p.to_dense(n)
    assert got.shape == (n, n)
    bad = np.argwhere(got != want)
    assert not len(bad), (f"{text} at n = {n}: {len(bad)} pairs differ, first (i, j) = "
                          f"{tuple(bad[0])}: spattn {bool(got[tuple(bad[0])])}")
    # and the independent per-pair oracle agrees with both
    assert np.array_equal(oracle_mask(text, n, raw=True), want)
    assert p.nnz(n) == int(want.sum())


@pytest.mark.parametrize("W", [1, 2, 3, 7, 32])
def test_sliding_has_exactly_W_keys_including_the_token(W):
    n = 100
    m = spattn.compile(f"sliding({W})").to_dense(n)
    for i in range(n):
        keys = np.flatnonzero(m[i]).tolist()
        if i >= W - 1:
            assert keys == list(range(i - W + 1, i + 1)), (W, i, keys)
        else:
            assert keys == list(range(i + 1)), (W, i, keys)
    assert spattn.compile(f"sliding({W})") == spattn.compile(f"window({W - 1}, 0)")


def test_sliding_zero_is_an_error():
    with pytest.raises(spattn.SpattnError, match="sliding"):
        spattn.compile("sliding(0)").nnz(8)


def test_streaming_keeps_start_plus_recent_keys_in_the_cache():
    # the KV cache figure counts the keys a decoding step needs, the new token included:
    # StartRecentKVCache holds start_size + recent_size between steps, plus the incoming one
    s = spattn.compile("streaming(4, 256)").stats(1000).to_dict()
    assert s["kv_cache"] == 4 + 256 + 1
    assert s["row_degree"]["max"] == 4 + 256 + 1


def test_longformer_translation_from_attention_window():
    # transformers' LongformerConfig(attention_window=512): 256 each side
    n = 1200
    attention_window = 512
    p = spattn.compile(f"longformer({attention_window // 2}, [0])")
    row = np.flatnonzero(p.to_dense(n)[600])
    assert row.tolist() == [0] + list(range(600 - 256, 600 + 257))


# --------------------------------------------------------------------------------------------
# transformers' own mask definitions (optional dependency)


def _hf_mask(fn, n: int) -> np.ndarray:
    import torch

    q = torch.arange(n)[:, None]
    kv = torch.arange(n)[None, :]
    b = torch.zeros((), dtype=torch.long)
    out = fn(b, b, q, kv)
    return np.broadcast_to(out.numpy(), (n, n)).astype(bool)


@pytest.mark.parametrize("W", [1, 2, 5, 16, 4096])
def test_sliding_matches_transformers_sliding_window(W):
    pytest.importorskip("transformers")
    mu = pytest.importorskip("transformers.masking_utils")
    if not hasattr(mu, "sliding_window_causal_mask_function"):
        pytest.skip("this transformers has no masking_utils.sliding_window_causal_mask_function")
    for n in NS:
        want = _hf_mask(mu.sliding_window_causal_mask_function(W), n)
        got = spattn.compile(f"sliding({W})").to_dense(n)
        assert np.array_equal(got, want), (W, n)


@pytest.mark.parametrize("b", [1, 4, 16])
def test_chunked_causal_matches_transformers_chunked_attention(b):
    pytest.importorskip("transformers")
    mu = pytest.importorskip("transformers.masking_utils")
    if not hasattr(mu, "chunked_causal_mask_function"):
        pytest.skip("this transformers has no masking_utils.chunked_causal_mask_function")
    import inspect

    import torch

    fn = mu.chunked_causal_mask_function
    if "left_padding" in inspect.signature(fn).parameters:
        mask_fn = fn(b, torch.zeros(1, dtype=torch.long))
    else:
        mask_fn = fn(b)
    for n in NS:
        want = _hf_mask(mask_fn, n)
        got = spattn.compile(f"chunked_causal({b})").to_dense(n)
        assert np.array_equal(got, want), (b, n)
