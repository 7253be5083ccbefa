"""The classic question, made runnable: does adding two global tokens to a sliding window let a
shallow model see across a long input?

    Pattern A: local(16)
    Pattern B: local(16) | global([0, -1])

Part 1 prints what spattn's analysis says (receptive field after L layers). Part 2 trains a
tiny transformer (attention through spattn.attention, CPU backend) on a long-range task: the first
token of a long sequence is a class id, filler follows, and the last position must output the
class. With two layers, A's last position sees only the last 2 * 16 = 32 tokens, so it can
only guess; B's last position is a global token and sees everything in one hop.

    python examples/seed_patterns.py                  # full run (under two minutes on 2 cores)
    python examples/seed_patterns.py --fast           # a few seconds (also: SPATTN_FAST=1)
    python examples/seed_patterns.py --out plot.png
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

import spattn

PATTERNS = {"A": "local(16)", "B": "local(16) | global([0, -1])"}
NUM_CLASSES = 8
FILLER = NUM_CLASSES      # token id of the filler between the first and the last position
QUERY = NUM_CLASSES + 1   # token id at the last position
VOCAB = NUM_CLASSES + 2
LR = 1e-2


def reaches(pattern: spattn.Pattern, n: int, layers: int, src: int, dst: int) -> bool:
    """Whether information from position ``src`` reaches position ``dst`` within ``layers``
    stacked layers (an edge j -> i when M[i, j] = 1; each layer keeps its own token)."""
    m = pattern.to_csr(n)
    seen = np.zeros(n, bool)
    seen[src] = True
    for _ in range(layers):
        seen = seen | (m @ seen.astype(np.int32) > 0)
    return bool(seen[dst])


def analysis(n: int, depths: list[int]) -> list[dict]:
    rows = []
    for name, text in PATTERNS.items():
        p = spattn.compile(text)
        d = p.stats(n, block_size=64).to_dict()
        rf = d["receptive_field"]
        cov = {int(k): v for k, v in rf["coverage"].items()}
        row = {"name": name, "pattern": str(p), "density": d["density"],
               "hops_to_full": rf["hops_to_full"], "coverage": cov}
        for L in depths:
            row[f"reach{L}"] = reaches(p, n, L, 0, n - 1)
        rows.append(row)
    return rows


def make_batch(batch: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (batch, n): position 0 a class id in [0, 8), then filler tokens, then a query
    token at the last position. Targets: the class id."""
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    x = torch.full((batch, n), FILLER)
    x[:, 0] = y
    x[:, -1] = QUERY
    return x, y


