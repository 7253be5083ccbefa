"""The Triton backend against the float64 dense reference.

Without CUDA these run the same kernels on CPU tensors under ``TRITON_INTERPRET=1`` (set per
test, so it does not leak into other modules; a suite-wide setting works too). Sizes stay small
(n <= ~300) because the interpreter is slow. Tests that need a GPU skip without one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import dense_attention, oracle_mask
from strategies import sized_patterns

import spattn

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
from spattn.suite import SUITE  # noqa: E402 - the shared standard suite

TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _device():
    return "cuda" if CUDA else "cpu"


def run_case(patterns, n, m, D, dtype=torch.float32, B=1, H=2, scale=None, backward=True,
             seed=0, block=None):
    """Forward (and backward) through backend="triton" vs the float64 reference."""
    from spattn.backends.triton_gpu import sparse_attention

    if isinstance(patterns, str):
        patterns = [patterns] * H
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, m, D, generator=g)
    k = torch.randn(B, H, n, D, generator=g)
    v = torch.randn(B, H, n, D, generator=g)
    do = torch.randn(B, H, m, D, generator=g)
    dev = _device()
    qs, ks, vs = (x.to(dev, dtype).requires_grad_(backward) for x in (q, k, v))
    if block is None:
        out = spattn.attention(qs, ks, vs, patterns, backend="triton", scale=scale)
    else:
        pats = tuple(spattn.compile(p) for p in patterns)
        sc = D ** -0.5 if scale is None else scale
        out = sparse_attention(qs, ks, vs, pats, sc, block_q=block[0], block_k=block[1])
    assert out.shape == (B, H, m, D) and out.dtype == dtype
    masks = [oracle_mask(p, n) for p in patterns]
    q64, k64, v64 = (x.detach().cpu().double().requires_grad_(backward) for x in (qs, ks, vs))
    ref = dense_attention(q64, k64, v64, masks, scale)
    tol = TOL[dtype]
    o = out.detach().cpu().double()
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o, ref.detach(), atol=tol, rtol=tol)
    if backward:
        out.backward(do.to(dev, dtype))
        ref.backward(do.double())
        for name, a, b in (("dq", qs, q64), ("dk", ks, k64), ("dv", vs, v64)):
            ga = a.grad.detach().cpu().double()
            assert torch.isfinite(ga).all(), name
            torch.testing.assert_close(ga, b.grad, atol=4 * tol, rtol=4 * tol, msg=name)
    return out


@pytest.mark.parametrize("name", sorted(SUITE))
@pytest.mark.parametrize("n,m,block", [(300, 300, None), (290, 100, (32, 32))])
def test_suite_forward_backward(name, n, m, block):
    # n is not a multiple of the tile size: tails are masked in every kernel; m < n puts
    # the queries at the end (bottom-right alignment)
    run_case(SUITE[name], n=n, m=m, D=16, block=block)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(sized_patterns(sizes=[1, 37, 64, 100, 129], max_leaves=5), st.data())
def test_generated_patterns(case, data):
    n, text = case
    try:
        spattn.compile(text).nnz(n)
    except spattn.LoweringError:
        return
    m = data.draw(st.integers(1, n))
    run_case(text, n=n, m=m, D=16, H=1, block=(16, 32))


@pytest.mark.parametrize("dtype,D", [(torch.float16, 32), (torch.bfloat16, 64),
                                     (torch.float16, 128), (torch.float32, 24)])
def test_dtypes_head_dims_and_short_queries(dtype, D):
    # m < n: queries are the last m positions (bottom-right alignment)
    run_case("streaming(2, 20) | random(2, seed=5)", n=150, m=45, D=D, dtype=dtype, H=1)


def test_per_head_patterns_scale_and_block_shapes():
    pats = ["local(5) | sink(2)", "stride(7) & causal", "block(16) - rows([3:9])"]
    run_case(pats, n=130, m=130, D=16, H=3, B=2, scale=0.3, block=(16, 32))


def test_empty_rows_give_zeros_and_zero_gradients():
    text = "local(3) - rows([0:40])"
    out = run_case(text, n=100, m=100, D=16, H=1)
    assert (out[:, :, :40].detach() == 0).all()
    out = run_case("none", n=50, m=50, D=16, H=1)
    assert (out.detach() == 0).all()


def test_lse_matches_reference():
    from spattn.backends.triton_gpu import sparse_attention

    text, n, D = "(local(4) | global([0])) - rows([7])", 70, 16
    p = spattn.compile(text)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, n, D, generator=g) for _ in range(3))
    dev = _device()
    _, lse = sparse_attention(q.to(dev), k.to(dev), v.to(dev), (p,), D ** -0.5,
                              return_lse=True)
    s = (q[0, 0].double() @ k[0, 0].double().T) * D ** -0.5
    M = torch.from_numpy(oracle_mask(text, n))
    ref = torch.logsumexp(s.masked_fill(~M, -math.inf), dim=-1)
    got = lse[0, 0].cpu().double()
    assert got[7] == math.inf  # the empty row
    keep = torch.ones(n, dtype=torch.bool)
    keep[7] = False
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-4, rtol=1e-4)


def test_predicate_matches_blocks_mask():
    """The generated Triton predicate's parameters evaluate the same mask as numpy."""
    from spattn.backends.triton_codegen import generate

    from spattn.bind import bind

    for text in SUITE.values():
        node = spattn.compile(text).node
        src, prm, tab = generate(bind(node, 300), 300)
        assert "def _mask_fn" in src
        assert prm.dtype == np.int32 and tab.dtype == np.int32
        # the code depends on the structure only: the same source at another n
        assert generate(bind(node, 1000), 1000)[0] == src


