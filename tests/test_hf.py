"""spattn inside transformers models (SPEC section 6), on tiny random-init models built here.

References: the model's own ``sdpa`` and ``eager`` attention (pattern ``causal`` must equal
them: logits, gradients, greedy tokens, with padding and every cache type), a dense float64
masked softmax from the test oracle (per-layer patterns), and recomputation without a cache
(PatternCache generation). float64 throughout where tokens are compared, so that greedy ties
cannot flip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spattn

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("spattn.hf")

from reference import oracle_mask  # noqa: E402
from transformers import AttentionInterface  # noqa: E402

V = 97  # vocabulary


def tiny(config_cls, model_cls, seed=0, **kw):
    """A tiny random-init float64 causal LM: 2 layers, 4 query heads, 2 key/value heads
    unless ``kw`` says otherwise."""
    torch.manual_seed(seed)
    cfg = config_cls(**{"vocab_size": V, "hidden_size": 64, "intermediate_size": 96,
                        "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "max_position_embeddings": 1024, **kw})
    return model_cls(cfg).double().eval()


def llama(layers=2, heads=4, kv_heads=2, seed=0):
    return tiny(transformers.LlamaConfig, transformers.LlamaForCausalLM, seed,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads)


def mistral(window=6, seed=0):
    return tiny(transformers.MistralConfig, transformers.MistralForCausalLM, seed,
                sliding_window=window)


def qwen2(seed=0):
    return tiny(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, seed,
                num_hidden_layers=3, num_key_value_heads=1, use_sliding_window=True,
                sliding_window=5, max_window_layers=1)


def gemma3(seed=0):
    return tiny(transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, seed,
                num_hidden_layers=3, head_dim=16, sliding_window=5,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"])


_LLAMA = llama()  # shared by the hypothesis test (switched to spattn in each example)
MODELS = {"llama": llama, "mistral": mistral, "qwen2": qwen2, "gemma3": gemma3}


def ids(B=2, n=19, seed=1):
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


def left_pad(B, n, pads):
    am = torch.ones(B, n, dtype=torch.long)
    for b, p in enumerate(pads):
        am[b, :p] = 0
    return am


def logits(model, impl, x, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(x, **kw).logits


def with_spattn(model, pattern, x, **kw):
    hf.use(model, pattern)
    with torch.no_grad():
        return model(x, **kw).logits


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("n", [1, 7, 23])
def test_causal_equals_sdpa_and_eager(name, n):
    model = MODELS[name]()
    x = ids(2, n)
    got = with_spattn(model, "causal", x)
    # eager runs its softmax in float32 even for a float64 model: float32 precision there
    for impl, tol in (("sdpa", 1e-12), ("eager", 1e-6)):
        ref = logits(model, impl, x)
        assert (got - ref).abs().max().item() < tol, impl


@pytest.mark.parametrize("name", list(MODELS))
def test_left_and_right_padding_equal_sdpa(name):
    model = MODELS[name]()
    x = ids(3, 17)
    am = left_pad(3, 17, [0, 4, 11])
    ref = logits(model, "sdpa", x, attention_mask=am)
    got = with_spattn(model, "causal", x, attention_mask=am)
    real = am.bool()
    assert (got - ref)[real].abs().max().item() < 1e-12
    am = torch.ones(3, 17, dtype=torch.long)
    am[1, 12:] = 0
    am[2, 3:] = 0
    ref = logits(model, "sdpa", x, attention_mask=am)
    got = with_spattn(model, "causal", x, attention_mask=am)
    assert (got - ref)[am.bool()].abs().max().item() < 1e-12


def test_positions_count_from_first_real_token():
    """A left-padded row gives the same logits as the unpadded sequence alone, for a pattern
    with absolute positions (sinks)."""
    model = llama()
    x = ids(1, 15)
    pat = "streaming(2, 4) | global([5])"
    alone = with_spattn(model, pat, x)
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), x], 1)
    am = left_pad(1, 21, [6])
    pos = (am.cumsum(-1) - 1).clamp(min=0)  # as generate() makes them: RoPE sees 0, 1, ...
    got = with_spattn(model, pat, padded, attention_mask=am, position_ids=pos)
    assert (got[:, 6:] - alone).abs().max().item() < 1e-12


def test_gqa_keys_are_not_copied(monkeypatch):
    model = llama(heads=4, kv_heads=1)
    seen = []
    real = spattn.attention

    def spy(q, k, v, pattern, **kw):
        seen.append((q.shape[1], k.shape[1]))
        return real(q, k, v, pattern, **kw)

    monkeypatch.setattr(spattn.api, "attention", spy)
    ref = logits(model, "sdpa", ids(1, 9))
    got = with_spattn(model, "causal", ids(1, 9))
    assert seen and all(s == (4, 1) for s in seen)
    assert (got - ref).abs().max().item() < 1e-12


def test_training_gradients_equal_sdpa():
    model = llama()
    model.train()
    x = ids(2, 13)
    am = left_pad(2, 13, [0, 3])
    grads = {}
    for impl in ("sdpa", "spattn"):
        model.zero_grad()
        if impl == "spattn":
            hf.use(model, "causal")
        else:
            model.set_attn_implementation(impl)
        out = model(x, attention_mask=am, labels=x.masked_fill(am == 0, -100))
        out.loss.backward()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["sdpa"], grads["spattn"]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "gemma3"])
def test_left_padded_generate_equals_sdpa(name):
    model = MODELS[name]()
    x = ids(3, 9)
    am = left_pad(3, 9, [0, 2, 5])
    kw = dict(attention_mask=am, max_new_tokens=14, do_sample=False)
    model.set_attn_implementation("sdpa")
    ref = model.generate(x, **kw)
    hf.use(model, "causal")
    assert torch.equal(model.generate(x, **kw), ref)


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_static_cache_generate_equals_sdpa(name):
    model = MODELS[name]()
    x = ids(2, 7)
    am = left_pad(2, 7, [0, 3])
    kw = dict(attention_mask=am, max_new_tokens=12, do_sample=False,
              cache_implementation="static")
    model.set_attn_implementation("sdpa")
    ref = model.generate(x, **kw)
    hf.use(model, "causal")
    assert torch.equal(model.generate(x, **kw), ref)


def greedy_recompute(model, x, steps, am=None):
    """Greedy decoding by running the whole sequence every step (no cache)."""
    out = x
    for _ in range(steps):
        with torch.no_grad():
            kw = {} if am is None else {"attention_mask": am}
            nxt = model(out, use_cache=False, **kw).logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        if am is not None:
            am = torch.cat([am, torch.ones_like(nxt)], 1)
    return out


def test_sinks_with_the_models_sliding_cache_equal_recomputation():
    """Mistral's own sliding cache drops keys; positions stay right (issue: sinks shifted)."""
    model = mistral(window=6)
    hf.use(model, "streaming(2, 7)")
    x = ids(1, 5)
    ref = greedy_recompute(model, x, 15)
    got = model.generate(x, max_new_tokens=15, do_sample=False)
    assert torch.equal(got, ref)


