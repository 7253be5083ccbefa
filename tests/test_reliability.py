"""Regression tests of the adversarial pass (issue "Reliability II"): every case ends in a
correct result or a SpattnError, in bounded time and memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from reference import dense_attention, oracle_mask

import spattn
from spattn.suite import SUITE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _qkv(B, H, m, n, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, s, D, generator=g, dtype=dtype).requires_grad_()
                 for s in (m, n, n))


# --------------------------------------------------------------------------------------------
# 1. double backward


@pytest.mark.parametrize("name", sorted(SUITE))
def test_gradgradcheck_cpu(name):
    q, k, v = _qkv(1, 1, 6, 11, 2)
    f = lambda q, k, v: spattn.attention(q, k, v, SUITE[name], backend="cpu")  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (q, k, v), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pattern", ["local(2) | global([0])", ["causal", "rows([1, 5])"],
                                     "none | sink(1) & causal"], ids=["longformer", "per-head",
                                                                      "sink"])
def test_loss_on_gradients_matches_dense_autograd(pattern):
    """The issue's case: a loss on q.grad (create_graph=True) must see the second-order
    terms (it silently saw none: the backward was once_differentiable)."""
    n, m = 17, 11
    q, k, v = _qkv(2, 2, m, n, 4)
    pats = pattern if isinstance(pattern, list) else [pattern] * 2
    masks = [oracle_mask(p, n) for p in pats]

    def second(fn):
        out = fn(q, k, v)
        (gq,) = torch.autograd.grad((out ** 2).sum(), q, create_graph=True)
        return torch.autograd.grad((gq ** 2).sum() + (gq * q).sum(), (q, k, v))

    got = second(lambda q, k, v: spattn.attention(q, k, v, pattern))
    ref = second(lambda q, k, v: dense_attention(q, k, v, masks))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_double_backward_float32_and_hessian_vector_product():
    q, k, v = _qkv(1, 2, 16, 16, 8, dtype=torch.float32)
    out = spattn.attention(q, k, v, "strided(4)")
    gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v), create_graph=True)
    hv = torch.autograd.grad((gk * torch.ones_like(gk)).sum(), q)[0]
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0


def test_triton_refuses_double_backward(monkeypatch):
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (x.detach().to(dev, torch.float32).requires_grad_()
               for x in _qkv(1, 1, 16, 16, 16))
    out = spattn.attention(q, k, v, "local(2)", backend="triton")
    torch.autograd.grad(out.sum(), q)  # first derivatives work
    out = spattn.attention(q, k, v, "local(2)", backend="triton")
    with pytest.raises(spattn.SpattnError, match="double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


# --------------------------------------------------------------------------------------------
# 2. files that are not regular files


def test_config_refuses_devices_and_fifos(tmp_path):
    from spattn.config import load

    t = time.perf_counter()
    with pytest.raises(spattn.ConfigError, match="device"):
        load("/dev/zero")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(spattn.ConfigError, match="FIFO"):
        load(fifo)  # no writer: a plain open() would block forever
    assert time.perf_counter() - t < 5
    r = subprocess.run([sys.executable, "-m", "spattn.cli", "check", "/dev/zero"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "device" in r.stdout + r.stderr


# --------------------------------------------------------------------------------------------
# 3, 4. memory: every case in its own process, peak RSS against the budget


_PEAK = """
import resource, sys, numpy as np, torch, spattn
spattn.compile("local(1)").to_csr(64); spattn.attention(*(torch.zeros(1, 1, 8, 4),) * 3, "local(1)")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
{body}
    outcome = "ok"
except spattn.ResourceError as e:
    outcome = "ResourceError"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT", outcome, peak - base)
