"""``torch.nn`` modules built on :func:`spattn.attention`.

In: token embeddings (B, L, E) and a pattern (text, :class:`~spattn.Pattern`, one per head,
or a layer of a YAML :class:`~spattn.config.Config`). Out: (B, L, E).

* :class:`SparseAttention`: multi-head self-attention with input and output projections, the
  parameter layout of ``torch.nn.MultiheadAttention`` (so its ``state_dict`` loads), optional
  key padding, batch-first by default.
* :class:`SparseEncoderLayer` and :class:`SparseEncoder`: a pre-norm transformer encoder
  block and a stack of them, buildable from a YAML model section in one call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .api import attention, resolve_patterns
from .checks import positive_int
from .config import format_ranges
from .errors import ConfigError, ShapeError, SpattnError
from .pattern import Pattern

__all__ = ["SparseAttention", "SparseEncoderLayer", "SparseEncoder"]


def _config_and_dim(config: Any, embed_dim: int | None):
    """A loaded config and the embedding width: ``embed_dim`` or the file's model.embed_dim."""
    from .config import Config, load

    cfg = config if isinstance(config, Config) else load(config)
    E = embed_dim if embed_dim is not None else cfg.embed_dim
    if E is None:
        raise ConfigError(f"{cfg.label}: pass embed_dim= or set model.embed_dim in the file")
    return cfg, E


