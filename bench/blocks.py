"""Benchmark: lowering the standard suite to block layouts (``Pattern.to_blocks``).

Times ``to_blocks(n, block_size=128)`` at n = 16K, 131K and 1M (best of ``--repeat`` runs;
Pattern objects cache nothing), then the lazily built transposed lists at the largest n, and,
for comparison, FlexAttention's
``create_block_mask`` (which evaluates the mask on every (query, key) pair) at n = 8K and 16K
on the CPU. Prints a Markdown table; ``--json PATH`` also writes the figures.

    python bench/blocks.py [--sizes 16384,131072,1048576] [--flex-sizes 8192,16384]
                           [--repeat 3] [--no-flex] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import spattn
from spattn.suite import SUITE  # noqa: E402 - the shared standard suite


def time_to_blocks(text: str, n: int, repeat: int) -> tuple[float, object]:
    best, layout = float("inf"), None
    for _ in range(repeat):
        p = spattn.compile(text)
        gc.collect()
        t0 = time.perf_counter()
        layout = p.to_blocks(n, 128)
        best = min(best, time.perf_counter() - t0)
        if best > 5:
            break
    return best, layout


def time_flex(text: str, n: int) -> float | None:
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except Exception:  # noqa: BLE001
        return None
    mm = spattn.compile(text).mask_mod(n)
    t0 = time.perf_counter()
    create_block_mask(mm, None, None, n, n, device="cpu", BLOCK_SIZE=128)
    return time.perf_counter() - t0


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:,.1f}" if s < 10 else f"{s * 1e3:,.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16384,131072,1048576")
    ap.add_argument("--flex-sizes", default="8192,16384")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    fsizes = [] if a.no_flex else [int(x) for x in a.flex_sizes.split(",") if x]
    # warm imports and first-call setup (numpy, torch.func.vmap) outside the timings
    for text in SUITE.values():
        spattn.compile(text).to_blocks(4096, 128)
    if fsizes:
        time_flex(SUITE["S1"], 256)
    rows = []
    for name, text in SUITE.items():
        row = {"name": name, "pattern": text, "to_blocks_ms": {}, "tiles": {}, "flex_ms": {}}
        for n in sizes:
            t, L = time_to_blocks(text, n, a.repeat if n < (1 << 20) else max(1, a.repeat - 1))
            row["to_blocks_ms"][n] = t * 1e3
            row["tiles"][n] = {"full": L.num_full, "partial": L.num_partial}
            if n == sizes[-1]:  # the transposed lists (computed lazily, for the backward)
                t0 = time.perf_counter()
                L.part_t_idx, L.full_t_idx  # noqa: B018
                row["transpose_ms"] = (time.perf_counter() - t0) * 1e3
            del L
        for n in fsizes:
            t = time_flex(text, n)
            row["flex_ms"][n] = None if t is None else t * 1e3
        rows.append(row)
        print(f"# done {name}", flush=True)

    head = ["pattern"] + [f"to_blocks n={n:,} (ms)" for n in sizes] + \
        [f"tiles n={sizes[-1]:,} (full / partial)", f"+ transpose n={sizes[-1]:,} (ms)"] + \
        [f"create_block_mask n={n:,} (ms)" for n in fsizes]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r['name']} `{r['pattern']}`".replace("|", "\\|")]
        cells += [fmt_ms(r["to_blocks_ms"][n] / 1e3) for n in sizes]
        tl = r["tiles"][sizes[-1]]
        cells.append(f"{tl['full']:,} / {tl['partial']:,}")
        cells.append(fmt_ms(r.get("transpose_ms", 0) / 1e3))
        cells += [fmt_ms(None if r["flex_ms"][n] is None else r["flex_ms"][n] / 1e3)
                  for n in fsizes]
        print("| " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