"""

MEMORY_CASES = {
    "full-attention-n2^20": ("q = torch.zeros(1, 1, 2**20, 4)\n"
                               "spattn.attention(q, q, q, 'full')", "ResourceError"),
    "random2000-attention-n65536": ("q = torch.zeros(1, 1, 65536, 4)\n"
                                        "spattn.attention(q, q, q, 'random(2000)')",
                                        "ResourceError"),
    "notlocal1-attention-n2^18": ("q = torch.zeros(1, 1, 2**18, 4)\n"
                                    "spattn.attention(q, q, q, '~local(1)')", "ResourceError"),
    "full-to_dense-16384": ("m = spattn.compile('full').to_dense(16384)\n"
                                "assert m.all()", "ok"),
    "rows-slice3-mask_mod-n2^28": (
        "mm = spattn.compile('rows([::3])').mask_mod(2**28)\n"
        "i = torch.tensor([0, 3, 4, 2**28 - 1])\n"
        "assert mm(0, 0, i, i).tolist() == [True, True, False, (2**28 - 1) % 3 == 0]", "ok"),
    "cols-slice2-nnz-n2^31": ("spattn.compile('cols([::2])').nnz(2**31 - 1)",
                                  "ResourceError"),
    "index-set-count-n2^31": (
        "from spattn.bind import bind\n"
        "b = bind(spattn.compile('rows([0:n:2])').node, 2**31 - 1)\n"
        "assert b.args[0].count == 2**30", "ok"),
}


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_memory_budget_bounds_peak_rss(case):
    body, want = MEMORY_CASES[case]
    budget = 512 << 20
    code = _PEAK.format(body=textwrap.indent(body, "    "))
    env = {**os.environ, "SPATTN_MEMORY_BUDGET": "512M"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    _, outcome, grew = line.split()
    assert outcome == want, (case, r.stdout)
    assert int(grew) < 2 * budget, f"{case}: peak grew by {int(grew) / 2**20:.0f} MiB"
    assert time.perf_counter() - t < 60


def test_stats_with_a_huge_index_set_is_bounded():
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "spattn.cli", "stats", "local(1) | rows([0:n:2])",
                        "-n", "2147483647", "--json"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "SPATTN_MEMORY_BUDGET": "1G"})
    assert r.returncode in (0, 2), r.stderr
    if r.returncode == 2:
        assert "spattn stats: error:" in r.stderr
    assert time.perf_counter() - t < 60


# --------------------------------------------------------------------------------------------
# 6. m = 0


def test_zero_queries_give_an_empty_output():
    q = torch.zeros(2, 3, 0, 4, requires_grad=True)
    k = torch.randn(2, 3, 5, 4, requires_grad=True)
    v = torch.randn(2, 3, 5, 4, requires_grad=True)
    out = spattn.attention(q, k, v, "local(1)")
    assert out.shape == (2, 3, 0, 4)
    gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v))
    assert gq.shape == q.shape and not gk.any() and not gv.any()


# --------------------------------------------------------------------------------------------
# 7. CLI output


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "spattn.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_show_writes_exactly_the_path_given(tmp_path):
    pytest.importorskip("matplotlib")
    r = _cli("show", "local(2)", "-n", "16", "-o", str(tmp_path / "m.xyz"))
    assert r.returncode == 2 and "unknown image format '.xyz'" in r.stderr
    assert not list(tmp_path.iterdir())
    r = _cli("show", "local(2)", "-n", "16", "-o", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "m.png").exists()
    r = _cli("show", "local(2)", "-n", "16", "-o", str(tmp_path / "m.svg"))
    assert r.returncode == 0 and (tmp_path / "m.svg").read_text().lstrip().startswith("<?xml")
    if os.path.exists("/dev/full"):
        r = _cli("show", "local(2)", "-n", "16", "-o", "/dev/full")
        assert r.returncode == 2 and "cannot write" in r.stderr
        assert not os.path.exists("/dev/full.png")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stats_to_a_full_disk_is_a_clear_error():
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "spattn.cli", "stats", "local(2)", "-n", "64",
                            "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120)
    assert r.returncode == 2 and "cannot write output" in r.stderr
    assert "Traceback" not in r.stderr


def test_explain_exits_2_on_lowering_errors():
    r = _cli("explain", "local(n - 20)", "-n", "10")
    assert r.returncode == 2 and "spattn explain: error:" in r.stderr


# --------------------------------------------------------------------------------------------
# 8. work bounded by more than the 2^32 limit


def test_intersection_of_complements_is_one_complement():
    text = " & ".join(f"~local({i})" for i in range(500))
    p = spattn.compile(text)
    assert str(p) == "~local(499)"
    t = time.perf_counter()
    assert p.nnz(100_000) == 100_000 ** 2 - spattn.compile("local(499)").nnz(100_000)
    assert time.perf_counter() - t < 5
    q = spattn.compile(" | ".join(f"~stride({s})" for s in (2, 3)))
    assert str(q) == "~stride(6)"
    n = 30
    assert np.array_equal(q.to_dense(n), oracle_mask("~stride(2) | ~stride(3)", n, raw=True))


def test_many_random_keys_are_refused_quickly():
    t = time.perf_counter()
    with pytest.raises(spattn.ResourceError, match="intervals|numpy passes"):
        spattn.compile("random(n // 2)").nnz(65536)
    with pytest.raises(spattn.ResourceError, match="numpy passes"):  # few intervals, slow draw
        spattn.compile("random(100)").nnz(2**20)
    with pytest.raises(spattn.ResourceError, match="numpy passes"):
        spattn.compile("random(2000)").mask_mod(65536)
    assert time.perf_counter() - t < 10


# --------------------------------------------------------------------------------------------
# 9. smaller misuse


def test_misuse_is_a_spattn_error_naming_the_argument():
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(spattn.SpattnError, match="requires grad"):
        spattn.attention(q, q, q, "full", scale=torch.tensor(0.5, requires_grad=True))
    for bad in (float("inf"), float("nan")):
        with pytest.raises(spattn.SpattnError, match="finite"):
            spattn.attention(q, q, q, "full", scale=bad)
    with pytest.raises(spattn.SpattnError, match="scale"):
        spattn.attention(q, q, q, "full", scale=True)
    with pytest.raises(spattn.SpattnError, match="memory budget"):
        spattn.set_memory_budget(True)
    from spattn.nn import SparseEncoder, SparseEncoderLayer

    with pytest.raises(spattn.SpattnError, match="layer_patterns"):
        SparseEncoder(8, 2, None)
    with pytest.raises(spattn.SpattnError, match="dropout"):
        SparseEncoderLayer(8, 2, "local(1)", dropout=2)
    with pytest.raises(spattn.SpattnError, match="embed_dim"):
        SparseEncoderLayer("ab", 2, "local(1)")
    sq = torch.zeros(1, 1, 4, 2).to_sparse()
    with pytest.raises(spattn.ShapeError, match="layout"):
        spattn.attention(sq, q, q, "full")


def test_torchscript_says_use_torch_compile():
    from spattn.nn import SparseAttention

    m = SparseAttention(8, 2, "local(1)")
    with pytest.raises(spattn.SpattnError, match="torch.compile"):
        torch.jit.script(m)
    with pytest.raises(Exception, match="torch.compile"):
        torch.jit.trace(m, torch.zeros(1, 4, 8))


def test_a_union_of_many_strides_is_refused_at_once():
    """7 KB of text whose lowering would generate over a billion intervals (it ran for
    minutes under the old 2^32 limit): refused before any work, with the estimate."""
    text = " & ".join(f"~stride({s})" for s in range(2, 40))
    t = time.perf_counter()
    with pytest.raises(spattn.ResourceError, match="intervals"):
        spattn.compile(text).nnz(20_000)
    assert time.perf_counter() - t < 5
