"""Quick start: compile a pattern, print its canonical form and stats, run attention with it
and check the result against dense attention with the same mask.

    python examples/quickstart.py            # a few seconds on a laptop CPU
"""

from __future__ import annotations

import json
import time

import torch

import spattn

N = 1024  # sequence length for the demo

# 1. Compile pattern text into a Pattern (immutable, hashable, length-generic).
p = spattn.compile("local(64) | global([0,-1])")
print("pattern (canonical form):", p)
assert spattn.compile(str(p)) == p

# 2. Analyse it at a sequence length: density, receptive field, block efficiency, ...
stats = p.stats(N, block_size=128).to_dict()
rf = stats["receptive_field"]
print(f"\nstats at n = {N}:")
print(f"  pairs (nnz)        {stats['nnz']:,} of {N * N:,}  (density {stats['density']:.4f})")
print(f"  keys per query     min {stats['row_degree']['min']}, "
      f"mean {stats['row_degree']['mean']:.1f}, max {stats['row_degree']['max']}")
print(f"  receptive field    every token reaches every other after "
      f"{rf['hops_to_full']} layer(s)")
cov = {k: round(v, 3) for k, v in rf["coverage"].items()}
print(f"                     mean coverage after L layers: {json.dumps(cov)}")
print(f"  128-blocks         {stats['blocks']['nonzero']} non-empty, efficiency "
      f"{stats['blocks']['efficiency']:.3f}")
print(f"  causal             {stats['causal']}")

# 3. Run sparse attention on random tensors: q, k, v are (batch, heads, seq, head_dim).
torch.manual_seed(0)
B, H, D = 2, 4, 32
q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
t0 = time.perf_counter()
out = spattn.attention(q, k, v, p)  # backend="auto": cpu here, triton on CUDA tensors
t_sparse = time.perf_counter() - t0
print(f"\nspattn.attention: output {tuple(out.shape)} in {t_sparse * 1000:.1f} ms")

# 4. Compare with dense attention masked by the same pattern (the exact (n, n) mask).
mask = torch.from_numpy(p.to_dense(N))
ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                       attn_mask=mask)
err = (out.double() - ref).abs().max().item()
print(f"max |sparse - dense| = {err:.2e}")
assert err < 1e-4, err

# 5. The same pattern inside a model: a drop-in multi-head self-attention module.
attn = spattn.nn.SparseAttention(embed_dim=128, num_heads=4, pattern=p)
y = attn(torch.randn(2, N, 128))
print(f"\n{attn}\n-> output {tuple(y.shape)}")
print("\nok")
