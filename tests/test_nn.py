"""spattn.nn.SparseAttention and the encoder modules.

References: torch.nn.MultiheadAttention (same weights; with pattern `full` the outputs must
match, including key padding), and an independent float64 computation of multi-head attention
with the oracle masks of tests/reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import dense_attention, oracle_mask

import spattn
from spattn import backends
from spattn.config import loads
from spattn.nn import SparseAttention, SparseEncoder, SparseEncoderLayer

E, H = 16, 4


def reference_mha(mod: SparseAttention, x: torch.Tensor, masks: list[np.ndarray]) -> torch.Tensor:
    """Float64 multi-head attention with the module's weights and one oracle mask per head;
    x: (B, L, E) (no padding)."""
    B, L, _ = x.shape
    W, b = mod.in_proj_weight.double(), mod.in_proj_bias.double()
    qkv = x.double() @ W.T + b
    q, k, v = (t.reshape(B, L, H, E // H).transpose(1, 2) for t in qkv.chunk(3, -1))
    o = dense_attention(q, k, v, masks).transpose(1, 2).reshape(B, L, E)
    return o @ mod.out_proj.weight.double().T + mod.out_proj.bias.double()


class RefBackend:
    """A stub backend computing dense masked attention from the oracle masks (float64)."""

    name = "nnref"
    calls = 0

    def is_available(self) -> bool:
        return True

    def supports(self, q) -> bool:
        return q.device.type == "cpu"

    def attention(self, q, k, v, patterns, scale):
        RefBackend.calls += 1
        n = k.shape[2]
        masks = [oracle_mask(p, n) for p in patterns]
        return dense_attention(q, k, v, masks, scale).to(q.dtype)


@pytest.fixture(params=["nnref", "cpu"])
def backend(request):
    if request.param == "nnref":
        backends.register("nnref", RefBackend())
        yield "nnref"
        backends.unregister("nnref")
    else:
        if "cpu" not in backends.available():
            pytest.skip("cpu backend not importable")
        yield "cpu"


def test_matches_multihead_attention_with_full_pattern(backend):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    mod = SparseAttention(E, H, "full", backend=backend, dtype=torch.float64)
    mod.load_state_dict(mha.state_dict())
    x = torch.randn(3, 11, E, dtype=torch.float64)
    ref, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(mod(x), ref)


@pytest.mark.parametrize("pattern", [
    "local(2) | global([0, -1])",
    "strided(3)",
    ["local(1)", "causal", "stride(4) | sink(1)", "random(3, seed=2)"],
])
def test_matches_oracle_masked_reference(backend, pattern):
    torch.manual_seed(1)
    mod = SparseAttention(E, H, pattern, backend=backend, dtype=torch.float64)
    with torch.no_grad():
        mod.in_proj_bias.normal_()
        mod.out_proj.bias.normal_()
    L = 13
    pats = [pattern] * H if isinstance(pattern, str) else pattern
    x = torch.randn(2, L, E, dtype=torch.float64)
    torch.testing.assert_close(mod(x), reference_mha(mod, x, [oracle_mask(p, L) for p in pats]))


def test_key_padding_equals_unpadded_sequences(backend):
    """Each sequence is processed exactly as if its padding were absent: compare against the
    oracle reference run on each real (unpadded) sequence alone; padded outputs are zero."""
    torch.manual_seed(2)
    pattern = "local(2) | global([0, -1]) | stride(n // 3)"
    mod = SparseAttention(E, H, pattern, backend=backend, dtype=torch.float64)
    L = 12
    x = torch.randn(4, L, E, dtype=torch.float64)
    pad = torch.zeros(4, L, dtype=torch.bool)
    pad[0, 9:] = True          # right padding
    pad[1, :4] = True          # left padding
    pad[2, [1, 5, 6]] = True   # holes
    pad[3, :] = True           # all padding
    y = mod(x, key_padding_mask=pad)
    assert y.shape == x.shape
    for b in range(3):
        keep = (~pad[b]).nonzero().squeeze(1)
        xs = x[b:b + 1, keep]
        n = len(keep)
        ref = reference_mha(mod, xs, [oracle_mask(pattern, n)] * H)
        torch.testing.assert_close(y[b, keep], ref[0])
        assert torch.all(y[b, pad[b]] == 0)
    assert torch.all(y[3] == 0)
    # an all-False mask is the unmasked computation
    torch.testing.assert_close(mod(x, key_padding_mask=torch.zeros_like(pad)), mod(x))


def test_key_padding_matches_multihead_attention(backend):
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    mod = SparseAttention(E, H, "full", backend=backend, dtype=torch.float64)
    mod.load_state_dict(mha.state_dict())
    x = torch.randn(3, 10, E, dtype=torch.float64)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[0, 7:] = True
    pad[2, [0, 3]] = True
    ref, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)
    y = mod(x, key_padding_mask=pad)
    torch.testing.assert_close(y[~pad], ref[~pad])


def test_gradients_flow_through_padding(backend):
    torch.manual_seed(4)
    mod = SparseAttention(E, H, "local(3)", backend=backend, dtype=torch.float64)
    x = torch.randn(2, 9, E, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    mod(x, key_padding_mask=pad).square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[1, 6:] == 0)
    assert mod.in_proj_weight.grad is not None and torch.isfinite(mod.in_proj_weight.grad).all()


def test_batch_first_false_and_unbatched(backend):
    torch.manual_seed(5)
    mod = SparseAttention(E, H, "local(2)", backend=backend, dtype=torch.float64)
    x = torch.randn(2, 7, E, dtype=torch.float64)
    y = mod(x)
    mod_t = SparseAttention(E, H, "local(2)", backend=backend, batch_first=False,
                            dtype=torch.float64)
    mod_t.load_state_dict(mod.state_dict())
    torch.testing.assert_close(mod_t(x.transpose(0, 1)).transpose(0, 1), y)
    torch.testing.assert_close(mod(x[0]), y[0])


def test_repr_names_auto_backend_and_patterns():
    mod = SparseAttention(8, 2, ["local(1)", "causal"])
    r = repr(mod)
    assert "backend='auto' -> 'cpu'" in r and "heads 0: 'local(1)'" in r
    assert "heads 1: 'causal'" in r and mod.resolved_backend == "cpu"
    shared = SparseAttention(8, 2, "local(1)", backend="cpu")
    assert "pattern='local(1)'" in repr(shared) and "backend='cpu'" in repr(shared)
    assert shared.pattern == spattn.compile("local(1)")


def test_from_config_and_encoder(tmp_path, backend):
    path = tmp_path / "m.yaml"
    path.write_text(
        "patterns:\n  a: local(1)\n  b: a | global([0])\n"
        "model:\n  num_layers: 2\n  num_heads: 2\n  embed_dim: 8\n  pattern: a\n"
        "  layers:\n    - {layers: 1, heads: 1, pattern: b}\n")
    cfg = spattn.load(path)
    mod = SparseAttention.from_config(cfg, 1, backend=backend)
    assert mod.patterns == cfg.layer_patterns(1) and mod.embed_dim == 8
    assert SparseAttention.from_config(str(path), 0, embed_dim=16).embed_dim == 16
    enc = SparseEncoder.from_config(cfg, backend=backend, dtype=torch.float64)
    assert len(enc.layers) == 2
    assert enc.layers[1].attn.patterns == cfg.layer_patterns(1)
    y = enc(torch.randn(2, 6, 8, dtype=torch.float64),
            key_padding_mask=torch.tensor([[False] * 6, [False] * 4 + [True] * 2]))
    assert y.shape == (2, 6, 8) and torch.isfinite(y).all()
    layer = SparseEncoderLayer(8, 2, "local(1)", 16, backend=backend)
    assert layer(torch.randn(1, 5, 8)).shape == (1, 5, 8)


def test_from_config_needs_embed_dim():
    cfg = loads("model: {num_layers: 1, num_heads: 2, pattern: full}\n")
    with pytest.raises(spattn.ConfigError, match="embed_dim"):
        SparseAttention.from_config(cfg, 0)
    with pytest.raises(spattn.ConfigError, match="out of range"):
        SparseAttention.from_config(cfg, 1, embed_dim=8)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(embed_dim=10, num_heads=4, pattern="full"), "not divisible"),
    (dict(embed_dim=0, num_heads=4, pattern="full"), "embed_dim must be a positive integer"),
    (dict(embed_dim=8, num_heads=2, pattern="full", dropout=0.1), "dropout"),
    (dict(embed_dim=8, num_heads=2, pattern="lcal(3)"), "did you mean 'local'"),
    (dict(embed_dim=8, num_heads=2, pattern=["full"] * 3), "3 per-head patterns"),
    (dict(embed_dim=8, num_heads=2, pattern="full", backend="no such"), "backend"),
])
def test_constructor_errors(kwargs, needle):
    with pytest.raises(spattn.SpattnError, match=needle):
        SparseAttention(**kwargs)


def test_forward_errors():
    mod = SparseAttention(8, 2, "full")
    with pytest.raises(spattn.ShapeError, match=r"\(2, 5, 7\)"):
        mod(torch.randn(2, 5, 7))
    with pytest.raises(spattn.ShapeError, match="bool"):
        mod(torch.randn(2, 5, 8), key_padding_mask=torch.zeros(2, 5))
    with pytest.raises(spattn.ShapeError, match=r"\(2, 4\)"):
        mod(torch.randn(2, 5, 8), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(spattn.ShapeError, match="float64"):
        mod(torch.randn(2, 5, 8, dtype=torch.float64))
    with pytest.raises(spattn.ShapeError, match="floating"):
        mod(torch.ones(2, 5, 8, dtype=torch.long))
    with pytest.raises(spattn.ShapeError, match="Tensor"):
        mod([[0.0] * 8])
    with pytest.raises(spattn.SpattnError, match="unknown backend 'nope'"):
        SparseAttention(8, 2, "full", backend="nope")(torch.randn(1, 3, 8))
