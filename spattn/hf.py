"""spattn inside transformers models (SPEC section 6): ``spattn.hf.use(model, patterns)``.

In: a transformers model whose attention layers dispatch through transformers' attention
interface (Llama, Mistral, Qwen2, Gemma, Phi-3, ...), and patterns: one for every layer, a list
with one per layer, a dict from layer index (or from the model's ``layer_types`` names) to
pattern, or a :func:`spattn.load`\\ ed config; each entry may itself be a list with one pattern
per query head. Out: the same model, running spattn's attention: ``model(...)``, training and
``model.generate(...)`` (with any transformers cache, or :class:`PatternCache`).

How: :func:`use` registers :func:`attention_forward` and :func:`spattn.hf_mask.mask_function`
under the name "spattn" in transformers' attention and attention-mask interfaces, stores each
layer's patterns on its attention modules and sets the model's implementation to "spattn".
Each call then applies the layer's pattern on top of the model's own mask: the effective
pattern is ``pattern & structure``, where the structure is ``causal`` (or ``full`` for a
bidirectional model), cut to the layer's sliding window if it has one, and it checks the
model's own mask function against that structure on a few rows. Positions are counted from
each row's first real token (left padding shifts them; padding keys are never attended);
queries sit at their cache positions, so static and sliding caches work. Keys and values are
never copied per query head (grouped-query attention is native).

Packed sequences (``DataCollatorWithFlattening``: one row, position ids that restart at 0, no
attention mask, ``use_cache=False``) run as documents: ``spattn.attention(...,
documents=lengths)`` with the lengths transformers' own mask separates, each document getting
the pattern at its own length with positions from its first token, and no attention across
documents. Batch rows with different packings are grouped (one call per layout). Position
ids that restart where the model's mask does not separate them (a cache is in use) are
refused: packing is for training and scoring, not for generation.
"""

from __future__ import annotations

import functools
from typing import Any

from . import hf_mask
from .errors import SpattnError
from .hf_cache import PatternCache, num_layers, pending, text_config
from .pattern import Pattern, compile

__all__ = ["use", "PatternCache", "attention_forward", "NAME"]

NAME = "spattn"  #: the attention implementation name registered with transformers


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, hf_mask.mask_function)


def _entry(x: Any, where: str):
    """One layer's patterns: a Pattern, or a tuple with one per head."""
    try:
        if isinstance(x, (str, Pattern)):
            return compile(x)
        if isinstance(x, (list, tuple)) and x and all(isinstance(y, (str, Pattern)) for y in x):
            return tuple(compile(y) for y in x)
    except SpattnError as e:
        raise type(e)(f"{where}: {e}") from None
    raise SpattnError(f"{where}: a pattern is text, a spattn.Pattern or a list with one per "
                      f"head; got {x!r:.80}")


def layer_patterns(patterns: Any, config) -> list:
    """Each layer's patterns (a Pattern, or a tuple per head) from what :func:`use` takes."""
    L = num_layers(config)
    from .config import Config

    if isinstance(patterns, Config):  # spattn.load()ed
        if not patterns.has_model:
            raise SpattnError(f"{patterns!r} has no model section: give a pattern per layer")
        if patterns.num_layers != L:
            raise SpattnError(f"{patterns!r} describes {patterns.num_layers} layers; the "
                              f"model has {L}")
        per = [patterns.layer_patterns(i) for i in range(L)]
        return [p[0] if len(set(p)) == 1 else tuple(p) for p in per]
    if isinstance(patterns, (str, Pattern)):
        p = _entry(patterns, "pattern")
        return [p] * L
    if isinstance(patterns, dict):
        types = getattr(config, "layer_types", None)
        out = [compile("full")] * L  # layers not named keep the model's own mask
        for key, x in patterns.items():
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise SpattnError(f"pattern dict keys are layer indices or layer types; got "
                                  f"{key!r}")
            if isinstance(key, int):
                if not -L <= key < L:
                    raise SpattnError(f"layer {key} does not exist: the model has {L} layers")
                out[key % L] = _entry(x, f"layer {key}")
                continue
            if not types:
                raise SpattnError(f"layer type {key!r}: this model's config has no layer_types")
            hit = [i for i, t in enumerate(types) if t == key]
            if not hit:
                raise SpattnError(f"layer type {key!r} is not among the model's layer types "
                                  f"{sorted(set(types))}")
            for i in hit:
                out[i] = _entry(x, f"layer type {key!r}")
        return out
    if isinstance(patterns, (list, tuple)):
        if len(patterns) != L:
            raise SpattnError(f"got {len(patterns)} per-layer patterns for a model with {L} "
                              f"layers; give one pattern, or exactly one per layer")
        return [_entry(x, f"layer {i}") for i, x in enumerate(patterns)]
    raise SpattnError(f"patterns must be a pattern, a list per layer, a dict or a "
                      f"spattn.load()ed config; got {type(patterns).__name__}")