def test_pattern_cache_300_tokens_equal_recomputation_and_bounded():
    model = llama()
    hf.use(model, "streaming(4, 16)")
    x = ids(1, 6)
    cache = hf.PatternCache(model)
    got = model.generate(x, max_new_tokens=300, do_sample=False, min_new_tokens=300,
                         cache=cache)
    assert got.shape[1] == 306
    assert cache.get_seq_length() == 305
    assert all(h <= 4 + 17 for h in cache.held)
    one_layer = 128 * 2 * 16 * 8 * 2  # one 128-slot arena: H_kv=2, D=16, float64, k and v
    assert cache.nbytes <= 2 * one_layer
    ref = greedy_recompute(model, x, 300)
    assert torch.equal(got, ref)


def test_pattern_cache_left_padded_batch_and_sampling():
    model = llama()
    hf.use(model, "streaming(2, 8)")
    x = ids(3, 8)
    am = left_pad(3, 8, [0, 3, 3])
    kw = dict(attention_mask=am, max_new_tokens=30, do_sample=False)
    ref = model.generate(x, **kw)  # the default DynamicCache
    cache = hf.PatternCache(model)
    assert torch.equal(model.generate(x, cache=cache, **kw), ref)
    assert [len(layer.groups) for layer in cache.layers] == [2, 2]
    kw.update(do_sample=True, top_k=5)
    torch.manual_seed(3)
    ref = model.generate(x, **kw)
    torch.manual_seed(3)
    assert torch.equal(model.generate(x, cache=hf.PatternCache(model), **kw), ref)


def test_pattern_cache_beam_search_reorders():
    model = llama()
    hf.use(model, "streaming(2, 6)")
    x = ids(2, 6)
    am = left_pad(2, 6, [0, 2])
    kw = dict(attention_mask=am, max_new_tokens=10, do_sample=False, num_beams=3,
              num_return_sequences=2)
    ref = model.generate(x, **kw)
    assert torch.equal(model.generate(x, cache=hf.PatternCache(model), **kw), ref)


