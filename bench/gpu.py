"""GPU benchmark for a lent device: spattn's Triton backend vs FlexAttention and dense SDPA.

1. Correctness first: every suite pattern, forward and backward, against a dense masked
   reference on the device (float32 maths from the same bf16 inputs).
2. Timings (bf16, B = 1, H = 16, D in {64, 128}, n in {8K, 32K, 128K}): spattn-triton forward
   and forward + backward; FlexAttention compiled with the same block layout
   (``BlockLayout.to_flex_block_mask``, identical to ``create_block_mask``'s structure) and the
   same block size; dense flash SDPA (no mask). Useful TFLOP/s count 4·nnz·D·H (forward;
   ×3.5 for forward + backward), block-level TFLOP/s count every pair of every touched tile.
3. A Markdown table on stdout and in ``$OUT/gpu_bench.md`` (+ ``gpu_bench.json``).

A global deadline (``--budget``, default 300 s) keeps the whole run under 6 minutes: cases
run in priority order (n = 32K first) and the rest are reported as skipped.

    python bench/gpu.py                 # on a CUDA machine
    python bench/gpu.py --dry-run       # CPU, TRITON_INTERPRET=1, tiny sizes: checks the script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:  # must precede any triton import
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import spattn  # noqa: E402
from spattn.suite import SUITE  # noqa: E402 - the shared standard suite

T_START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T_START


def bench(fn, dev: str, rep_ms: int = 60) -> float:
    """Milliseconds per call."""
    if dev == "cuda":
        import triton

        return float(triton.testing.do_bench(fn, warmup=10, rep=rep_ms))
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def dense_ref(q, k, v, mask, scale):
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v.float()


def check_correctness(dev: str, n: int, D: int) -> list[dict]:
    from spattn.backends.triton_gpu import block_shape, decompose, sparse_attention

    out = []
    H = 2
    g = torch.Generator(device="cpu").manual_seed(0)
    # the suite at n, plus S2 at a length where its stride part runs in the permuted order
    n_perm, blk = (8192, None) if dev == "cuda" else (2048, (32, 32))
    bq, bk = blk or block_shape(D, torch.bfloat16, dev)[:2]
    assert decompose(spattn.compile(SUITE["S2"]), n_perm, n_perm, bq, bk) is not None
    cases = [(name, text, n, None) for name, text in SUITE.items()]
    cases.append(("S2-permuted", SUITE["S2"], n_perm, blk))
    for name, text, n, blk in cases:
        p = spattn.compile(text)
        Hc = H if name != "S2-permuted" or dev == "cuda" else 1
        q, k, v, do = (torch.randn(1, Hc, n, D, generator=g).to(dev, torch.bfloat16)
                       for _ in range(4))
        mask = torch.from_numpy(p.to_dense(n)).to(dev)
        scale = D ** -0.5
        qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
        o = sparse_attention(qs, ks, vs, (p,) * Hc, scale,
                             block_q=blk[0] if blk else None, block_k=blk[1] if blk else None)
        o.backward(do)
        qr, kr, vr = (x.float().requires_grad_() for x in (q, k, v))
        ref = dense_ref(qr, kr, vr, mask, scale)
        ref.backward(do.float())
        errs = {"out": (o.float() - ref).abs().max().item()}
        for nm, a, b in (("dq", qs, qr), ("dk", ks, kr), ("dv", vs, vr)):
            errs[nm] = (a.grad.float() - b.grad).abs().max().item()
        ok = all(math.isfinite(e) and e < 0.08 for e in errs.values())
        out.append({"name": name, "ok": ok, **errs})
        print(f"  correctness {name}: {'ok' if ok else 'FAIL'}  "
              + "  ".join(f"{k_}={v_:.2e}" for k_, v_ in errs.items()), flush=True)
    return out


def flex_fns(dev: str):
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except Exception:  # noqa: BLE001
        return None
    if dev != "cuda":
        return flex_attention  # eager on CPU (dry run only checks the plumbing)
    return torch.compile(flex_attention, dynamic=False)


def run_case(dev, name, text, n, D, H, flex, do_flex, do_sdpa, deadline) -> dict:
    from spattn.backends.triton_gpu import block_shape, sparse_attention

    dtype = torch.bfloat16
    row = {"name": name, "n": n, "D": D}
    p = spattn.compile(text)
    bq, bk, _, _ = block_shape(D, dtype, dev)
    t0 = time.perf_counter()
    L = p.to_blocks(n, bq, bk)
    row["layout_ms"] = (time.perf_counter() - t0) * 1e3
    nnz = p.nnz(n)
    row["density"] = nnz / float(n) ** 2
    useful = 4.0 * nnz * D * H
    blockf = 4.0 * L.nonzero_blocks * bq * bk * D * H
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v, do = (torch.randn(1, H, n, D, generator=g).to(dev, dtype) for _ in range(4))
    scale = D ** -0.5
    pats = (p,) * H

    def sp_fwd():
        with torch.no_grad():
            return sparse_attention(q, k, v, pats, scale)

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

    def sp_fb():
        o = sparse_attention(qg, kg, vg, pats, scale)
        o.backward(do)

    row["spattn_fwd_ms"] = bench(sp_fwd, dev)
    row["spattn_fb_ms"] = bench(sp_fb, dev) if time.perf_counter() < deadline else None
    row["useful_tflops_fwd"] = useful / row["spattn_fwd_ms"] / 1e9
    row["block_tflops_fwd"] = blockf / row["spattn_fwd_ms"] / 1e9
    if row["spattn_fb_ms"]:
        row["useful_tflops_fb"] = 3.5 * useful / row["spattn_fb_ms"] / 1e9
    if do_flex and flex is not None and time.perf_counter() < deadline:
        errors = []
        # same block size as spattn's tiles first; FlexAttention's kernel may need 128 x 128
        for fb in ((bq, bk), (128, 128)):
            try:
                bm = (L if fb == (bq, bk) else p.to_blocks(n, *fb)).to_flex_block_mask(dev)

                def fx_fwd(bm=bm):
                    with torch.no_grad():
                        return flex(q, k, v, block_mask=bm, scale=scale)

                def fx_fb(bm=bm):
                    o = flex(qg, kg, vg, block_mask=bm, scale=scale)
                    o.backward(do)

                row["flex_block"] = f"{fb[0]}x{fb[1]}"
                row["flex_fwd_ms"] = bench(fx_fwd, dev)
                if time.perf_counter() < deadline:
                    row["flex_fb_ms"] = bench(fx_fb, dev)
                break
            except Exception as e:  # noqa: BLE001 - report, keep going
                errors.append(f"{fb[0]}x{fb[1]}: {type(e).__name__}: {str(e)[:100]}")
                if dev != "cuda" and "flex_fwd_ms" in row:
                    break  # CPU FlexAttention has no backward: the forward figure stands
        if errors:
            row["flex_error"] = "; ".join(errors)
    if do_sdpa and time.perf_counter() < deadline:
        import torch.nn.functional as F

        def sd_fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, scale=scale)

        def sd_fb():
            F.scaled_dot_product_attention(qg, kg, vg, scale=scale).backward(do)

        row["sdpa_fwd_ms"] = bench(sd_fwd, dev)
        if time.perf_counter() < deadline:
            row["sdpa_fb_ms"] = bench(sd_fb, dev)
    for a, b in (("fwd", "flex"), ("fb", "flex"), ("fwd", "sdpa"), ("fb", "sdpa")):
        s, o = row.get(f"spattn_{a}_ms"), row.get(f"{b}_{a}_ms")
        if s and o:
            row[f"x_{b}_{a}"] = o / s  # > 1: spattn faster
    return row


def fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = ["D", "n", "pattern", "density", "spattn fwd ms", "TFLOP/s useful / block",
            "flex fwd ms", "× flex fwd", "sdpa fwd ms", "× sdpa fwd", "spattn f+b ms",
            "flex f+b ms", "× flex f+b", "× sdpa f+b"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['D']} | {r['n']:,} | {r['name']} | skipped ({r['skipped']}) |"
                         + " |" * (len(head) - 4))
            continue
        lines.append("| " + " | ".join([
            str(r["D"]), f"{r['n']:,}", r["name"], f"{r['density']:.4f}",
            fmt(r.get("spattn_fwd_ms"), ".3f"),
            f"{fmt(r.get('useful_tflops_fwd'), '.1f')} / {fmt(r.get('block_tflops_fwd'), '.1f')}",
            fmt(r.get("flex_fwd_ms"), ".3f"), fmt(r.get("x_flex_fwd")),
            fmt(r.get("sdpa_fwd_ms"), ".3f"), fmt(r.get("x_sdpa_fwd")),
            fmt(r.get("spattn_fb_ms"), ".3f"), fmt(r.get("flex_fb_ms"), ".3f"),
            fmt(r.get("x_flex_fb")), fmt(r.get("x_sdpa_fb"))]) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    import statistics

    out = []
    for key, label in (("x_flex_fwd", "forward vs flex"), ("x_flex_fb", "fwd+bwd vs flex"),
                       ("x_sdpa_fwd", "forward vs dense SDPA")):
        xs = [r[key] for r in rows if r.get(key)]
        if xs:
            out.append(f"{label}: min {min(xs):.2f}×, median {statistics.median(xs):.2f}×, "
                       f"max {max(xs):.2f}× over {len(xs)} cases")
    s2 = [r for r in rows if r.get("name") == "S2" and r.get("n") == 32768 and r.get("x_sdpa_fwd")]
    for r in s2:
        out.append(f"S2 strided(128) at n = 32K, D = {r['D']}: {r['x_sdpa_fwd']:.2f}× dense SDPA "
                   "(forward)")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU + TRITON_INTERPRET=1 at tiny sizes (no meaningful timings)")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run")
    ap.add_argument("--sizes", default=None, help="comma-separated n (default 32768,8192,131072)")
    ap.add_argument("--dims", default=None, help="comma-separated D (default 64,128)")
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--autotune", action="store_true",
                    help="let spattn time its tile-shape candidates per case (slower start)")
    a = ap.parse_args(argv)
    if a.autotune:
        os.environ["SPATTN_TRITON_AUTOTUNE"] = "1"
    out_dir = os.environ.get("OUT") or "./bench_out"
    os.makedirs(out_dir, exist_ok=True)
    if a.dry_run:
        dev, sizes, dims, H, ncheck = "cpu", [256], [64], a.heads or 2, 256
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run to check the script on CPU")
            return 2
        dev, sizes, dims, H, ncheck = "cuda", [32768, 8192, 131072], [64, 128], a.heads or 16, 1024
    if a.sizes:
        sizes = [int(x) for x in a.sizes.split(",")]
    if a.dims:
        dims = [int(x) for x in a.dims.split(",")]
    deadline = T_START + a.budget
    card = torch.cuda.get_device_name(0) if dev == "cuda" else "CPU (Triton interpreter)"
    import triton

    print(f"device: {card}; torch {torch.__version__}; triton {triton.__version__}; "
          f"spattn {spattn.__version__}; H = {H}; bf16", flush=True)
    print("correctness (forward + backward vs dense reference):", flush=True)
    checks = check_correctness(dev, ncheck, 64)
    if not all(c["ok"] for c in checks):
        print("correctness FAILED: timings follow but are suspect", flush=True)
    flex = None if a.no_flex else flex_fns(dev)
    rows = []
    for D in dims:
        for n in sizes:
            for name, text in SUITE.items():
                if time.perf_counter() > deadline - 5:
                    rows.append({"name": name, "n": n, "D": D, "skipped": "time budget"})
                    continue
                try:
                    r = run_case(dev, name, text, n, D, H, flex, not a.no_flex, True,
                                 deadline)
                except (torch.cuda.OutOfMemoryError, MemoryError):
                    r = {"name": name, "n": n, "D": D, "skipped": "out of memory"}
                    if dev == "cuda":
                        torch.cuda.empty_cache()
                rows.append(r)
                print(f"  [{elapsed():6.1f}s] D={D} n={n} {name}: "
                      f"spattn fwd {fmt(r.get('spattn_fwd_ms'), '.3f')} ms, "
                      f"flex {fmt(r.get('flex_fwd_ms'), '.3f')} ms, "
                      f"sdpa {fmt(r.get('sdpa_fwd_ms'), '.3f')} ms"
                      + (f" ({r['flex_error']})" if r.get("flex_error") else ""), flush=True)
    t = table(rows)
    s = summary(rows)
    text = (f"# spattn GPU benchmark\n\ndevice: {card}; torch {torch.__version__}; triton "
            f"{triton.__version__}; B = 1, H = {H}, bf16{' (DRY RUN: interpreter)' if DRY else ''}"
            f"\n\ncorrectness: {sum(c['ok'] for c in checks)}/{len(checks)} checks pass "
            "(the suite, and S2 with its stride part in the permuted order)"
            f"\n\n{t}\n\n{s}\n\ntotal {elapsed():.0f} s\n")
    print()
    print(text)
    with open(os.path.join(out_dir, "gpu_bench.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "gpu_bench.json"), "w") as f:
        json.dump({"device": card, "checks": checks, "rows": rows}, f, indent=1)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
