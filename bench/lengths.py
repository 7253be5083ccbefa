"""No pathological lengths: the CPU plan at any n is within 2x of the best plan of nearby n.

For every suite pattern (S1..S7), 38 sequence lengths from 1,000 to 8,192 are timed: the round
numbers, the powers of two and their neighbours (1,023 / 1,024 / 1,025, 2,000 / 2,047 /
2,048, ...) and primes, so that lengths that are and are not multiples of every tile height
and pattern parameter are all present. At each n the figure is the forward time per pattern
pair, ``time / nnz`` (ns per pair), with B = 1, H = 8, D = 64, float32 and torch threads =
cores:

* **steady** — the plan cached: the median of ``--reps`` calls (after one warm-up call);
* **first** — the plan built and the call run (``spattn.cache.clear_all()`` before each),
  median of 2: what a batch with a never-seen length pays.

An n's *ratio* is its time per pair over the best (smallest) time per pair among the lengths
within ±10 % of it (itself included): a plan that is pathological for one length stands out
against its neighbours even though time per pair drifts slowly with n. The table prints, per
pattern, the worst ratio and where it occurs; ``--detail`` prints every length. Exits 1 when a
pattern's worst steady ratio exceeds 2 (the target of issue 14, item 3).

Run time on 2 cores: about 4 minutes (``--fast``: 17 lengths, 2 reps, about 1.5 minutes).
Load from other processes inflates single timings by up to 20x on this machine: run it on a
quiet machine (the header prints the load average) and repeat before believing an outlier.

Usage: ``python bench/lengths.py [--fast] [--patterns S1 S4] [--reps 3] [--threads N]
[--detail]``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from _common import SUITE, header, median_time, table  # noqa: E402

import spattn  # noqa: E402

LENGTHS = [1000, 1009, 1023, 1024, 1025, 1100, 1201, 1500, 1536, 1999, 2000, 2047, 2048,
           2049, 2500, 2503, 3000, 3071, 3072, 3500, 3583, 4000, 4093, 4095, 4096, 4097, 4500,
           5000, 5003, 5500, 6000, 6143, 6144, 6500, 7000, 7507, 8191, 8192]
FAST = LENGTHS[::2] + [8192]
TARGET = 2.0
WINDOW = 0.10


def sweep(text: str, lengths: list[int], reps: int, heads: int = 8) -> list[tuple]:
    """``(n, nnz, steady s, first s)`` at every length."""
    p = spattn.compile(text)
    out = []
    for n in lengths:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, heads, n, 64, generator=g) for _ in range(3))

        def call(q=q, k=k, v=v):
            spattn.attention(q, k, v, p)

        def first(call=call):
            spattn.cache.clear_all()
            call()

        fst = median_time(first, 2)
        call()
        out.append((n, p.nnz(n), median_time(call, reps), fst))
    return out


def ratios(rows: list[tuple], col: int) -> list[float]:
    """Each length's time per pair over the best within ±WINDOW of it."""
    per = [r[col] / max(r[1], 1) for r in rows]
    got = []
    for i, r in enumerate(rows):
        near = [per[j] for j, s in enumerate(rows) if abs(s[0] - r[0]) <= WINDOW * r[0]]
        got.append(per[i] / min(near))
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--patterns", nargs="+", default=list(SUITE))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--detail", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = FAST if args.fast else LENGTHS
    reps = 2 if args.fast else args.reps
    print(header("CPU plan quality across sequence lengths (time per pair vs neighbours)"))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{len(lengths)} lengths {lengths[0]:,}..{lengths[-1]:,}; B = 1, H = 8, D = 64, "
          f"float32; steady: median of {reps}, first: median of 2 (cache cleared)\n")
    rows, missed = [], []
    for name in args.patterns:
        got = sweep(SUITE[name], lengths, reps)
        rs, rf = ratios(got, 2), ratios(got, 3)
        ws, wf = max(range(len(got)), key=rs.__getitem__), max(range(len(got)),
                                                                key=rf.__getitem__)
        per = [g[2] / g[1] * 1e9 for g in got]
        rows.append([name, f"{min(per):.2f}..{max(per):.2f}", f"{rs[ws]:.2f}",
                     f"{got[ws][0]:,}", f"{rf[wf]:.2f}", f"{got[wf][0]:,}"])
        if args.detail:
            print(table(["n", "nnz", "steady ms", "ns/pair", "ratio", "first ms", "ratio"],
                        [[f"{g[0]:,}", f"{g[1]:,}", f"{g[2] * 1e3:.1f}", f"{p:.2f}",
                          f"{a:.2f}", f"{g[3] * 1e3:.1f}", f"{b:.2f}"]
                         for g, p, a, b in zip(got, per, rs, rf, strict=True)]) + "\n")
        if rs[ws] > TARGET:
            missed.append(f"{name}: steady ratio {rs[ws]:.2f} at n = {got[ws][0]:,}")
        print(f"{name} done (load {os.getloadavg()[0]:.2f})", flush=True)
    print()
    print(table(["pattern", "steady ns/pair", "worst steady ratio", "at n",
                 "worst first ratio", "at n"], rows))
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for m in missed:
        print(f"FAIL: {m} (target <= {TARGET})")
    if not missed:
        print(f"PASS: every pattern's worst steady ratio <= {TARGET}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