class SparseAttention(nn.Module):
    """Multi-head self-attention restricted to a sparse pattern.

    A drop-in for ``torch.nn.MultiheadAttention`` used as self-attention::

        attn = SparseAttention(512, 8, "local(64) | global([0, -1])")
        y = attn(x)                                  # x: (B, L, 512) -> y: (B, L, 512)
        y = attn(x, key_padding_mask=pad)            # pad: (B, L) bool, True = padding

    Args:
        embed_dim: model width E; must be divisible by ``num_heads``.
        num_heads: number of heads H (head width E // H).
        pattern: pattern text, a :class:`~spattn.Pattern`, or a list of H of them (one per
            head).
        backend: ``"auto"`` (triton for CUDA parameters when importable, cpu otherwise; the
            repr says which), ``"cpu"``, ``"triton"`` or a plugin's name.
        bias: whether the projections have biases.
        dropout: must be 0.0. Sparse backends never materialise attention weights, so
            attention-weight dropout (as in ``nn.MultiheadAttention``) is not available; put
            ``nn.Dropout`` on the output instead.
        batch_first: inputs are (B, L, E) when True (the default), (L, B, E) when False.
        scale: softmax scale; default 1 / sqrt(E // H).

    Parameters are named as in ``nn.MultiheadAttention`` (``in_proj_weight`` (3E, E),
    ``in_proj_bias`` (3E), ``out_proj``), so ``load_state_dict`` accepts its state dict.

    Key padding: ``key_padding_mask[b, j] = True`` removes token j of sequence b. Each
    sequence is then processed exactly as if its padding tokens were not there: the pattern is
    evaluated at the sequence's real length (so ``global([-1])`` is its last real token and
    ``n`` its real length), and outputs at padded positions are zero. Sequences of equal real
    length share one backend call. Without a mask every position is a real token.
    """

    def __init__(self, embed_dim: int, num_heads: int, pattern: Any, backend: str = "auto",
                 *, bias: bool = True, dropout: float = 0.0, batch_first: bool = True,
                 scale: float | None = None, device: Any = None, dtype: Any = None):
        super().__init__()
        E = positive_int(embed_dim, "embed_dim")
        H = positive_int(num_heads, "num_heads")
        if E % H:
            raise SpattnError(f"embed_dim = {E} is not divisible by num_heads = {H}")
        if dropout != 0.0:
            raise SpattnError(f"dropout = {dropout!r}: sparse backends do not materialise "
                              "attention weights, so attention-weight dropout is not "
                              "available; use dropout=0.0 and an nn.Dropout on the output")
        if not isinstance(backend, str) or not (backend == "auto" or backend.isidentifier()):
            raise SpattnError(f"backend must be a name such as 'auto', 'cpu' or 'triton', got "
                              f"{backend!r}")
        if scale is not None:
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                raise SpattnError(f"scale must be a number, got {scale!r}") from None
        self.embed_dim = E
        self.num_heads = H
        self.head_dim = E // H
        self.patterns: tuple[Pattern, ...] = resolve_patterns(pattern, H)
        for p in self.patterns:
            str(p)  # cache the canonical text: torch.compile passes it to spattn's operator
        self.backend = backend
        self.batch_first = bool(batch_first)
        self.scale = scale
        kw = {"device": device, "dtype": dtype}
        self.in_proj_weight = nn.Parameter(torch.empty(3 * E, E, **kw))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * E, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(E, E, bias=bias, **kw)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: Any, layer: int, embed_dim: int | None = None,
                    **kwargs: Any) -> SparseAttention:
        """The attention of ``layer`` in a YAML model config (a :class:`spattn.config.Config`
        or a path to load): its ``num_heads`` patterns, the model's ``backend`` and (unless
        given) its ``embed_dim``. ``kwargs`` go to the constructor."""
        cfg, E = _config_and_dim(config, embed_dim)
        kwargs.setdefault("backend", cfg.backend)
        return cls(E, cfg.num_heads, cfg.layer_patterns(layer), **kwargs)

    def reset_parameters(self) -> None:
        """Initialise as ``nn.MultiheadAttention`` does."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    @property
    def pattern(self) -> Pattern | tuple[Pattern, ...]:
        """The shared pattern, or the tuple of per-head patterns when they differ."""
        return self.patterns[0] if len(set(self.patterns)) == 1 else self.patterns

    @property
    def resolved_backend(self) -> str:
        """The backend this module runs on for its parameters' device (``"auto"`` resolved)."""
        if self.backend != "auto":
            return self.backend
        from spattn import backends

        return backends.auto_name(self.in_proj_weight.device)

    def extra_repr(self) -> str:
        groups: dict[Pattern, list[int]] = {}
        for h, p in enumerate(self.patterns):
            groups.setdefault(p, []).append(h)
        if len(groups) == 1:
            pat = f"pattern={str(self.patterns[0])!r}"
        else:
            pat = "patterns={" + ", ".join(f"heads {format_ranges(hs)}: {str(p)!r}"
                                           for p, hs in groups.items()) + "}"
        backend = (f"backend='auto' -> {self.resolved_backend!r}" if self.backend == "auto"
                   else f"backend={self.backend!r}")
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, {pat}, {backend}, "
                f"batch_first={self.batch_first}")

    def __prepare_scriptable__(self):
        raise SpattnError("SparseAttention cannot be compiled by TorchScript (torch.jit."
                          "script / trace): use torch.compile, which spattn supports")

    # -- forward
    def _check(self, x: Any, key_padding_mask: Any) -> tuple[torch.Tensor, bool]:
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"SparseAttention takes a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3) or x.shape[-1] != self.embed_dim:
            want = "(B, L, E)" if self.batch_first else "(L, B, E)"
            raise ShapeError(f"input must have shape {want} or (L, E) with E = "
                             f"{self.embed_dim}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ShapeError(f"input has dtype {x.dtype}; expected a floating dtype")
        if x.dtype != self.in_proj_weight.dtype or x.device != self.in_proj_weight.device:
            raise ShapeError(f"input is {x.dtype} on {x.device} but the module's parameters "
                             f"are {self.in_proj_weight.dtype} on "
                             f"{self.in_proj_weight.device}; use .to() on one of them")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        elif not self.batch_first:
            x = x.transpose(0, 1)
        B, L, _ = x.shape
        if L == 0 or B == 0:
            raise ShapeError(f"input has an empty dimension: shape {tuple(x.shape)}")
        if key_padding_mask is not None:
            m = key_padding_mask
            if not isinstance(m, torch.Tensor):
                raise ShapeError(f"key_padding_mask must be a torch.Tensor, got "
                                 f"{type(m).__name__}")
            if m.dtype != torch.bool:
                raise ShapeError(f"key_padding_mask must be a bool tensor (True = padding), got "
                                 f"dtype {m.dtype}")
            want_shape = (L,) if unbatched else (B, L)
            if tuple(m.shape) != want_shape:
                raise ShapeError(f"key_padding_mask must have shape {want_shape} (batch, "
                                 f"length) for input of shape {tuple(x.shape)}, got "
                                 f"{tuple(m.shape)}")
        return x, unbatched

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                cache: Any = None, documents: Any = None) -> torch.Tensor:
        B, L, _ = q.shape
        H, D = self.num_heads, self.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, L, H, D).transpose(1, 2)

        if cache is not None:
            o = cache.attend(heads(q), heads(k), heads(v), scale=self.scale)
        else:
            o = attention(heads(q), heads(k), heads(v), list(self.patterns),
                          backend=self.backend, scale=self.scale, documents=documents)
        return o.transpose(1, 2).reshape(B, L, H * D)

    def new_cache(self):
        """A :class:`spattn.KVCache` for this module's per-head patterns (causal ones)."""
        from .kvcache import KVCache

        return KVCache(list(self.patterns))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *,
                cache: Any = None, documents: Any = None) -> torch.Tensor:
        """Self-attention over ``x`` ((B, L, E), or (L, B, E) when ``batch_first=False``, or
        unbatched (L, E)). ``key_padding_mask``: bool (B, L), True marks padding tokens.
        ``cache``: a :class:`spattn.KVCache` (from :meth:`new_cache`) when ``x`` holds the
        next positions of a sequence being decoded; they attend every position the cache has
        seen. ``documents`` (a :class:`spattn.Documents` or lengths summing to L): ``x`` is a
        packed batch, each document attending only itself (see :func:`spattn.attention`).
        Returns a tensor shaped like ``x``."""
        x, unbatched = self._check(x, key_padding_mask)
        if documents is not None and (cache is not None or key_padding_mask is not None):
            raise SpattnError("documents= cannot be combined with a cache or a "
                              "key_padding_mask: a packed batch has no padding (give the "
                              "padding its own document, or pack without it)")
        B, L, E = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        mask = key_padding_mask
        if mask is not None:
            mask = mask.to(x.device).reshape(B, L)
        if cache is not None:
            if mask is not None and bool(mask.any()):
                raise SpattnError("key_padding_mask cannot be combined with a cache: decode "
                                  "each sequence without padding")
            y = self.out_proj(self._attend(q, k, v, cache))
        elif mask is None or not bool(mask.any()):
            o = self._attend(q, k, v, documents=documents)
            y = self.out_proj(o)
        else:
            keep = ~mask
            lengths = keep.sum(dim=1)
            o = x.new_zeros(B, L, E)
            for length in sorted(set(lengths.tolist())):
                if length == 0:
                    continue  # an all-padding sequence: its output stays zero
                bs = torch.nonzero(lengths == length).squeeze(1)
                pos = torch.nonzero(keep[bs])[:, 1].reshape(len(bs), length)
                rows = bs[:, None].expand_as(pos)
                ob = self._attend(q[rows, pos], k[rows, pos], v[rows, pos])
                o = o.index_put((rows, pos), ob)
            y = self.out_proj(o).masked_fill(mask[..., None], 0.0)
        if unbatched:
            return y.squeeze(0)
        return y if self.batch_first else y.transpose(0, 1)