def use(model, patterns: Any):
    """Switch ``model`` to spattn's attention with ``patterns`` (see the module docstring);
    returns the model. ``model.set_attn_implementation("sdpa")`` switches back."""
    config = text_config(model)
    per = layer_patterns(patterns, config)
    H = getattr(config, "num_attention_heads", None)
    for i, p in enumerate(per):
        if isinstance(p, tuple) and H is not None and len(p) != H:
            raise SpattnError(f"layer {i}: {len(p)} per-head patterns for {H} heads")
    _register()
    found = 0
    for mod in model.modules():
        idx = getattr(mod, "layer_idx", None)
        if isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < len(per):
            mod.spattn_pattern = per[idx]
            found += 1
    if not found:
        raise SpattnError(f"{type(model).__name__} has no attention modules with a layer_idx: "
                          f"spattn.hf needs a model that uses transformers' attention interface")
    model.set_attn_implementation(NAME)
    if getattr(model.config, "_attn_implementation", None) != NAME:
        raise SpattnError(f"{type(model).__name__} does not let its attention implementation "
                          f"be set (it does not dispatch through transformers' attention "
                          f"interface)")
    return model


@functools.lru_cache(maxsize=1024)
def _effective(spec, H: int, structure: str) -> tuple:
    """A layer's per-head effective patterns: its patterns (one, or a tuple per head) on top
    of the model's structure (each distinct pattern intersected once)."""
    from .api import resolve_patterns

    s = compile(structure)
    pats = resolve_patterns(list(spec) if isinstance(spec, tuple) else spec, H)
    made = {p: p if structure == "full" else p & s for p in dict.fromkeys(pats)}
    return tuple(made[p] for p in pats)


def _structure(kind: str, window: int | None) -> str:
    if window is None:
        return "causal" if kind == "causal" else "full"
    return f"window({window - 1}, 0)" if kind == "causal" else f"local({window})"


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None,
                      sliding_window: int | None = None, softcap: float | None = None,
                      **kwargs):
    """The "spattn" entry of transformers' ``AttentionInterface``: (B, q_len, H, D) output
    of the module's patterns over the call's keys, and no attention weights."""
    where = f"spattn attention in {type(module).__name__}"
    spec = getattr(module, "spattn_pattern", None)
    if spec is None:
        raise SpattnError(f"{where} (layer {getattr(module, 'layer_idx', '?')}) has no spattn "
                          f"pattern: call spattn.hf.use(model, patterns)")
    if kwargs.get("output_attentions"):
        raise SpattnError(f"{where}: output_attentions=True is not supported (spattn never "
                          f"forms the attention matrix); use attn_implementation='eager'")
    if dropout:
        raise SpattnError(f"{where}: attention dropout {dropout} is not supported; set "
                          f"config.attention_dropout = 0.0 (or model.eval())")
    if softcap:
        raise SpattnError(f"{where}: attention logit soft-capping ({softcap}) is not "
                          f"supported")
    if kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None:
        raise SpattnError(f"{where}: attention biases and sinks as extra logits are not "
                          f"supported")
    if attention_mask is None:
        mask = hf_mask.default_mask(query, key)
    elif isinstance(attention_mask, hf_mask.ModelMask):
        mask = attention_mask
    else:
        raise SpattnError(f"{where}: got a prepared {type(attention_mask).__name__} mask of "
                          f"shape {tuple(getattr(attention_mask, 'shape', ()))}; spattn takes "
                          f"2-D padding masks (a 4-D custom mask cannot be applied sparsely)")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    kind = "causal" if causal else "full"
    mask.check_positions(kwargs.get("position_ids"), where)
    mask.check_structure(kind, sliding_window, where)
    eff = _effective(spec, query.shape[1], _structure(kind, sliding_window))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = pending(key)
    if layer is not None:
        if mask.documents is not None:
            raise SpattnError(f"{where}: PatternCache does not hold packed sequences; pass "
                              f"use_cache=False (packing is for training and scoring)")
        out = layer.attend(query, key, value, eff, mask, scale)
    else:
        out = attend(query, key, value, eff, mask, scale)
    return out.transpose(1, 2).contiguous(), None