def test_backend_availability(monkeypatch):
    from spattn import backends

    b = backends.get("triton")
    assert b.is_available()
    assert b.supports(torch.zeros(1, 1, 1, 16, device=_device()))
    assert not b.supports(torch.zeros(1, 1, 1, 16, dtype=torch.float64, device=_device()))
    if not CUDA:
        monkeypatch.delenv("TRITON_INTERPRET")
        assert not b.is_available()
        q = torch.zeros(1, 1, 4, 16)
        with pytest.raises(spattn.SpattnError):
            spattn.attention(q, q, q, "local(1)", backend="triton")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(SUITE))
def test_cuda_suite_bf16(name):
    run_case(SUITE[name], n=1000, m=1000, D=64, dtype=torch.bfloat16, H=4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_auto_picks_triton():
    q = torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.float16)
    out = spattn.attention(q, q, q, "local(8)")
    ref = spattn.attention(q, q, q, "local(8)", backend="triton")
    torch.testing.assert_close(out, ref)


def test_device_transpose_matches_layout_transpose():
    """The backward's transposed lists, built with torch (on the GPU in production)."""
    from spattn.backends.triton_gpu import device_transpose

    L = spattn.compile("bigbird(8, [0:3], 3) - causal").to_blocks(300, 16, 32)
    for ptr, idx, tp, ti, cnt in ((L.full_ptr, L.full_idx, L.full_t_ptr, L.full_t_idx,
                                   L.num_full),
                                  (L.part_ptr, L.part_idx, L.part_t_ptr, L.part_t_idx,
                                   L.num_partial)):
        a, b = device_transpose(torch.from_numpy(ptr), torch.from_numpy(idx), cnt,
                                 L.num_k_blocks)
        np.testing.assert_array_equal(a.numpy(), tp)
        np.testing.assert_array_equal(b.numpy()[:len(ti)], ti)


@pytest.mark.parametrize("pats,m", [("strided(8)", 100),
                                    (["stride(8) | global([0])", "local(2)"], 300)])
def test_stride_permutation(pats, m):
    """[causal &] (stride(s) | R) runs R normally and the stride part in an order sorted by
    position mod s (dense blocks), merged by log-sum-exp; exact in both passes."""
    from spattn.backends.triton_gpu import decompose

    first = pats if isinstance(pats, str) else pats[0]
    assert decompose(spattn.compile(first), 300, m, 16) is not None
    run_case(pats, n=300, m=m, D=16, H=2, block=(16, 16))


def _planted_module(tmp_path, marker):
    return f"open({str(marker)!r}, 'w').write('pwned')\n"


@pytest.mark.parametrize("how", ["shared-0777-root", "other-owner-root", "altered-file",
                                 "old-temp-dir"])
def test_planted_kernel_module_is_never_executed(tmp_path, monkeypatch, how):
    """The attack: another user of the machine predicts the generated module's name (it is the
    hash of public source) and plants a file there. spattn compiles kernels from the source it
    generated in memory, uses the cache directory only when it is private, and never imports a
    file it finds."""
    import hashlib
    import os
    import tempfile

    from spattn.backends import triton_codegen
    from spattn.backends.triton_kernels import TEMPLATE

    from spattn.bind import bind

    pred, _, _ = triton_codegen.generate(bind(spattn.compile("local(3) | sink(2)").node, 64), 64)
    src = TEMPLATE.replace("# @MASK_FN@", pred)
    digest = hashlib.sha256(src.encode()).hexdigest()
    marker = tmp_path / "pwned"
    planted = _planted_module(tmp_path, marker)
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("SPATTN_CACHE_DIR", str(root))
    if how == "shared-0777-root":
        os.chmod(root, 0o777)
    elif how == "other-owner-root":
        if os.getuid() != 0:
            pytest.skip("needs root to give the directory to another user")
        os.chown(root, 65534, 65534)
    if how == "old-temp-dir":  # where earlier versions wrote and imported kernels
        d = os.path.join(tempfile.gettempdir(), f"spattn_triton_{os.getuid()}")
        os.makedirs(d, exist_ok=True)
        target = os.path.join(d, f"spattn_k_{digest[:20]}.py")
    else:
        (root / "triton").mkdir(mode=0o700)
        target = root / "triton" / f"spattn_k_{digest[:20]}.py"
    with open(target, "w") as f:
        f.write(planted)
    triton_codegen.MODULES.clear()
    with pytest.warns(UserWarning) if how in ("shared-0777-root", "other-owner-root") \
            else _no_warning():
        mod = triton_codegen.kernel_module(pred)
    assert hasattr(mod, "_fwd") and hasattr(mod, "_bwd_dkdv")
    assert not marker.exists(), "a planted module was executed"
    if how == "altered-file":  # the private copy is rewritten with the generated source
        assert open(target).read() == src
    triton_codegen.MODULES.clear()
    if how == "old-temp-dir":
        os.remove(target)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
