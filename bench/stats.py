"""Benchmark: ``Pattern.stats`` on the standard suite (S1-S7) at n = 1,048,576.

In: optional ``--n`` (default 2**20) and ``--block-size`` (128). Out: a table on stdout with,
per pattern, the wall time of ``stats``, the method used to read rows, and which figures are
exact, followed by the machine and library versions. Target: every pattern under 2 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import spattn
from spattn.suite import SUITE as SUITE_BY_NAME

SUITE = list(SUITE_BY_NAME.items())

ABBR = {"nnz": "nnz", "density": "dens", "row_degree": "deg", "empty_rows": "empty",
        "causal": "causal", "symmetric": "sym", "blocks": "blocks", "kv_cache": "kv",
        "kv_cache_grows": "kv-grows", "receptive_field": "rf"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (3)")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        torch_v = torch.__version__
    except ImportError:  # pragma: no cover
        torch_v = "not installed"
    import scipy.sparse.csgraph  # noqa: F401  one-time import cost, not part of a figure

    spattn.compile("local(1)").stats(64)  # warm the lazy imports
    n = args.n
    print(f"spattn {spattn.__version__} stats benchmark, n = {n:,}, block size {args.block_size}")
    hdr = f"{'':3} {'pattern':30} {'time s':>7} {'method':11} {'nnz':>15} {'hops':>6} " \
          f"{'kv':>9}  inexact figures"
    print(hdr)
    print("-" * len(hdr))
    worst = 0.0
    for tag, text in SUITE:
        p = spattn.compile(text)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            s = p.stats(n, block_size=args.block_size)
            best = min(best, time.perf_counter() - t0)
        worst = max(worst, best)
        inexact = [ABBR[k] for k, v in s.exact.items() if not v]
        kv = "-" if s.kv_cache is None else f"{s.kv_cache:,}" + ("+" if s.kv_cache_grows else "")
        print(f"{tag:3} {text:30} {best:7.3f} {s.method:11} {s.nnz:>15,} "
              f"{s.receptive_field['hops_to_full']:>6,} {kv:>9}  "
              f"{', '.join(inexact) if inexact else 'all exact'}")
    print("-" * len(hdr))
    print(f"slowest: {worst:.3f} s (target < 2 s); best of {args.repeat} runs; "
          "kv '+' = grows with n")
    try:
        print(f"load average: {os.getloadavg()[0]:.1f}")
    except OSError:  # pragma: no cover
        pass
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch_v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