def attend(q, k, v, patterns: tuple, mask: hf_mask.ModelMask, scale: float):
    """(B, H, t, D) attention of the call's queries over its keys (B, H_kv, kv_length, D)
    under the per-head ``patterns``, in each row's real-token positions."""
    from .api import attention

    t = q.shape[2]
    if mask.q_length != t or k.shape[2] < mask.kv_length:
        raise SpattnError(f"the mask describes {mask.q_length} queries over {mask.kv_length} "
                          f"keys; the attention call got {t} queries and {k.shape[2]} keys")
    parts = []
    for ((a, e), docs), rows in mask.doc_groups().items():
        q0, k0 = max(mask.q_offset, a), max(mask.kv_offset, a)
        if q0 >= e:
            continue
        sel = hf_mask.batch_index(rows, q.device)
        s0, s1 = q0 - mask.q_offset, e - mask.q_offset
        qg = q[sel][:, :, s0:s1]
        kg = k[sel][:, :, k0 - mask.kv_offset:e - mask.kv_offset]
        vg = v[sel][:, :, k0 - mask.kv_offset:e - mask.kv_offset]
        if docs is not None:  # packed: queries and keys are the same positions 0 .. N - 1
            if (q0, k0, e) != (0, 0, sum(docs)) or qg.shape[2] != kg.shape[2]:
                raise SpattnError(f"packed sequences of lengths {list(docs)} need queries and "
                                  f"keys at the same {sum(docs)} positions; got queries "
                                  f"{q0}..{e - 1} over keys {k0}..{e - 1}")
            o = attention(qg, kg, vg, list(patterns), documents=list(docs), scale=scale)
        elif k0 == a:  # every key of the run is here
            o = attention(qg, kg, vg, list(patterns), scale=scale)
        else:
            o = held_attention(qg, kg, vg, patterns, e - a, k0 - a, scale)
        parts.append((sel, s0, s1, o))
    return hf_mask.assemble(parts, q, v)


def held_attention(q, k, v, patterns: tuple, n: int, start: int, scale: float):
    """The last m = q.shape[2] rows of n positions when only keys ``start .. n - 1`` are
    held (a sliding-window cache dropped the rest): an error if a row attends a dropped key."""
    import numpy as np

    from spattn.backends import cpu_decode

    def virtual(lo, hi):
        bad = (lo < start) & (hi > lo)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SpattnError(f"the model's cache no longer holds key {int(lo[i])}, which the "
                              f"pattern attends (it holds positions {start}..{n - 1}); use "
                              f"spattn.hf.PatternCache")
        return np.maximum(lo - start, 0), np.maximum(hi - start, 0)

    return cpu_decode.attend_rows(q, [k], [v], cpu_decode.head_groups(patterns), n,
                                  cpu_decode.contiguous(n - start), virtual, scale)