class SparseEncoderLayer(nn.Module):
    """A pre-norm transformer encoder block: ``x + attn(norm(x))``, then
    ``x + ff(norm(x))`` with a GELU feed-forward of width ``dim_feedforward``.

    ``pattern`` and ``backend`` are as for :class:`SparseAttention`; ``dropout`` applies to
    the two residual branches. Input (B, L, E) (batch first), optional ``key_padding_mask``.
    """

    def __init__(self, embed_dim: int, num_heads: int, pattern: Any, dim_feedforward: int | None
                 = None, *, dropout: float = 0.0, backend: str = "auto", bias: bool = True,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        embed_dim = positive_int(embed_dim, "embed_dim")
        ff = dim_feedforward if dim_feedforward is not None else 4 * embed_dim
        ff = positive_int(ff, "dim_feedforward")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout <= 1.0:
            raise SpattnError(f"dropout must be a probability between 0 and 1, got "
                              f"{dropout!r:.60}")
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(embed_dim, **kw)
        self.attn = SparseAttention(embed_dim, num_heads, pattern, backend, bias=bias, **kw)
        self.norm2 = nn.LayerNorm(embed_dim, **kw)
        self.ff = nn.Sequential(nn.Linear(embed_dim, ff, bias=bias, **kw), nn.GELU(),
                                nn.Linear(ff, embed_dim, bias=bias, **kw))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *,
                cache: Any = None, documents: Any = None) -> torch.Tensor:
        """(B, L, E) -> (B, L, E); ``cache`` and ``documents`` as for
        :class:`SparseAttention`."""
        x = x + self.drop(self.attn(self.norm1(x), key_padding_mask=key_padding_mask,
                                    cache=cache, documents=documents))
        return x + self.drop(self.ff(self.norm2(x)))


