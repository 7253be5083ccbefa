"""Generate with a transformers model on spattn: a cache that stays small.

A random-init Llama-style model (built here, no download) generates the same number of tokens
twice: with its own ``sdpa`` attention and transformers' ``DynamicCache`` (every key of every
layer kept), and switched to spattn with ``streaming(4, 64)`` (four attention sinks and a
window of 64: StreamingLLM) through :class:`spattn.hf.PatternCache`, which keeps only the keys
the pattern can still attend. At each checkpoint the table shows the generation speed (over the
last 256 tokens) and the bytes of keys and values each cache holds.

    python examples/hf_generate.py            # checkpoints at 2K, 8K and 32K tokens
    python examples/hf_generate.py --fast     # 128 and 256 tokens (a smoke test)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import transformers

import spattn.hf

PATTERN = "streaming(4, 64)"
WINDOW = 256  # tokens over which the speed is measured (64 with --fast)


def model_for(seq: int):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=seq + 64)
    return transformers.LlamaForCausalLM(cfg).eval()


def cache_bytes(cache) -> int:
    if isinstance(cache, spattn.hf.PatternCache):
        return cache.nbytes
    return sum(x.numel() * x.element_size() for layer in cache.layers
               for x in (layer.keys, layer.values) if x is not None)


class Checkpoints(transformers.StoppingCriteria):
    """Records, at each checkpoint, the speed over the last WINDOW tokens and the cache
    size (never stops generation)."""

    def __init__(self, prompt: int, marks: list[int], cache):
        self.prompt, self.marks, self.cache = prompt, set(marks), cache
        self.times: dict[int, float] = {}
        self.rows: dict[int, tuple[float, int]] = {}

    def __call__(self, input_ids, scores, **kwargs):
        done = input_ids.shape[1] - self.prompt
        now = time.perf_counter()
        self.times[done] = now
        self.times.pop(done - WINDOW - 1, None)
        if done in self.marks and done - WINDOW in self.times:
            rate = WINDOW / (now - self.times[done - WINDOW])
            self.rows[done] = (rate, cache_bytes(self.cache))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def run(model, marks: list[int], spattn_cache: bool):
    prompt = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(1))
    if spattn_cache:
        spattn.hf.use(model, PATTERN)
        cache = spattn.hf.PatternCache(model)
    else:
        model.set_attn_implementation("sdpa")
        cache = transformers.DynamicCache(config=model.config)
    ck = Checkpoints(prompt.shape[1], marks, cache)
    with torch.no_grad():
        model.generate(prompt, cache=cache, max_new_tokens=max(marks),
                       min_new_tokens=max(marks), do_sample=False, eos_token_id=None,
                       pad_token_id=0, stopping_criteria=[ck])
    return ck.rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="128 and 256 tokens")
    args = ap.parse_args(argv)
    global WINDOW
    torch.set_num_threads(os.cpu_count() or 1)
    if args.fast:
        WINDOW = 64
    marks = [128, 256] if args.fast else [2048, 8192, 32768]
    model = model_for(max(marks) + 32)
    print(f"random-init Llama-style model: 2 layers, 4 query heads, 2 key/value heads, "
          f"float32; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f}")
    dense = run(model, marks, False)
    sparse = run(model, marks, True)
    print(f"\n| generated | sdpa + DynamicCache tok/s | spattn {PATTERN} + PatternCache "
          f"tok/s | DynamicCache KiB | PatternCache KiB |")
    print("|---:|---:|---:|---:|---:|")
    for t in marks:
        (r0, b0), (r1, b1) = dense[t], sparse[t]
        print(f"| {t:,} | {r0:,.0f} | {r1:,.0f} | {b0 / 1024:,.0f} | {b1 / 1024:,.0f} |")
    grows = dense[marks[-1]][1] > dense[marks[0]][1]
    flat = sparse[marks[-1]][1] == sparse[marks[0]][1]
    print(f"\nDynamicCache grows with the tokens: {grows}; PatternCache stays at "
          f"{sparse[marks[-1]][1] / 1024:,.0f} KiB: {flat}")
    return 0 if grows and flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
