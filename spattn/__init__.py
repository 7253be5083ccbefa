"""spattn: a compiler for sparse attention patterns.

Write a pattern in a small language (``local(64) | global([0, -1]) | stride(128)``), inspect
it (density, receptive field, block efficiency, KV cache), lower it to exact sparse structures
and run attention with it on CPU or GPU. See the README for the language reference.
"""

from __future__ import annotations

from .api import attention
from .documents import Documents, documents
from .errors import (
    ConfigError,
    LoweringError,
    PatternNameError,
    PatternSyntaxError,
    ResourceError,
    ShapeError,
    SpattnError,
)
from .guard import memory_budget, set_memory_budget
from .pattern import Pattern, compile

__version__ = "0.1.0"

__all__ = [
    "Pattern", "compile", "attention", "documents", "Documents", "load", "Stats",
    "BlockLayout", "SpattnError",
    "PatternSyntaxError", "PatternNameError", "LoweringError", "ResourceError", "ShapeError",
    "ConfigError", "memory_budget", "set_memory_budget", "nn", "config", "KVCache",
    "__version__",
]


def __getattr__(name: str):
    # Heavier layers load on first use, so `import spattn` stays light.
    if name == "Stats":
        from .analysis import Stats

        return Stats
    if name == "BlockLayout":
        from .blocks import BlockLayout

        return BlockLayout
    if name == "KVCache":
        from .kvcache import KVCache

        return KVCache
    if name == "load":
        from .config import load

        return load
    if name in ("nn", "config", "analysis", "blocks", "backends"):
        import importlib

        return importlib.import_module(f"spattn.{name}")
    raise AttributeError(f"module 'spattn' has no attribute {name!r}")