class Block(nn.Module):
    """A pre-norm transformer block whose attention is ``spattn.attention`` with ``pattern``.

    With ``last_only`` only the last position is computed: ``spattn.attention`` takes m < n
    queries as the last m positions (bottom-right alignment), so the final layer of the
    classifier pays for one query, not n."""

    def __init__(self, dim: int, heads: int, pattern: str):
        super().__init__()
        self.heads, self.pattern = heads, spattn.compile(pattern)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        B, n, dim = h.shape
        q, k, v = (t.reshape(B, n, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(self.norm1(h)).chunk(3, dim=-1))
        if last_only:
            q, h = q[:, :, -1:], h[:, -1:]
        o = spattn.attention(q, k, v, self.pattern)  # (B, heads, m, dim // heads)
        h = h + self.out(o.transpose(1, 2).reshape(B, q.shape[2], dim))
        return h + self.ff(self.norm2(h))


class Classifier(nn.Module):
    """Embedding -> ``layers`` sparse blocks -> classify the last position."""

    def __init__(self, pattern: str, layers: int, dim: int = 32, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, pattern) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for i, b in enumerate(self.blocks):
            h = b(h, last_only=i == len(self.blocks) - 1)
        return self.head(self.norm(h[:, -1]))


def train(pattern: str, layers: int, n: int, steps: int, batch: int, seed: int = 0,
          eval_batches: int = 4) -> tuple[float, int, float]:
    """Train on fresh batches; stop early once the running training accuracy is perfect.
    Returns (held-out accuracy, steps taken, seconds)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(pattern, layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    t0 = time.perf_counter()
    recent: list[float] = []
    step = 0
    while step < steps:
        step += 1
        x, y = make_batch(batch, n, gen)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = (recent + [(logits.argmax(-1) == y).float().mean().item()])[-5:]
        if len(recent) == 5 and min(recent) == 1.0:
            break
    secs = time.perf_counter() - t0
    model.eval()
    test_gen = torch.Generator().manual_seed(12345)
    correct = total = 0
    with torch.no_grad():
        for _ in range(eval_batches):
            x, y = make_batch(128, n, test_gen)
            correct += (model(x).argmax(-1) == y).sum().item()
            total += len(y)
    return correct / total, step, secs


def plot(rows: list[dict], acc: dict, depths: list[int], n: int, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        ks = sorted(r["coverage"])
        ax1.plot(ks, [r["coverage"][k] for k in ks], marker="o",
                 label=f"{r['name']}: {r['pattern']}")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("layers L")
    ax1.set_ylabel("mean receptive-field coverage")
    ax1.set_title(f"Receptive field at n = {n}")
    ax1.legend(fontsize=8)
    width = 0.35
    xs = np.arange(len(depths))
    for k, r in enumerate(rows):
        ax2.bar(xs + (k - 0.5) * width, [acc[r["name"], L] for L in depths], width,
                label=f"{r['name']}: {r['pattern']}")
    ax2.axhline(1 / NUM_CLASSES, color="gray", linestyle="--", linewidth=1, label="chance")
    ax2.set_xticks(xs, [f"{L} layer{'s' if L > 1 else ''}" for L in depths])
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("held-out accuracy")
    ax2.set_title("Recover the first token at the last position")
    ax2.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", default=os.environ.get("SPATTN_FAST") == "1",
                    help="tiny run for CI (a few seconds)")
    ap.add_argument("--out", default="seed_patterns.png", help="where to save the plot")
    ap.add_argument("-n", type=int, default=None, help="sequence length (default 256; 64 fast)")
    args = ap.parse_args(argv)
    n = args.n or (64 if args.fast else 256)
    steps, batch, evals = (6, 8, 1) if args.fast else (100, 32, 4)
    depths = [1, 2]
    torch.set_num_threads(min(2, torch.get_num_threads()))

    print(f"Sequence length n = {n}; positions 0 and n-1 = {n - 1}\n")
    rows = analysis(n, depths)
    print(f"{'':2} {'pattern':30} {'density':>8} {'hops_to_full':>12} "
          + " ".join(f"{'cov@' + str(L):>7}" for L in depths)
          + " " + " ".join(f"{'0->last@' + str(L):>10}" for L in depths))
    for r in rows:
        cov = [r["coverage"].get(L, 1.0 if L >= r["hops_to_full"] else float("nan"))
               for L in depths]
        print(f"{r['name']:2} {r['pattern']:30} {r['density']:8.4f} {r['hops_to_full']:12d} "
              + " ".join(f"{c:7.3f}" for c in cov) + " "
              + " ".join(f"{'yes' if r[f'reach{L}'] else 'no':>10}" for L in depths))
    print("\ncov@L: mean fraction of positions in a query's receptive field after L layers;"
          "\n0->last@L: does position 0 reach the last position within L layers?\n")

    acc: dict[tuple[str, int], float] = {}
    print(f"Training (batch {batch}, at most {steps} steps, stop at 5 perfect batches):")
    print(f"{'':2} {'pattern':30} {'layers':>6} {'accuracy':>9} {'steps':>6} {'time':>7}")
    t_all, cpu_all = time.perf_counter(), time.process_time()
    for name, text in PATTERNS.items():
        for L in depths:
            a, st, secs = train(text, L, n, steps, batch, eval_batches=evals)
            acc[name, L] = a
            print(f"{name:2} {text:30} {L:6d} {a:9.3f} {st:6d} {secs:6.1f}s", flush=True)
    print(f"(chance = {1 / NUM_CLASSES:.3f}; training took {time.perf_counter() - t_all:.1f}s "
          f"wall, {time.process_time() - cpu_all:.1f}s CPU)\n")

    print(f"Accuracy (held-out, {128 * evals} sequences):")
    print(f"{'pattern':34}" + "".join(f"{str(L) + ' layer' + ('s' if L > 1 else ''):>10}"
                                      for L in depths))
    for name, text in PATTERNS.items():
        print(f"{name + ': ' + text:34}" + "".join(f"{acc[name, L]:10.3f}" for L in depths))
    plot(rows, acc, depths, n, args.out)
    print(f"\nplot saved to {args.out}")


if __name__ == "__main__":
    main()
