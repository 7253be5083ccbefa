"""Decoding benchmark: one query over n keys, spattn against dense SDPA over the whole cache.

For n = 32K, 256K and 1M keys (B = 1, H = 8, D = 64, float32, torch threads = cores) and the
patterns streaming(4, 256), ``window(1023, 0) & causal``, ``window(63, 0) & causal``,
strided(128) and causal, it times in one process:

* dense SDPA of the last query over all n keys (``F.scaled_dot_product_attention``: what a
  plain growing cache pays per step);
* ``spattn.attention`` with m = 1 over the same tensors (the stateless decode path);
* a decode step of a ``spattn.KVCache`` that has seen n - 1 positions (filled with
  ``cache.append``), appending the n-th: per-step latency, keys held and bytes allocated.

Both outputs are checked against a float64 softmax over exactly the keys the last query's row
attends (the pattern's CSR row); the table's last column is the larger error.

Each time is the median of three blocks of ``--repeats`` consecutive calls, dense and
spattn blocks alternating so that bursts of load from other processes hit both (the cache:
the median of as many consecutive steps). Prints a
header (machine, versions, load average), a table with ratios, and one line per target;
exits 1 when a target is missed.

Usage: ``python bench/decode.py [--n 32768 262144 1048576] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import header, median_time, table  # noqa: E402

import spattn  # noqa: E402

PATTERNS = ["streaming(4, 256)", "window(1023, 0) & causal", "window(63, 0) & causal",
            "strided(128)", "causal"]
#: (pattern, n) -> least speed-up of the stateless path over dense SDPA
TARGETS = {("streaming(4, 256)", 262144): 50.0, ("window(63, 0) & causal", 262144): 50.0,
           ("strided(128)", 262144): 5.0, ("causal", 262144): 0.8}
CACHE_TARGET = ("streaming(4, 256)", 262144, 100.0, 261 + 128)  # speed-up, most keys held


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _reference(q, k, v, p, n):
    """The last query's output in float64 over exactly the keys its row attends (from the
    pattern's CSR row, one head at a time)."""
    _, idx = spattn.compile(p).row_range_csr(n, n - 1, n)
    idx = torch.from_numpy(idx.astype("int64"))
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            kk, vv = k[b, h, idx].double(), v[b, h, idx].double()
            w = torch.softmax((q[b, h].double() @ kk.T) * q.shape[-1] ** -0.5, -1)
            out[b, h] = w @ vv
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:,.2f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def run(n: int, reps: int, B=1, H=8, D=64):
    g = torch.Generator().manual_seed(0)
    k = torch.randn(B, H, n, D, generator=g)
    v = torch.randn(B, H, n, D, generator=g)
    q = torch.randn(B, H, 1, D, generator=g)
    dense_bytes = 2 * k.numel() * k.element_size()
    _sdpa(q, k, v)
    rows, ratios = [], {}
    for p in PATTERNS:
        exact = _reference(q, k, v, p, n)
        err = (spattn.attention(q, k, v, p).double() - exact).abs().max().item()
        dense, sp = [], []
        for _ in range(3):  # alternating blocks of calls
            dense.append(median_time(lambda: _sdpa(q, k, v), reps))
            sp.append(median_time(lambda p=p: spattn.attention(q, k, v, p), reps))
        td, ts = statistics.median(dense), statistics.median(sp)
        cache = spattn.KVCache(p)
        cache.append(k[:, :, :n - reps - 1], v[:, :, :n - reps - 1])
        steps = []
        for i in range(n - reps - 1, n):
            qi, ki, vi = q, k[:, :, i:i + 1], v[:, :, i:i + 1]
            t = time.perf_counter()
            out = cache.attend(qi, ki, vi)
            steps.append(time.perf_counter() - t)
        cerr = (out.double() - exact).abs().max().item()  # the last step: query n - 1
        tc = statistics.median(steps[1:])
        ratios[(p, n)] = (td / ts, td / tc, cache.held)
        rows.append([p, f"{n:,}", f"{td * 1e3:.2f}", f"{ts * 1e3:.3f}", f"{td / ts:.1f}x",
                     f"{tc * 1e3:.3f}", f"{td / tc:.1f}x", f"{cache.held:,}",
                     _mib(cache.nbytes), _mib(dense_bytes), f"{max(err, cerr):.1e}"])
        del cache
    return rows, ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[32768, 262144, 1048576])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    print(header("spattn decoding: one query, B = 1, H = 8, D = 64, float32"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows, ratios = [], {}
    for n in args.n:
        r, x = run(n, args.repeats)
        rows += r
        ratios.update(x)
    print(table(["pattern", "n keys", "dense SDPA ms", "spattn m=1 ms", "vs dense",
                 "KVCache step ms", "vs dense", "keys held", "cache bytes", "dense cache",
                 "max err vs f64"], rows))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    missed = 0
    for (p, n), least in TARGETS.items():
        if (p, n) in ratios:
            got = ratios[(p, n)][0]
            ok = got >= least
            missed += not ok
            print(f"target {p} at n = {n:,}: stateless >= {least}x dense: {got:.1f}x "
                  f"{'met' if ok else 'MISSED'}")
    p, n, least, most = CACHE_TARGET
    if (p, n) in ratios:
        _, got, held = ratios[(p, n)]
        ok = got >= least and held <= most
        missed += not ok
        print(f"target KVCache {p} after {n:,} positions: >= {least}x dense and <= {most} keys "
              f"held: {got:.1f}x, {held} held {'met' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
