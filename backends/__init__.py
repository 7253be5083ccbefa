"""Attention backends and their registry (installed as ``spattn.backends``).

A backend is an object with this small, fixed interface::

    name: str                                  # "cpu", "triton", ...
    def is_available(self) -> bool             # can it run in this process at all?
    def supports(self, q) -> bool              # can it run these tensors (device, dtype)?
    def attention(self, q, k, v, patterns, scale) -> torch.Tensor
        # q (B, H, m, D), k/v (B, H, n, D), already validated; patterns: a tuple of H
        # spattn.Pattern (one per head; all equal for a shared pattern); m <= n, queries are
        # the last m positions. Differentiable with respect to q, k and v.

Built-in backends live one per file beside this one and are registered lazily by name.
Third-party backends register through the entry-point group ``spattn.backends``; the entry
point names a zero-argument callable (or class) returning a backend object.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from spattn.errors import SpattnError

_BUILTIN = {
    "cpu": "spattn.backends.cpu:CPUBackend",
    "triton": "spattn.backends.triton_gpu:TritonBackend",
}
_factories: dict[str, Callable[[], Any]] = {}
_instances: dict[str, Any] = {}
_lock = threading.RLock()
_entry_points_loaded = False


def _load_target(target: str):
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def register(name: str, factory: Callable[[], Any] | Any) -> None:
    """Register a backend under ``name``: a backend object, or a callable making one."""
    if not isinstance(name, str) or not name.isidentifier():
        raise SpattnError(f"backend name must be an identifier, got {name!r}")
    with _lock:
        _factories[name] = factory if callable(factory) and not hasattr(factory, "attention") \
            else (lambda f=factory: f)
        _instances.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group="spattn.backends"):
            if ep.name not in _factories and ep.name not in _BUILTIN:
                _factories[ep.name] = ep.load


def names() -> list[str]:
    """Every registered backend name, available or not."""
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_factories))


def get(name: str):
    """The backend object registered under ``name``."""
    _load_entry_points()
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _factories:
            f = _factories[name]
        elif name in _BUILTIN:
            f = _load_target(_BUILTIN[name])
        else:
            raise SpattnError(f"unknown backend {name!r}; known: {', '.join(names())}")
        obj = f()
        if callable(obj) and not hasattr(obj, "attention"):
            obj = obj()
        for attr in ("name", "is_available", "supports", "attention"):
            if not hasattr(obj, attr):
                raise SpattnError(f"backend {name!r} lacks {attr!r} (see spattn.backends)")
        _instances[name] = obj
        return obj


def available() -> list[str]:
    """Names of the backends that can run in this process."""
    out = []
    for n in names():
        try:
            if get(n).is_available():
                out.append(n)
        except Exception:  # noqa: BLE001 - a broken plugin is simply not available
            continue
    return out


def select(name: str, q) -> Any:
    """Resolve ``backend=`` for tensor ``q``: ``"auto"`` picks triton for CUDA tensors when it
    is importable, cpu otherwise."""
    if name == "auto":
        if getattr(q, "is_cuda", False):
            tr = get("triton")
            if tr.is_available() and tr.supports(q):
                return tr
            raise SpattnError("no backend for CUDA tensors: install triton (pip install triton)")
        return get("cpu")
    b = get(name)
    if not b.is_available():
        raise SpattnError(f"backend {name!r} is not available in this process")
    if not b.supports(q):
        raise SpattnError(f"backend {name!r} cannot run tensors on {q.device} with dtype "
                          f"{q.dtype}")
    return b
