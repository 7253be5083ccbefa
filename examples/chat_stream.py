"""Generate a long chat in flat memory: a small spattn model decoding with ``streaming(4, 1024)``.

The model is a few random-init layers of ``spattn.nn`` modules (embedding, a
``SparseEncoder`` whose layers all use the StreamingLLM pattern, a tied output head); it
generates greedily one token at a time, each layer decoding through a ``spattn.KVCache``. The
caches hold the 4 sink tokens and the last 1024 keys and nothing else, so memory stays flat
however long the chat runs. Next to it runs the same loop with a plain growing cache: every
key kept in a buffer that doubles, and ``spattn.attention`` with the same pattern over all of
them (what a user without ``KVCache`` would write). Both generate the same tokens — checked at
the end — but the plain cache's memory grows by the same bytes every token.

Usage: ``python examples/chat_stream.py [--tokens 100000] [--plain-tokens N] [--fast]``.
``--fast`` (what CI runs) generates 1,500 tokens with a 128-key window. Every 10% of the run
it prints the resident memory of the process and the bytes the caches hold. ``--plain-tokens``
(default: all) shortens the plain loop; its memory at the full length is then extrapolated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import spattn


def rss_mib() -> float:
    """Resident memory of this process (MiB), from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=512, E=64, H=4, layers=2, pattern="streaming(4, 1024)"):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, E)
        self.body = spattn.nn.SparseEncoder(E, H, [pattern] * layers, dim_feedforward=2 * E)

    def forward(self, tokens, caches=None):
        x = self.body(self.emb(tokens), caches=caches)
        return x @ self.emb.weight.T  # tied head: logits (B, L, vocab)


class PlainCache:
    """What a plain cache does: keep every key and value (in a buffer that doubles) and run
    the pattern over all of them."""

    def __init__(self, pattern):
        self.pattern = spattn.compile(pattern)
        self.k = self.v = None
        self.length = 0

    def attend(self, q, k, v, scale=None):
        B, H, t, D = k.shape
        if self.k is None or self.length + t > self.k.shape[2]:
            cap = max(2 * (self.k.shape[2] if self.k is not None else 0), self.length + t, 64)
            nk, nv = (k.new_empty(B, H, cap, D) for _ in range(2))
            if self.k is not None:
                nk[:, :, :self.length] = self.k[:, :, :self.length]
                nv[:, :, :self.length] = self.v[:, :, :self.length]
            self.k, self.v = nk, nv
        self.k[:, :, self.length:self.length + t] = k
        self.v[:, :, self.length:self.length + t] = v
        self.length += t
        K, V = self.k[:, :, :self.length], self.v[:, :, :self.length]
        return spattn.attention(q, K, V, self.pattern, scale=scale)

    @property
    def nbytes(self):
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


def generate(model, caches, prompt, tokens, label, every):
    """Greedy decoding; prints memory every ``every`` tokens; returns the generated ids."""
    out = []
    with torch.no_grad():
        logits = model(prompt, caches)
        tok = logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for i in range(1, tokens + 1):
            out.append(int(tok))
            logits = model(tok, caches)
            tok = logits[:, -1:].argmax(-1)
            if i % every == 0 or i == tokens:
                held = sum(c.nbytes for c in caches)
                keys = getattr(caches[0], "held", caches[0].length)
                ms = (time.perf_counter() - t0) / i * 1e3
                print(f"  {label:<6} {i:>8,} tokens: resident {rss_mib():8.1f} MiB, caches "
                      f"{held / 2**20:8.2f} MiB, keys held per layer {keys:>7,}, "
                      f"{ms:.2f} ms/token", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--plain-tokens", type=int, default=None)
    ap.add_argument("--fast", action="store_true", help="a short run (CI)")
    args = ap.parse_args(argv)
    window = 1024
    if args.fast:
        args.tokens, window = 1500, 128
    if args.plain_tokens is None:
        args.plain_tokens = args.tokens
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    pattern = f"streaming(4, {window})"
    model = TinyLM(pattern=pattern).eval()
    prompt = torch.randint(0, 512, (1, 32))
    every = max(1, args.tokens // 10)
    print(f"spattn KVCache, {pattern}, {len(model.body.layers)} layers:")
    caches = model.body.new_caches()
    ids = generate(model, caches, prompt, args.tokens, "spattn", every)
    assert all(c.held <= 4 + window for c in caches), [c.held for c in caches]
    flat = caches[0].capacity
    print(f"plain growing cache (every key kept), {min(args.plain_tokens, args.tokens):,} "
          f"tokens, the same pattern over all of them:")
    plain = [PlainCache(pattern) for _ in model.body.layers]
    n_plain = min(args.plain_tokens, args.tokens)
    plain_ids = generate(model, plain, prompt, n_plain, "plain", max(1, n_plain // 5))
    per_token = 2 * model.body.layers[0].attn.embed_dim * 4  # K and V, fp32, per layer
    need = per_token * len(plain) * (args.tokens + prompt.shape[1])
    if n_plain == args.tokens:
        what = f"holds {sum(c.nbytes for c in plain) / 2**20:,.1f} MiB of buffers"
    else:
        what = "would need"
    print(f"plain cache at {args.tokens:,} tokens {what} ({need / 2**20:,.1f} MiB of keys and "
          f"values); the spattn caches hold {sum(c.nbytes for c in caches) / 2**20:,.2f} MiB "
          f"({flat:,} slots per layer, unchanged since the window filled)")
    same = ids[:n_plain] == plain_ids
    print(f"same {n_plain:,} tokens from both loops: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
