"""Lowering speed for the standard suite: parse, to_csr, nnz and block layouts.

Each measurement runs in a fresh subprocess; peak memory is traced (tracemalloc, which numpy
reports its buffers to) in a second run, so the time is untraced.
Usage: python bench/compile.py [--sizes 16384 131072 1048576] [--patterns S1 S2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import SUITE, header, table  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import spattn
from spattn import guard
text, n, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import tracemalloc
p = spattn.compile(text)
p.to_csr(300); p.nnz(300)  # warm imports (scipy.sparse) outside the timing
out = {}
try:
    if what == "csr":
        nnz = p.nnz(n)
        if nnz * 5 > guard.memory_budget():
            out = {"refused": nnz}
        else:
            t = time.perf_counter(); m = p.to_csr(n); dt = time.perf_counter() - t
            own = m.indices.nbytes + m.indptr.nbytes + m.data.nbytes
            del m
            tracemalloc.start()  # a second, traced run for the peak (numpy reports to it)
            m = p.to_csr(n)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out = {"nnz": int(m.nnz), "s": dt, "peak": peak, "own": own}
    elif what == "nnz":
        t = time.perf_counter(); c = p.nnz(n); out = {"s": time.perf_counter() - t, "nnz": c}
    elif what == "blocks":
        p.to_blocks(300, 128)
        t = time.perf_counter(); L = p.to_blocks(n, 128); out = {"s": time.perf_counter() - t}
except spattn.SpattnError as e:
    out = {"error": str(e).splitlines()[0]}
print(json.dumps(out))
"""


def run(text, n, what, timeout=600):
    r = subprocess.run([sys.executable, "-c", CHILD, text, str(n), what], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:60]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def parse_times():
    import spattn
    from spattn import pattern

    rows = []
    for name, text in SUITE.items():
        pattern.COMPILED.clear()
        t = time.perf_counter()
        spattn.compile(text)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(1000):
            spattn.compile(text)
        warm = (time.perf_counter() - t) / 1000
        rows.append([name, text, f"{cold * 1e3:.2f}", f"{warm * 1e6:.2f}"])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 131072, 1048576])
    ap.add_argument("--patterns", nargs="+", default=list(SUITE))
    ap.add_argument("--no-blocks", action="store_true")
    args = ap.parse_args()
    print(header("bench/compile.py — lowering the standard suite"))
    print()
    print("Parse + canonicalise (first is cold: grammar and prelude load; then cached):")
    import spattn  # noqa: F401 - warm imports so "cold" measures parsing

    print(table(["pattern", "text", "cold ms", "cached µs"], parse_times()))
    print()
    rows = []
    for n in args.sizes:
        for name in args.patterns:
            text = SUITE[name]
            c = run(text, n, "csr")
            b = {} if args.no_blocks else run(text, n, "blocks")
            blk = (f"{b['s'] * 1e3:.0f}" if "s" in b else b.get("error", "-")[:40])
            if "refused" in c:
                k = run(text, n, "nnz")
                rows.append([name, f"{n:,}", f"{c['refused']:,}", "refused (memory)", "-", "-",
                             "-", f"{k['s']:.2f}" if "s" in k else "-", blk])
                continue
            if "error" in c:
                why = ("refused: > 2^29 intervals" if "would generate" in c["error"]
                       else c["error"][:40])
                rows.append([name, f"{n:,}", "-", why, "-", "-", "-", "-", blk])
                continue
            rows.append([name, f"{n:,}", f"{c['nnz']:,}", f"{c['s']:.3f}",
                         f"{c['nnz'] / c['s'] / 1e6:.0f}",
                         f"{c['peak'] / 2**20:,.0f}", f"{c['peak'] / c['own']:.2f}",
                         "", blk])
            k = run(text, n, "nnz")
            rows[-1][7] = f"{k['s']:.3f}" if "s" in k else "-"
    print("to_csr (CSR = int32 indices + bool data + indptr), nnz() alone, to_blocks(block 128):")
    print(table(["pattern", "n", "nnz", "to_csr s", "M nnz/s", "peak MiB", "peak/CSR",
                 "nnz() s", "to_blocks ms"], rows))


if __name__ == "__main__":
    main()
