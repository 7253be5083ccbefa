"""A small transformer encoder over a synthetic 16K-token document on CPU: sparse attention
(``local(128) | global([0, -1])`` through spattn) against dense attention (PyTorch's fused
``scaled_dot_product_attention``, the fastest dense path on CPU).

Both encoders have the same architecture and the same weights (SparseAttention shares
nn.MultiheadAttention's parameter layout); only the attention differs. Each variant
runs in a fresh subprocess (in fast mode, in this process) and reports its peak memory: the
resident-set high-water mark during the forward pass, above the resident set just before it.

    python examples/long_document.py              # 16,384 tokens, 2 layers
    python examples/long_document.py --fast       # 2,048 tokens, 1 layer (also SPATTN_FAST=1)
    python examples/long_document.py -n 32768 --pattern "local(256) | global([0:8])"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from torch import nn

import spattn
from spattn.nn import SparseAttention

VOCAB = 1000


class DenseAttention(nn.Module):
    """Dense multi-head self-attention through PyTorch's fused
    ``scaled_dot_product_attention`` (its CPU flash kernel needs no n x n buffer), with the
    parameter layout of ``nn.MultiheadAttention`` / ``SparseAttention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        ref = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.heads = heads
        self.in_proj_weight, self.in_proj_bias, self.out_proj = (
            ref.in_proj_weight, ref.in_proj_bias, ref.out_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, dim = x.shape
        q, k, v = (t.reshape(B, n, self.heads, -1).transpose(1, 2) for t in
                   nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        o = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out_proj(o.transpose(1, 2).reshape(B, n, dim))


class Block(nn.Module):
    """Pre-norm encoder block around an attention module (sparse or dense)."""

    def __init__(self, attn: nn.Module, dim: int):
        super().__init__()
        self.attn = attn
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


def build(kind: str, pattern: str, dim: int, heads: int, layers: int) -> nn.Module:
    torch.manual_seed(0)  # same weights for both variants
    blocks = []
    for _ in range(layers):
        attn: nn.Module = DenseAttention(dim, heads)
        if kind == "sparse":
            sparse = SparseAttention(dim, heads, pattern)
            sparse.load_state_dict(attn.state_dict())
            attn = sparse
        blocks.append(Block(attn, dim))
    return nn.Sequential(nn.Embedding(VOCAB, dim), *blocks, nn.LayerNorm(dim))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    try:  # Linux: writing 5 to clear_refs resets the high-water mark VmHWM
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_variant(kind: str, n: int, pattern: str, dim: int, heads: int, layers: int) -> dict:
    """Build the model, run one warm-up and one timed forward pass; report time and memory."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = build(kind, pattern, dim, heads, layers).eval()
    gen = torch.Generator().manual_seed(1)
    doc = torch.randint(0, VOCAB, (1, n), generator=gen)
    with torch.no_grad():
        model(doc[:, : min(n, 512)])  # warm up kernels and caches at a short length
        base = _rss_mb()
        exact = _reset_peak()
        t0 = time.perf_counter()
        out = model(doc)
        secs = time.perf_counter() - t0
        peak = _peak_mb()
    return {"kind": kind, "seconds": secs, "peak_extra_mb": max(0.0, peak - base),
            "peak_exact": exact, "checksum": float(out.double().abs().mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", default=os.environ.get("SPATTN_FAST") == "1",
                    help="short document, one layer (CI)")
    ap.add_argument("-n", type=int, default=None, help="document length (default 16384)")
    ap.add_argument("--pattern", default="local(128) | global([0, -1])")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--variant", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = args.n or (2048 if args.fast else 16384)
    layers = args.layers or (1 if args.fast else 2)

    if args.variant:  # child process: one measurement, printed as JSON
        print(json.dumps(run_variant(args.variant, n, args.pattern, args.dim, args.heads,
                                     layers)))
        return

    p = spattn.compile(args.pattern)
    nnz = p.nnz(n)
    print(f"document: {n:,} tokens; encoder: {layers} layer(s), width {args.dim}, "
          f"{args.heads} heads")
    print(f"sparse pattern: {p}  ({nnz:,} pairs per head = {nnz / n / n:.2%} of dense)\n")
    results = {}
    for kind in ("sparse", "dense"):
        if args.fast:  # in-process (the high-water mark is reset before each forward pass)
            results[kind] = run_variant(kind, n, args.pattern, args.dim, args.heads, layers)
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", kind, "-n", str(n),
               "--pattern", args.pattern, "--layers", str(layers), "--dim", str(args.dim),
               "--heads", str(args.heads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{kind} run failed (exit {proc.returncode})")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"{'attention':10} {'forward time':>13} {'peak extra memory':>18}")
    for kind, label in (("sparse", "spattn"), ("dense", "dense SDPA")):
        r = results[kind]
        print(f"{label:10} {r['seconds']:12.2f}s {r['peak_extra_mb']:15.1f} MB")
    s, d = results["sparse"], results["dense"]
    t = d["seconds"] / s["seconds"]
    line = f"\nspattn vs dense: {t if t >= 1 else 1 / t:.2f}x {'faster' if t >= 1 else 'slower'}"
    if s["peak_extra_mb"] > 0 and d["peak_extra_mb"] > 0:
        r = d["peak_extra_mb"] / s["peak_extra_mb"]
        line += f", {r if r >= 1 else 1 / r:.2f}x {'less' if r >= 1 else 'more'} peak memory"
    print(line)
    if not s["peak_exact"]:
        print("(peak memory is the process high-water mark; it could not be reset here)")
    print("(machine: " + f"{os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