class SparseEncoder(nn.Module):
    """A stack of :class:`SparseEncoderLayer` with a final LayerNorm.

    Build it from a list of per-layer patterns (each a pattern or a list of per-head
    patterns), or from a YAML model section with :meth:`from_config`::

        cfg = spattn.load("patterns.yaml")
        encoder = SparseEncoder.from_config(cfg)          # one layer per model layer
    """

    def __init__(self, embed_dim: int, num_heads: int, layer_patterns: list[Any],
                 dim_feedforward: int | None = None, *, dropout: float = 0.0,
                 backend: str = "auto", device: Any = None, dtype: Any = None):
        super().__init__()
        if isinstance(layer_patterns, (str, Pattern)) or not hasattr(layer_patterns, "__len__") \
                or not len(layer_patterns):
            raise SpattnError("layer_patterns must be a non-empty list with one entry per "
                              "layer (a pattern, or a list of per-head patterns), got "
                              f"{layer_patterns!r:.60}")
        self.layers = nn.ModuleList(
            SparseEncoderLayer(embed_dim, num_heads, p, dim_feedforward, dropout=dropout,
                               backend=backend, device=device, dtype=dtype)
            for p in layer_patterns)
        self.norm = nn.LayerNorm(embed_dim, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, config: Any, embed_dim: int | None = None, **kwargs: Any
                    ) -> SparseEncoder:
        """An encoder with one layer per ``model`` layer of a YAML config (a
        :class:`spattn.config.Config` or a path), each with that layer's per-head patterns.
        ``embed_dim`` defaults to ``model.embed_dim``; ``kwargs`` go to the constructor."""
        cfg, E = _config_and_dim(config, embed_dim)
        kwargs.setdefault("backend", cfg.backend)
        pats = [list(cfg.layer_patterns(i)) for i in range(cfg.num_layers or 0)]
        if not pats:
            cfg.layer_patterns(0)  # raises: the file has no model section
        return cls(E, cfg.num_heads, pats, **kwargs)

    def new_caches(self) -> list:
        """One :class:`spattn.KVCache` per layer, for :meth:`forward`'s ``caches``."""
        return [layer.attn.new_cache() for layer in self.layers]

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *,
                caches: list | None = None, documents: Any = None) -> torch.Tensor:
        """(B, L, E) -> (B, L, E). ``caches`` (from :meth:`new_caches`): decode, ``x`` being
        the next positions of the sequence the caches have seen. ``documents``: ``x`` is a
        packed batch (see :class:`SparseAttention`)."""
        if caches is not None and len(caches) != len(self.layers):
            raise SpattnError(f"got {len(caches)} caches for {len(self.layers)} layers")
        for i, layer in enumerate(self.layers):
            x = layer(x, key_padding_mask=key_padding_mask,
                      cache=None if caches is None else caches[i], documents=documents)
        return self.norm(x)
