"""torch.compile: spattn's attention is one opaque operator (``spattn::attention``), so
models compile with ``fullgraph=True``, forward and backward, without tracing the lowering
and without recompiling when a pattern is lowered at a new length."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import spattn
from spattn.nn import SparseAttention
from spattn.suite import SUITE


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check(module, x, backend="aot_eager", **kw):
    ref = module(x)
    (gref,) = torch.autograd.grad(ref.sum(), x)
    counter = CompileCounterWithBackend(backend)
    cm = torch.compile(module, fullgraph=True, backend=counter, **kw)
    out = cm(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, gref, atol=1e-5, rtol=1e-5)
    return cm, counter


@pytest.mark.parametrize("name", sorted(SUITE))
def test_fullgraph_suite_forward_backward(name):
    torch.manual_seed(0)
    m = SparseAttention(16, 2, SUITE[name])
    x = torch.randn(2, 67, 16, requires_grad=True)
    _, counter = _check(m, x)
    assert counter.frame_count == 1


def test_fullgraph_per_head_patterns():
    torch.manual_seed(0)
    m = SparseAttention(24, 3, ["local(2) | global([0, -1])", "strided(8)", "random(3)"])
    _check(m, torch.randn(1, 50, 24, requires_grad=True))


def test_functional_attention_with_text_compiles_fullgraph():
    def f(q, k, v):
        return spattn.attention(q, k, v, "bigbird(2, [0], 2)") * 2

    q, k, v = (torch.randn(1, 2, 40, 8, requires_grad=True) for _ in range(3))
    counter = CompileCounterWithBackend("aot_eager")
    out = torch.compile(f, fullgraph=True, backend=counter)(q, k, v)
    torch.testing.assert_close(out, f(q, k, v))
    out.sum().backward()
    assert q.grad is not None and counter.frame_count == 1


def test_new_lengths_do_not_recompile_with_dynamic_shapes():
    """The lowering at each new length runs inside the operator: with dynamic shapes one
    compiled graph serves every length."""
    torch.manual_seed(0)
    m = SparseAttention(16, 2, "local(3) | global([0, -1])")
    counter = CompileCounterWithBackend("aot_eager")
    cm = torch.compile(m, fullgraph=True, backend=counter, dynamic=True)
    for L in (33, 47, 90):
        x = torch.randn(2, L, 16)
        torch.testing.assert_close(cm(x), m(x), atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1


def test_inductor_compiles_it_too():
    torch.manual_seed(0)
    m = SparseAttention(16, 2, SUITE["S1"])
    _check(m, torch.randn(2, 64, 16, requires_grad=True), backend="inductor")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_operator_forward_backward_matches_the_backend(backend, monkeypatch):
    """The operator torch.compile sees, called directly (for triton: under the interpreter
    without a GPU), against the backend's own differentiable call."""
    from spattn import ops

    dev = "cpu"
    if backend == "triton":
        pytest.importorskip("triton")
        if torch.cuda.is_available():
            dev = "cuda"
        else:
            monkeypatch.setenv("TRITON_INTERPRET", "1")
    texts = ["strided(8) | global([0])", "local(3)"]
    q, k, v = (torch.randn(1, 2, n, 16, device=dev, requires_grad=True) for n in (40, 64, 64))
    out = ops.attention(q, k, v, [str(spattn.compile(t)) for t in texts], 0.25, backend)
    ref = spattn.attention(q, k, v, texts, backend=backend, scale=0.25)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