def test_pattern_cache_with_sliding_model_is_bounded_by_the_window():
    model = mistral(window=6)
    hf.use(model, "causal")
    x = ids(1, 4)
    model.set_attn_implementation("sdpa")
    ref = model.generate(x, max_new_tokens=40, do_sample=False)
    hf.use(model, "causal")
    cache = hf.PatternCache(model)
    assert torch.equal(model.generate(x, max_new_tokens=40, do_sample=False,
                                      cache=cache), ref)
    assert max(cache.held) <= 6


# -- per-layer patterns against a dense float64 reference written here

def _dense_reference(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Float64 masked softmax with the oracle's mask of the layer's pattern & causal."""
    B, H, n, D = query.shape
    g = H // key.shape[1]
    k = key.repeat_interleave(g, 1)
    v = value.repeat_interleave(g, 1)
    out = torch.zeros_like(query)
    spec = module.dense_pattern
    for h in range(H):
        p = spec[h] if isinstance(spec, (list, tuple)) else spec
        mk = torch.from_numpy(oracle_mask(f"({p}) & causal", n))
        s = (query[:, h] @ k[:, h].transpose(-1, -2)) * scaling
        s = s.masked_fill(~mk, float("-inf"))
        out[:, h] = torch.nan_to_num(torch.softmax(s, -1), nan=0.0) @ v[:, h]
    return out.transpose(1, 2).contiguous(), None


def test_per_layer_patterns_equal_dense_reference():
    AttentionInterface.register("dense_reference", _dense_reference)
    model = llama(layers=3)
    per = ["local(3) | global([0])", ["sink(1) | window(2, 0)", "stride(3)", "causal",
                                     "block(4)"], "strided(4)"]
    for mod in model.modules():
        if hasattr(mod, "layer_idx"):
            mod.dense_pattern = per[mod.layer_idx]
    x = ids(2, 21)
    ref = logits(model, "dense_reference", x)
    got = with_spattn(model, per, x)
    assert (got - ref).abs().max().item() < 1e-11
    got = with_spattn(model, {0: per[0], 1: per[1], 2: per[2]}, x)
    assert (got - ref).abs().max().item() < 1e-11


def test_config_and_layer_types(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("patterns:\n  a: local(2)\n  b: stride(3)\nmodel:\n  num_layers: 3\n"
                 "  num_heads: 4\n  pattern: a\n  layers:\n    - {layers: 2, heads: '0-1', "
                 "pattern: b}\n")
    model = gemma3()
    hf.use(model, spattn.load(f))
    mods = {m.layer_idx: m.spattn_pattern for m in model.modules() if hasattr(m, "layer_idx")}
    assert mods[0] == spattn.compile("local(2)")
    assert mods[2] == tuple(spattn.compile(t) for t in ["stride(3)"] * 2 + ["local(2)"] * 2)
    x = ids(1, 12)
    ref = with_spattn(model, ["local(1)", "local(1)", "causal"], x)
    got = with_spattn(model, {"sliding_attention": "local(1)"}, x)
    assert (got - ref).abs().max().item() == 0.0
    with pytest.raises(spattn.SpattnError, match="not among the model's layer types"):
        hf.use(model, {"chunked_attention": "causal"})


# -- errors


def test_errors():
    model = llama()
    with pytest.raises(spattn.SpattnError, match="2 layers"):
        hf.use(model, ["causal"] * 3)
    with pytest.raises(spattn.SpattnError, match="layer 5"):
        hf.use(model, {5: "causal"})
    with pytest.raises(spattn.SpattnError, match="loca"):
        hf.use(model, "loca(3)")
    with pytest.raises(spattn.SpattnError, match="use.model"):
        hf.PatternCache(model)
    hf.use(model, "causal")
    with pytest.raises(spattn.SpattnError, match="output_attentions"):
        model(ids(1, 5), output_attentions=True)
    for mod in model.modules():
        if hasattr(mod, "attention_dropout"):
            mod.attention_dropout = 0.1
    model.train()
    with pytest.raises(spattn.SpattnError, match="dropout"):
        model(ids(1, 5))
    model.eval()  # no dropout in evaluation
    with pytest.raises(spattn.SpattnError, match="4-D"):
        model(ids(1, 5), attention_mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))


def test_right_padded_generation_is_refused():
    model = llama()
    hf.use(model, "causal")
    am = torch.ones(2, 6, dtype=torch.long)
    am[1, 4:] = 0
    with pytest.raises(spattn.SpattnError, match="padding between real tokens"):
        model.generate(ids(2, 6), attention_mask=am, max_new_tokens=3, do_sample=False)


def test_pattern_cache_cannot_crop():
    model = llama()
    hf.use(model, "streaming(1, 4)")
    cache = hf.PatternCache(model)
    with torch.no_grad():
        model(ids(1, 6), cache=cache)
    cache.crop(0)
    with pytest.raises(spattn.SpattnError, match="cropped"):
        cache.crop(-2)


def test_unsupported_mask_structure_is_refused():
    """A mask spattn does not reproduce (here chunked attention: blocks the position ids do
    not describe) is an error, not a silent difference."""
    from transformers.masking_utils import chunked_causal_mask_function

    from spattn.hf_mask import mask_function

    mf = chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long))
    mask = mask_function(1, 10, 10, mask_function=mf)
    assert mask.documents == ((4, 4, 2),)
    with pytest.raises(spattn.SpattnError, match="blocks of lengths"):
        mask.check_positions(torch.arange(10)[None], "here")


# -- packed sequences (transformers' DataCollatorWithFlattening)

DOCS = [5, 1, 7, 2, 3]  # a length-1 document and primes: 18 tokens


def packed(lengths=DOCS, seed=5):
    """Documents of ``lengths`` and the batch the real collator makes of them."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, V, (n,), generator=g) for n in lengths]
    batch = transformers.DataCollatorWithFlattening()(
        [{"input_ids": d.tolist(), "labels": d.tolist()} for d in docs])
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"].tolist() == [[i for n in lengths for i in range(n)]]
    return docs, batch


def forward_packed(model, batch, **kw):
    return model(batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                 **kw).logits


def each_alone(model, docs):
    return torch.cat([model(d[None]).logits for d in docs], 1)


@pytest.mark.parametrize("name,pattern,dtype", [
    ("llama", "causal", torch.float64),
    ("llama", "local(3) | global([0,-1])", torch.float64),
    ("llama", "local(3) | global([0,-1])", torch.float32),
    ("qwen2", "local(3) | global([0,-1])", torch.float64),  # sliding and full layers
    ("mistral", "streaming(1, 2) | global([-1])", torch.float64),  # a window of 6 < 7
])
def test_packed_batch_equals_each_document_alone(name, pattern, dtype):
    """No attention across documents; each document gets the pattern at its own length,
    positions from its first token (global([-1]) is each document's last token)."""
    model = MODELS[name]().to(dtype)
    docs, batch = packed()
    hf.use(model, pattern)
    with torch.no_grad():
        got, ref = forward_packed(model, batch), each_alone(model, docs)
    assert (got - ref).abs().max().item() < (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_packed_causal_equals_the_models_own_packing(name):
    model = MODELS[name]()
    docs, batch = packed()
    hf.use(model, "causal")
    with torch.no_grad():
        got = forward_packed(model, batch)
        for impl, tol in (("sdpa", 1e-12), ("eager", 1e-6)):
            model.set_attn_implementation(impl)
            assert (got - forward_packed(model, batch)).abs().max().item() < tol, impl


def test_packed_training_gradients_equal_the_sum_over_documents():
    model = llama()
    model.train()
    hf.use(model, "local(3) | global([0,-1])")
    docs, batch = packed()
    ce = torch.nn.functional.cross_entropy
    grads = []
    for run in ("packed", "alone"):
        model.zero_grad()
        if run == "packed":  # the collator's labels: -100 at each document's first token
            loss = ce(forward_packed(model, batch)[0, :-1], batch["labels"][0, 1:],
                      ignore_index=-100, reduction="sum")
        else:
            loss = sum(ce(model(d[None]).logits[0, :-1], d[1:], reduction="sum")
                       for d in docs)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_packed_rows_with_different_layouts_are_grouped(monkeypatch):
    """B > 1 packed rows: rows with the same document layout share one call."""
    model = llama()
    layouts = [[4, 5], [9], [4, 5], [2, 1, 6]]
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, V, (4, 9), generator=g)
    pos = torch.tensor([[i for n in lay for i in range(n)] for lay in layouts])
    calls = []
    real = spattn.attention

    def spy(q, k, v, pattern, **kw):
        calls.append((q.shape[0], kw.get("documents")))
        return real(q, k, v, pattern, **kw)

    hf.use(model, "local(2) | global([-1])")
    monkeypatch.setattr(spattn.api, "attention", spy)
    with torch.no_grad():
        got = model(x, position_ids=pos, use_cache=False).logits
    assert sorted(calls[:3], key=str) == sorted([(2, [4, 5]), (1, None), (1, [2, 1, 6])],
                                                key=str)
    monkeypatch.setattr(spattn.api, "attention", real)
    with torch.no_grad():
        for b, lay in enumerate(layouts):
            ends = np.cumsum([0] + lay)
            ref = torch.cat([model(x[b:b + 1, a:e]).logits for a, e in zip(ends, ends[1:])], 1)
            assert (got[b:b + 1] - ref).abs().max().item() < 1e-12


def test_packed_with_a_cache_is_refused():
    """transformers does not separate packed sequences when a cache is in use (its own sdpa
    then attends across them): spattn refuses rather than differ silently."""
    model = llama()
    hf.use(model, "causal")
    docs, batch = packed()
    kw = dict(position_ids=batch["position_ids"])
    with pytest.raises(spattn.SpattnError, match="use_cache=False"):
        model(batch["input_ids"], **kw)  # the default: use_cache=True, a DynamicCache
    with pytest.raises(spattn.SpattnError, match="use_cache=False"):
        model(batch["input_ids"], cache=hf.PatternCache(model), **kw)


def test_position_documents():
    from spattn.hf_mask import position_documents

    assert position_documents(torch.tensor([[0, 1, 2, 0, 0, 1]])) == ((3, 1, 2),)
    assert position_documents(torch.tensor([[3, 4, 5], [0, 1, 2]])) is None
    assert position_documents(torch.tensor([[0, 1, 0], [0, 1, 2]])) == ((2, 1), (3,))


def test_mask_runs_are_compact():
    from spattn.hf_mask import padding_runs

    am = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert padding_runs(am, 4) == ((2, 4), (0, 3), (0, 0))
    assert padding_runs(torch.ones(2, 9), 9) is None
    assert padding_runs(torch.ones(2, 5), 9) == ((0, 5), (0, 5))
    assert np.array_equal(np.asarray(padding_runs(am[:1], 4)), [[2, 4]])


@settings(max_examples=12, deadline=None)
@given(n=st.sampled_from([1, 2, 5, 13, 17]),
       pads=st.lists(st.integers(0, 6), min_size=1, max_size=3),
       pattern=st.sampled_from(["streaming(1, 3)", "local(2) | global([0:5:4])", "stride(3)",
                                "block(5) | sink(2)", "causal - window(1, 0)"]))
def test_padded_rows_equal_each_sequence_alone(n, pads, pattern):
    """Row b has pads[b] padding tokens on the left and the rest on the right: its logits at
    the real tokens equal those of its sequence alone (positions from the first real token;
    an empty attention row gives a zero output in both)."""
    model = _LLAMA
    B, P = len(pads), max(pads)
    x = ids(B, n, seed=n)
    padded = torch.zeros(B, n + P, dtype=torch.long)
    am = torch.zeros(B, n + P, dtype=torch.long)
    for b, p in enumerate(pads):
        padded[b, p:p + n] = x[b]
        am[b, p:p + n] = 1
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    got = with_spattn(model, pattern, padded, attention_mask=am, position_ids=pos)
    alone = with_spattn(model, pattern, x)
    for b, p in enumerate(pads):
        assert (got[b, p:p + n] - alone[b]).abs().max().item() < 1e-12


@pytest.mark.parametrize("m", [1, 3, 17, 40])
def test_held_attention_over_a_cache_that_dropped_keys(m):
    """Keys start..n-1 only (a sliding cache): equal to attention over all n keys, and an
    error when the pattern attends a dropped key."""
    g = torch.Generator().manual_seed(m)
    n, start = 61, 61 - m - 4
    q = torch.randn(2, 4, m, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64)
    pats = (spattn.compile("window(4, 0)"),) * 4
    got = hf.held_attention(q, k[:, :, start:], v[:, :, start:], pats, n, start, 0.3)
    ref = spattn.attention(q, k, v, "window(4, 0)", scale=0.3)
    assert (got - ref).abs().max().item() < 1e-12
    with pytest.raises(spattn.SpattnError, match="no longer holds key 0"):
        hf.held_attention(q, k[:, :, start:], v[:, :, start:],
                          (spattn.compile("streaming(1, 4)"),) * 4, n, start, 0.3)
