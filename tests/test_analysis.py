"""Pattern.stats against brute force (dense oracle mask + BFS written here), and the issue's
reference answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import oracle_mask

import spattn
from spattn.analysis.blockfig import block_figures
from spattn.analysis.families import families
from spattn.analysis.kv import kv_cache
from spattn.analysis.receptive import depths, rf_bitset, rf_structural
from spattn.analysis.rows import row_figures

# --------------------------------------------------------------------------------------------
# Brute-force references (dense, small n)


def ref_row(m: np.ndarray) -> dict:
    deg = m.sum(1)
    return {"nnz": int(m.sum()), "min": int(deg.min()), "max": int(deg.max()),
            "empty": int((deg == 0).sum()), "causal": not np.triu(m, 1).any(),
            "symmetric": bool((m == m.T).all())}


def ref_blocks(m: np.ndarray, B: int) -> tuple[int, int]:
    n = len(m)
    nz = full = 0
    for a in range(0, n, B):
        for c in range(0, n, B):
            t = m[a:a + B, c:c + B]
            nz += bool(t.any())
            full += bool(t.all())
    return nz, full


def ref_kv(m: np.ndarray) -> int:
    n = len(m)
    return max(int(m[t:, :t + 1].any(0).sum()) for t in range(n))


def ref_distances(m: np.ndarray) -> np.ndarray:
    """d[i, j] = hops from key j to query i (edge j -> i when m[i, j]); inf if unreachable."""
    n = len(m)
    a = m.copy()
    np.fill_diagonal(a, True)
    d = np.full((n, n), np.inf)
    for src in range(n):  # BFS from each key
        dist = np.full(n, np.inf)
        dist[src] = 0
        frontier = [src]
        step = 0
        while frontier:
            step += 1
            nxt = np.flatnonzero(a[:, frontier].any(1) & ~np.isfinite(dist))
            dist[nxt] = step
            frontier = nxt.tolist()
        d[:, src] = dist
    return d


def ref_rf(m: np.ndarray) -> dict:
    d = ref_distances(m)
    n = len(m)
    fin = np.isfinite(d)
    hops = int(d[fin].max())
    cov = {L: float((d <= L).sum()) / (n * n) for L in depths(hops)}
    return {"reachable": float(fin.sum()) / (n * n), "hops_to_full": hops, "coverage": cov}


# --------------------------------------------------------------------------------------------
# Pattern generator


def _prim(draw, compressible: bool) -> str:
    names = ["local", "window", "causal", "dilated", "block", "sink", "global", "rows", "cols",
             "full", "none"]
    if not compressible:
        names += ["stride", "fixed", "random"]
    name = draw(st.sampled_from(names))
    k = st.integers(0, 12)
    pos = st.lists(st.integers(-3, 3), min_size=1, max_size=3)
    if name == "local":
        return f"local({draw(k)})"
    if name == "window":
        return f"window({draw(k)}, {draw(k)})"
    if name == "dilated":
        return f"dilated({draw(st.integers(0, 4))}, {draw(st.integers(1, 5))})"
    if name == "block":
        return f"block({draw(st.integers(1, 20))})"
    if name == "sink":
        return f"sink({draw(k)})"
    if name in ("global", "rows", "cols"):
        if draw(st.booleans()):
            return f"{name}({draw(pos)})"
        return f"{name}([{draw(st.integers(0, 5))}:{draw(st.integers(5, 30))}])"
    if name == "stride":
        return f"stride({draw(st.integers(1, 12))})"
    if name == "fixed":
        l = draw(st.integers(1, 12))
        return f"fixed({l}, {draw(st.integers(1, l))})"
    if name == "random":
        return f"random({draw(st.integers(0, 4))}, seed={draw(st.integers(0, 9))})"
    return name


@st.composite
def patterns(draw, compressible: bool = False) -> str:
    def expr(depth):
        if depth == 0 or draw(st.integers(0, 2)) == 0:
            return _prim(draw, compressible)
        op = draw(st.sampled_from(["|", "&", "-", "~"] if not compressible else ["|", "&", "-"]))
        if op == "~":
            return f"~({expr(depth - 1)})"
        return f"({expr(depth - 1)}) {op} ({expr(depth - 1)})"

    return expr(2)


def _lowerable(text: str, n: int):
    try:
        p = spattn.compile(text)
        p.nnz(n)  # lowerable at n (positions in range, arguments valid)
    except spattn.SpattnError:
        return None, None
    return p, oracle_mask(text, n)


def _close(a, b):
    return abs(a - b) <= 1e-12


# --------------------------------------------------------------------------------------------
# Property tests


@settings(max_examples=60, deadline=None)
@given(patterns(), st.integers(1, 90), st.sampled_from([1, 3, 8, 16, 128]))
def test_stats_match_brute_force(text, n, B):
    p, m = _lowerable(text, n)
    if p is None:
        return
    s = p.stats(n, block_size=B)
    r = ref_row(m)
    assert s.nnz == r["nnz"] and s.density == r["nnz"] / (n * n)
    assert (s.row_degree["min"], s.row_degree["max"]) == (r["min"], r["max"])
    assert _close(s.row_degree["mean"], r["nnz"] / n)
    assert s.empty_rows == r["empty"]
    assert s.causal == r["causal"]
    assert s.symmetric == r["symmetric"]
    nz, full = ref_blocks(m, B)
    assert (s.blocks["nonzero"], s.blocks["full"], s.blocks["partial"]) == (nz, full, nz - full)
    if nz:
        assert _close(s.blocks["efficiency"], r["nnz"] / (nz * B * B))
    assert s.kv_cache == (ref_kv(m) if r["causal"] else None)
    if r["causal"]:
        m2 = oracle_mask(text, 2 * n)
        assert s.kv_cache_grows == (ref_kv(m2) > s.kv_cache)
    rf = ref_rf(m)
    assert s.receptive_field["hops_to_full"] == rf["hops_to_full"]
    assert _close(s.receptive_field["reachable"], rf["reachable"])
    assert s.receptive_field["coverage"].keys() == rf["coverage"].keys()
    for L, v in rf["coverage"].items():
        assert _close(s.receptive_field["coverage"][L], v)
    assert all(s.exact.values())
    json.dumps(s.to_dict())
    # the bit-set search used at moderate n gives the same answer
    bits = rf_bitset(p.node, n, r["nnz"], work_cap=1e12)
    assert bits["hops_to_full"] == rf["hops_to_full"]
    assert _close(bits["reachable"], rf["reachable"])
    assert all(_close(bits["coverage"][L], v) for L, v in rf["coverage"].items())


@settings(max_examples=60, deadline=None)
@given(patterns(compressible=True), st.integers(1, 120), st.sampled_from([1, 4, 16, 32]),
       st.sampled_from(["compressed", "intervals"]))
def test_large_n_methods_match_brute_force(text, n, B, mode):
    """The methods used at large n (compressed row ranges, structural receptive field),
    forced at small n and compared with brute force."""
    p, m = _lowerable(text, n)
    if p is None:
        return
    f = families(p.node, n, mode=mode)
    if f is None:
        return
    r = ref_row(m)
    rows = row_figures(f)
    assert (rows["nnz"], rows["min"], rows["max"], rows["empty"], rows["causal"]) == (
        r["nnz"], r["min"], r["max"], r["empty"], r["causal"])
    assert rows["diag"] == int(np.trace(m))
    b = block_figures(f, B)
    nz, full = ref_blocks(m, B)
    assert (b["nonzero"], b["full"]) == (nz, full)
    if r["causal"]:
        assert kv_cache(f) == ref_kv(m)
    rf = rf_structural(f)
    if rf is not None:
        ref = ref_rf(m)
        assert rf["hops_to_full"] == ref["hops_to_full"]
        assert _close(rf["reachable"], ref["reachable"])
        for L, v in ref["coverage"].items():
            assert _close(rf["coverage"][L], v)


def test_block_figures_agree_with_block_structure():
    from block_rows import block_structure

    for text in ["local(64) | global([0,-1])", "streaming(4, 256)", "block(256)",
                 "dilated(32, 4) | local(16)", "fixed(128, 16) & causal"]:
        p = spattn.compile(text)
        for n in (1000, 3000):
            indptr, _, full = block_structure(p.node, n, 128)
            s = p.stats(n)
            assert s.blocks["nonzero"] == int(indptr[-1]) and s.blocks["full"] == int(full.sum())
            assert s.nnz == p.nnz(n)


# --------------------------------------------------------------------------------------------
# Reference answers from the issue (exact at any n)


def test_local_hops_at_10k():
    s = spattn.compile("local(16)").stats(10_000)
    rf = s.receptive_field
    assert rf["exact"] and rf["hops_to_full"] == 625 and rf["reachable"] == 1.0
    # one layer covers 33 positions for a query away from the ends
    assert s.row_degree["max"] == 33
    ends = 2 * sum(range(1, 17))
    assert rf["coverage"][1] * 10_000**2 == pytest.approx(33 * 10_000 - ends)


def test_local_global_hops_at_10k():
    s = spattn.compile("local(16) | global([0,-1])").stats(10_000)
    assert s.receptive_field["exact"] and s.receptive_field["hops_to_full"] == 2
    assert s.receptive_field["reachable"] == 1.0


def test_block_never_mixes():
    s = spattn.compile("block(256)").stats(4096)
    assert s.receptive_field["reachable"] == 1 / 16 and s.receptive_field["exact"]


@pytest.mark.parametrize("n", [261, 262, 1000, 5000, 100_000, 1_048_576])
def test_streaming_kv_cache(n):
    s = spattn.compile("streaming(4, 256)").stats(n)
    assert s.kv_cache == 261 and s.exact["kv_cache"]
    assert s.kv_cache_grows is False


def test_streaming_kv_cache_below_window():
    s = spattn.compile("streaming(4, 256)").stats(200)
    assert s.kv_cache == 200 and s.kv_cache_grows is True


def test_strided_kv_cache_grows():
    s = spattn.compile("strided(128)").stats(4096)
    assert s.kv_cache_grows is True and s.kv_cache > 261


def test_not_causal_has_no_kv_cache():
    s = spattn.compile("local(4)").stats(100)
    assert s.kv_cache is None and s.to_dict()["kv_cache"] is None


def test_to_dict_keys_and_json():
    d = spattn.compile("local(64) | global([0,-1])").stats(4096).to_dict()
    for k in ("seq_len", "nnz", "density", "row_degree", "empty_rows", "causal", "symmetric",
              "receptive_field", "blocks", "kv_cache", "exact"):
        assert k in d
    assert set(d["row_degree"]) == {"min", "mean", "max"}
    assert {"reachable", "hops_to_full", "coverage", "exact"} <= set(d["receptive_field"])
    assert {"block_size", "nonzero", "full", "partial", "density", "efficiency"} <= set(
        d["blocks"])
    assert json.loads(json.dumps(d)) == d
    assert isinstance(spattn.compile("local(1)").stats(10), spattn.Stats)
    assert "nnz" in str(spattn.compile("local(1)").stats(10))


def test_large_n_suite_is_fast_and_says_what_is_exact():
    s = spattn.compile("local(64) | global([0,-1])").stats(1 << 20)
    assert all(s.exact.values()) and s.receptive_field["hops_to_full"] == 2
    s = spattn.compile("strided(128)").stats(1 << 20)
    assert s.exact["causal"] and s.kv_cache_grows


def test_bad_block_size():
    with pytest.raises(spattn.SpattnError):
        spattn.compile("local(1)").stats(10, block_size=0)
    with pytest.raises(spattn.SpattnError):
        spattn.compile("local(1)").stats(0)
