"""Prefill benchmark of a transformers model: spattn.hf against the model's sdpa and flex_attention.

A random-init Llama-style model (built here from ``transformers.LlamaConfig``, no download;
float32, hidden 256, 4 query heads of 64 and 2 key/value heads (grouped-query attention), MLP
512, vocabulary 1000, ``--layers`` decoder layers) runs one forward over a whole prompt
(``model.eval()``, ``torch.no_grad()``, no generation) at each of ``--lengths`` tokens, in one
process, with:

* spattn: ``spattn.hf.use(model, "local(64) | global([0, -1])")`` (on top of the model's
  causal mask: key j is attended by query i when j <= i and (i - j <= 64 or j == 0 or
  i == n - 1));
* the model's own ``sdpa`` (dense causal attention: what the sparse pattern saves);
* the model's own ``flex_attention`` with the SAME sparse pattern: a ``BlockMask`` built here
  with ``create_block_mask`` and passed to the model as its ``attention_mask`` (transformers
  hands a prepared 4-D mask straight to its flex integration, which calls its
  ``torch.compile(flex_attention)``; on CPU that compile is the only way to a fused kernel).
  Two mask_mods compute the pattern: an arithmetic one and a lookup-table one (a per-row
  table of each query's lowest local key); flex's figure is the faster of the two.
  ``torch._dynamo.reset()`` before each compile and automatic dynamic shapes off (every compile
  static, as ``dynamic=False``); Inductor's caches disabled and compilation in-process, so the
  compile time printed is a real, cold one. ``--flex-causal`` also times the model's flex with
  its own (dense causal) mask.

What is timed is the decoder stack (``model.model``: embeddings, layers, final norm); the
language-model head on the last position that a prefill adds is 256 x 1000 multiply-adds.
Each figure is the median of 3 timed calls (min..max beside it) after a warm-up call whose
time (plans for spattn, compilation for flex) is printed apart. Before timing, at n = 300:
spattn's logits against flex (eager) with both mask_mods and against sdpa with the pattern as
a dense boolean mask (atol 1e-4), and ``spattn.hf.use(model, "causal")`` against plain sdpa
(atol 1e-5); at every timed length flex's compiled output is checked against spattn's too.
Prints a header (machine, versions, threads, load average), a table, and the target line:
spattn faster than sdpa at n = 16,384. Exits 1 when a check fails or the target is missed.

Usage: ``python bench/hf.py [--lengths 8192 16384] [--flex-lengths N ...] [--layers 1]
[--flex-causal]``; ``python bench/hf.py --fast`` is a smoke test (lengths 512 and 1024, flex
at 1024 only, since each cold flex compile takes about 10 s on 2 cores; under a minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import header, table  # noqa: E402

import spattn  # noqa: E402
import spattn.hf  # noqa: E402
from spattn import guard  # noqa: E402

PATTERN = "local(64) | global([0, -1])"
WINDOW = 64  #: local(64): |i - j| <= 64
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 256, 4, 2, 64, 512, 1000
CHECK_N = 300
TARGET_N = 16384
REPS = 3
ATOL_PATTERN, ATOL_CAUSAL = 1e-4, 1e-5


# -- the model --------------------------------------------------------------------------------

def build_model(max_len: int, layers: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=max(max_len + 64, 16384 + 64), attention_dropout=0.0)
    return transformers.LlamaForCausalLM(cfg).to(torch.float32).eval()


def switch(model, impl: str, pattern: str = PATTERN) -> None:
    """Set the model's attention implementation ("spattn" with ``pattern``, or a
    transformers name)."""
    if impl == "spattn":
        spattn.hf.use(model, pattern)
    else:
        model.set_attn_implementation(impl)
    assert model.config._attn_implementation == (spattn.hf.NAME if impl == "spattn" else impl)


# -- the pattern as FlexAttention mask_mods --------------------------------------------------

def mask_mods(n: int) -> dict:
    """local(64) | global([0, -1]) & causal at length n: arithmetic and lookup-table."""
    lo = torch.clamp(torch.arange(n) - WINDOW, min=0)  # row i's lowest local key
    lo[n - 1] = 0  # the last row (global) attends every earlier key

    def arith(b, h, q, k):
        return (k <= q) & (((q - k) <= WINDOW) | (k == 0) | (q == n - 1))

    def lookup(b, h, q, k):
        return (k <= q) & ((k >= lo[q]) | (k == 0))

    return {"arith": arith, "table": lookup}


def causal_mod(b, h, q, k):
    return k <= q


def block_mask(mod, n: int):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mod, None, None, n, n, device="cpu")


def dense_mask(mod, n: int) -> torch.Tensor:
    """(1, 1, n, n) boolean mask from a mask_mod: for the small check only."""
    if n > 4096:
        raise ValueError(f"a dense {n}x{n} mask is not built here (n <= 4096)")
    i = torch.arange(n)
    return mod(0, 0, i[:, None], i[None, :])[None, None]


# -- memory ----------------------------------------------------------------------------------

def mem_needed(n: int) -> int:
    """A generous estimate of one forward's peak at length n (float32 activations of a
    layer, a few copies of each, the kept outputs), plus a margin."""
    per_token = 4 * (16 * HIDDEN + 6 * MLP + 4 * HEADS * HEAD_DIM)
    return n * per_token * 4 + (512 << 20)


# -- timing ----------------------------------------------------------------------------------

def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def forward(model, ids, mask=None):
    return model.model(input_ids=ids, attention_mask=mask).last_hidden_state


def logits(model, ids, mask=None):
    return model(input_ids=ids, attention_mask=mask).logits


def flex_ctx():
    """Static compiles only (what ``dynamic=False`` gives a fresh ``torch.compile``)."""
    return torch._dynamo.config.patch(automatic_dynamic_shapes=False)


# -- the correctness checks ------------------------------------------------------------------

def check(model, n: int) -> list[str]:
    """The checks at length n; returns the failures (empty: all passed)."""
    ids = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(1))
    fails = []

    def report(label, a, b, atol):
        err = (a - b).abs().max().item()
        ok = err <= atol
        print(f"check n={n}: {label}: max|diff| {err:.1e} (atol {atol:.0e}) "
              f"{'ok' if ok else 'FAILED'}")
        if not ok:
            fails.append(label)

    with torch.no_grad():
        switch(model, "spattn")
        sp = logits(model, ids)
        switch(model, "flex_attention")
        for name, mod in mask_mods(n).items():
            with warnings.catch_warnings(), torch.compiler.set_stance("force_eager"):
                warnings.simplefilter("ignore")  # "flex_attention called without compile"
                fx = logits(model, ids, block_mask(mod, n))
            report(f"spattn {PATTERN!r} vs flex ({name} mask_mod, eager)", sp, fx, ATOL_PATTERN)
        switch(model, "sdpa")
        dn = logits(model, ids, dense_mask(mask_mods(n)["arith"], n))
        report(f"spattn {PATTERN!r} vs sdpa with the pattern as a dense mask", sp, dn,
               ATOL_PATTERN)
        switch(model, "spattn", "causal")
        sc = logits(model, ids)
        switch(model, "sdpa")
        sd = logits(model, ids)
        report("spattn 'causal' vs sdpa", sc, sd, ATOL_CAUSAL)
    return fails


# -- one length ------------------------------------------------------------------------------

def run_length(model, n: int, args) -> tuple[list[dict], list[str]]:
    ids = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(2))
    fails: list[str] = []
    rows: list[dict] = []
    print(f"n={n:,}: load average {os.getloadavg()[0]:.2f}", flush=True)
    with torch.no_grad():
        # spattn and sdpa: a warm-up call each, then REPS rounds in alternation
        switch(model, "spattn")
        sp_first, ref = timed(lambda: forward(model, ids))
        switch(model, "sdpa")
        sd_first, _ = timed(lambda: forward(model, ids))
        sp, sd = [], []
        for _ in range(REPS):
            switch(model, "spattn")
            sp.append(timed(lambda: forward(model, ids))[0])
            switch(model, "sdpa")
            sd.append(timed(lambda: forward(model, ids))[0])
        rows.append({"impl": "spattn (pattern)", "ts": sp, "first": sp_first})
        rows.append({"impl": "sdpa (dense causal)", "ts": sd, "first": sd_first})
        print(f"  spattn {statistics.median(sp):.3f} s, sdpa {statistics.median(sd):.3f} s",
              flush=True)
        if n not in args.flex_lengths:
            return rows, fails
        # flex: one cold, static compile per mask_mod
        switch(model, "flex_attention")
        mods = dict(mask_mods(n))
        if args.flex_causal:
            mods["causal"] = causal_mod
        for name, mod in mods.items():
            torch._dynamo.reset()
            tm, bm = timed(lambda mod=mod: block_mask(mod, n))
            with flex_ctx():
                first, out = timed(lambda bm=bm: forward(model, ids, bm))
                ts = [timed(lambda bm=bm: forward(model, ids, bm))[0] for _ in range(REPS)]
            med = statistics.median(ts)
            row = {"impl": f"flex ({name} mask_mod)" if name != "causal" else
                   "flex (its dense causal mask)", "ts": ts, "first": first,
                   "compile": first - med, "mask": tm, "kind": name}
            if name != "causal":
                err = (out - ref).abs().max().item()
                row["err"] = err
                if err > ATOL_PATTERN:
                    fails.append(f"flex ({name}) vs spattn at n={n}: {err:.1e}")
            rows.append(row)
            print(f"  flex {name}: mask {tm:.2f} s, first call {first:.1f} s, "
                  f"steady {med:.3f} s", flush=True)
        torch._dynamo.reset()
    return rows, fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--flex-causal", action="store_true",
                    help="also time the model's flex_attention with its own dense causal mask")
    ap.add_argument("--flex-lengths", type=int, nargs="+", default=None,
                    help="the lengths at which flex is timed (default: every length)")
    ap.add_argument("--fast", action="store_true",
                    help="smoke test: lengths 512 and 1024, flex at 1024 only (under a minute)")
    args = ap.parse_args(argv)
    if args.fast:
        args.lengths, args.flex_lengths = [512, 1024], [1024]
    if args.flex_lengths is None:
        args.flex_lengths = args.lengths
    torch.set_num_threads(os.cpu_count() or 1)
    import torch._inductor.config as icfg
    import transformers

    icfg.force_disable_caches = True  # cold compiles: the compile time printed is real
    icfg.compile_threads = 1  # in-process: no worker pool left competing for the cores
    warnings.filterwarnings("ignore", message=".*dynamo_pgo force disabled.*")

    print(header(f"spattn.hf prefill: Llama-style, {args.layers} layer(s), hidden {HIDDEN}, "
                 f"{HEADS} heads x {HEAD_DIM} ({KV_HEADS} kv heads), MLP {MLP}, float32"))
    print(f"transformers {transformers.__version__}; spattn {spattn.__version__}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    model = build_model(max(args.lengths), args.layers)
    print("flex route: a prepared BlockMask (create_block_mask) as the model's attention_mask "
          "-> transformers' flex_attention integration (its torch.compile(flex_attention))")

    fails = check(model, CHECK_N)
    if fails:
        print(f"correctness check FAILED ({len(fails)}); not timing")
        return 1

    results: dict[int, list[dict]] = {}
    for n in args.lengths:
        need, have = mem_needed(n), guard.available()
        if need > have:
            print(f"n={n:,}: skipped, needs ~{need / 2**30:.1f} GiB, "
                  f"{have / 2**30:.1f} GiB available")
            continue
        rows, f = run_length(model, n, args)
        results[n] = rows
        fails += f

    hdr = ["n", "implementation", "median s", "min..max s", "÷ spattn", "warm-up call s",
           "flex compile s", "flex mask build s", "max|diff| vs spattn"]
    out, ratios = [], {}
    for n, rows in results.items():
        t_sp = statistics.median(rows[0]["ts"])
        flex = [r for r in rows if r.get("kind") in ("arith", "table")]
        best = min(flex, key=lambda r: statistics.median(r["ts"])) if flex else None
        t_sd = statistics.median(rows[1]["ts"])
        ratios[n] = (t_sd / t_sp, statistics.median(best["ts"]) / t_sp if best else None,
                     best["kind"] if best else None)
        for r in rows:
            med = statistics.median(r["ts"])
            name = r["impl"] + (" *" if r is best else "")
            out.append([f"{n:,}", name, f"{med:.3f}",
                        f"{min(r['ts']):.3f}..{max(r['ts']):.3f}",
                        "1.00x" if r is rows[0] else f"{med / t_sp:.2f}x",
                        f"{r['first']:.2f}",
                        f"{r['compile']:.1f}" if "compile" in r else "-",
                        f"{r['mask']:.3f}" if "mask" in r else "-",
                        f"{r['err']:.1e}" if "err" in r else "-"])
    print()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"pattern: {PATTERN} (& causal); median of {REPS} timed calls of model.model "
          f"(after a warm-up call); ÷ spattn: "
          f"that row's time over spattn's (sdpa/spattn, flex/spattn); * flex's figure (the "
          f"faster mask_mod)")
    print(table(hdr, out))
    print()
    for n, (r_sd, r_fx, kind) in ratios.items():
        fx = f"flex/spattn {r_fx:.2f}x (flex: {kind} mask_mod)" if kind else "flex not timed"
        print(f"n={n:,}: sdpa/spattn {r_sd:.2f}x, {fx}")
    for f in fails:
        print(f"check FAILED: {f}")
    missed = False
    if TARGET_N in ratios:
        got = ratios[TARGET_N][0]
        missed = got <= 1.0
        print(f"target: spattn faster than sdpa at n = {TARGET_N:,} (sdpa/spattn > 1): "
              f"{got:.2f}x {'MISSED' if missed else 'met'}")
    else:
        print(f"target: spattn faster than sdpa at n = {TARGET_N:,}: not measured "
              f"(n = {TARGET_N:,} not among the lengths)")
    return 1 if fails or missed else 0


if __name__ == "__main__":
    sys.exit(main())
