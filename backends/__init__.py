"""Attention backends and their registry (installed as ``spattn.backends``).

In: a backend name (``"auto"``, ``"cpu"``, ``"triton"``, ``"reference"`` or a plugin's) and
the query tensor. Out: the backend object that runs ``spattn.attention`` for it.

A backend is an object with this small, fixed interface, stated as the
:class:`Backend` protocol (``isinstance(obj, Backend)`` checks it at run time)::

    name: str                                  # "cpu", "triton", ...
    def is_available(self) -> bool             # can it run in this process at all?
    def supports(self, q) -> bool              # can it run these tensors (device, dtype)?
    def attention(self, q, k, v, patterns, scale) -> torch.Tensor
        # q (B, H, m, D), k/v (B, H, n, D), already validated; patterns: a tuple of H
        # spattn.Pattern (one per head; all equal for a shared pattern); m <= n, queries are
        # the last m positions. Differentiable with respect to q, k and v. A query whose row
        # of the pattern is empty gets a zero output and zero gradients.

Built-in backends live one per file beside this one (``cpu.py``, ``triton_gpu.py``,
``reference.py``) and are imported lazily, on first use. ``reference`` is a plain dense
float64 masked softmax for small sizes, on any device: it is never picked by ``"auto"``.

Writing a backend: implement :class:`Backend` (no subclassing needed; any class with these
four members will do), then register it in one of two ways:

* in code: ``spattn.backends.register("mine", MyBackend)`` (a backend object, a class, or a
  zero-argument callable returning a backend);
* as a package: an entry point in the group ``spattn.backends`` naming such a class or
  callable, e.g. in ``pyproject.toml``::

      [project.entry-points."spattn.backends"]
      mine = "my_package.backend:MyBackend"

  Entry points are read the first time the registry is consulted; a plugin that fails to
  import is left out of :func:`available` and :func:`get` reports its error.

To test a backend, or to debug a mismatch between backends, compare its output and gradients
with ``spattn.attention(..., backend="reference")`` on small inputs.

``backend="auto"`` (the default everywhere) picks ``triton`` for CUDA tensors when triton is
importable and ``cpu`` otherwise; :func:`auto_name` says which for a device.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from spattn.errors import SpattnError

if TYPE_CHECKING:  # torch is imported lazily, by the backends themselves
    import torch

    from spattn.pattern import Pattern

__all__ = ["Backend", "register", "unregister", "names", "get", "available", "select",
           "auto_name", "is_builtin", "BACKEND_INTERFACE", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "spattn.backends"
"""The entry-point group third-party packages use to register backends."""
BACKEND_INTERFACE = ("name", "is_available", "supports", "attention")
"""The attributes every backend object has (the members of :class:`Backend`)."""


@runtime_checkable
class Backend(Protocol):
    """What spattn needs of an attention backend (built-in or plugin).

    Structural: a class need not inherit from this to be a backend, it only needs these
    members; ``isinstance(obj, Backend)`` checks that they exist (not their signatures).
    The registry calls :meth:`is_available` and :meth:`supports` to choose a backend, then
    :meth:`attention` with inputs that :func:`spattn.attention` has already validated.
    """

    name: str
    """The name the backend is registered and selected under (``backend="..."``)."""

    def is_available(self) -> bool:
        """Whether the backend can run in this process at all (its dependencies import, its
        device exists). Cheap, and never raises: a backend that cannot run returns False and
        is left out of :func:`available`."""
        ...

    def supports(self, q: torch.Tensor) -> bool:
        """Whether the backend can run attention for query tensor ``q``'s device and dtype
        (k and v share them). Cheap, and never raises for a tensor."""
        ...

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  patterns: tuple[Pattern, ...], scale: float) -> torch.Tensor:
        """Sparse attention of ``q`` over ``k, v``, restricted to the patterns.

        ``q``: (B, H, m, D); ``k``, ``v``: (B, H, n, D), with 1 <= m <= n; one dtype and one
        device, already validated. ``patterns``: a tuple of H :class:`spattn.Pattern`, one per
        head (the same object repeated when the heads share a pattern); head h uses the mask
        of ``patterns[h]`` at sequence length n. Queries are bottom-right aligned: query row
        r is position n - m + r, so it attends the keys j with M[n - m + r, j] = 1.
        ``scale``: the softmax scale, a float, applied as given (the caller has already
        defaulted it to 1/sqrt(D)).

        Returns (B, H, m, D) in q's dtype and on q's device: for each row, the softmax of
        ``scale * q @ k^T`` over the row's keys, times ``v``. A row with no key gives an
        exactly zero output and zero gradients, never NaN. Differentiable with respect to
        q, k and v (through autograd). Raises :class:`SpattnError` (e.g. ``ResourceError``)
        for inputs it refuses, never a bare exception.
        """
        ...


_BUILTIN = {
    "cpu": "spattn.backends.cpu:CPUBackend",
    "triton": "spattn.backends.triton_gpu:TritonBackend",
    "reference": "spattn.backends.reference:ReferenceBackend",
}
_factories: dict[str, Callable[[], Any]] = {}
_plugins: dict[str, str] = {}  # name -> "dist: module:attr" for error messages
_instances: dict[str, Any] = {}
_lock = threading.RLock()
_entry_points_loaded = False


def _load_target(target: str):
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _is_backend(obj: Any) -> bool:
    return not isinstance(obj, type) and all(hasattr(obj, a) for a in BACKEND_INTERFACE)


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in backend that no :func:`register` call has replaced
    (``"auto"``: both cpu and triton are). Reads two dicts, takes no lock: safe in code that
    ``torch.compile`` traces."""
    if name == "auto":
        return "cpu" not in _factories and "triton" not in _factories
    return name in _BUILTIN and name not in _factories


def register(name: str, factory: Callable[[], Any] | Any) -> None:
    """Register a backend under ``name``: a backend object, a backend class, or a
    zero-argument callable returning a backend. Replaces an earlier registration (including a
    built-in or entry-point backend of the same name) for this process."""
    if not isinstance(name, str) or not name.isidentifier() or name == "auto":
        raise SpattnError(f"backend name must be an identifier other than 'auto', got "
                          f"{name!r}")
    if not (_is_backend(factory) or callable(factory)):
        raise SpattnError(f"register({name!r}, ...) needs a backend object (with "
                          f"{', '.join(BACKEND_INTERFACE)}), a class or a callable; got "
                          f"{type(factory).__name__}")
    with _lock:
        _factories[name] = (lambda f=factory: f) if _is_backend(factory) else factory
        _plugins.pop(name, None)
        _instances.pop(name, None)


def unregister(name: str) -> None:
    """Forget a backend registered with :func:`register` (built-ins cannot be removed)."""
    with _lock:
        _factories.pop(name, None)
        _plugins.pop(name, None)
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

        try:
            eps = list(entry_points(group=ENTRY_POINT_GROUP))
        except Exception:  # noqa: BLE001 - broken metadata must not break spattn
            return
        for ep in eps:
            if ep.name in _factories or ep.name in _BUILTIN or not ep.name.isidentifier() \
                    or ep.name == "auto":
                continue
            _factories[ep.name] = ep.load
            dist = getattr(getattr(ep, "dist", None), "name", None)
            _plugins[ep.name] = f"{dist + ': ' if dist else ''}{ep.value}"


def names() -> list[str]:
    """Every registered backend name (built-in, registered, entry points), available or
    not."""
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_factories))


def get(name: str):
    """The backend object registered under ``name`` (created once, then shared).

    Raises :class:`SpattnError` for an unknown name, for a plugin that fails to load, and for
    an object that lacks the backend interface."""
    if not isinstance(name, str):
        raise SpattnError(f"a backend name must be text, got {type(name).__name__}: {name!r}")
    _load_entry_points()
    with _lock:
        if name in _instances:
            return _instances[name]
        where = f"plugin {_plugins[name]!r}" if name in _plugins else "registration"
        try:
            if name in _factories:
                obj = _factories[name]()
            elif name in _BUILTIN:
                obj = _load_target(_BUILTIN[name])
            else:
                raise SpattnError(f"unknown backend {name!r}; known: {', '.join(names())}")
            if isinstance(obj, type) or (callable(obj) and not _is_backend(obj)):
                obj = obj()  # an entry point or factory naming a class or a factory
        except SpattnError:
            raise
        except ImportError as e:
            raise SpattnError(f"backend {name!r} cannot be imported ({where}): {e}") from e
        except Exception as e:  # noqa: BLE001 - a plugin's own failure, reported with its name
            raise SpattnError(f"backend {name!r} failed to load ({where}): "
                              f"{type(e).__name__}: {e}") from e
        missing = [a for a in BACKEND_INTERFACE if not hasattr(obj, a)]
        if missing:
            raise SpattnError(f"backend {name!r} lacks {', '.join(map(repr, missing))} (see "
                              "spattn.backends for the interface)")
        _instances[name] = obj
        return obj


def available() -> list[str]:
    """Names of the backends that can run in this process (importable, and whose
    ``is_available()`` is true)."""
    out = []
    for n in names():
        try:
            if get(n).is_available():
                out.append(n)
        except Exception:  # noqa: BLE001 - a broken plugin is simply not available
            continue
    return out


def _usable(name: str) -> bool:
    try:
        return bool(get(name).is_available())
    except Exception:  # noqa: BLE001
        return False


def auto_name(device: Any = "cpu") -> str:
    """The backend ``backend="auto"`` picks for tensors on ``device`` (a ``torch.device`` or
    its text): ``"triton"`` for CUDA when triton is importable and runs, else ``"cpu"``."""
    if str(getattr(device, "type", device)).split(":")[0] == "cuda" and _usable("triton"):
        return "triton"
    return "cpu"


def select(name: str, q) -> Any:
    """Resolve ``backend=`` for tensor ``q``: ``"auto"`` picks triton for CUDA tensors when it
    is importable, cpu otherwise; any other name must be registered, available and support
    ``q``'s device and dtype."""
    if not isinstance(name, str):
        raise SpattnError(f"backend must be a name, got {type(name).__name__}: {name!r}")
    if name == "auto":
        if getattr(q, "is_cuda", False):
            if _usable("triton"):
                tr = get("triton")
                if tr.supports(q):
                    return tr
            cpu = get("cpu")
            if cpu.supports(q):
                return cpu
            raise SpattnError(f"no backend runs CUDA tensors of dtype {q.dtype} here: install "
                              "triton (pip install triton) or move the tensors to the CPU")
        return get("cpu")
    b = get(name)
    if not b.is_available():
        raise SpattnError(f"backend {name!r} is not available in this process")
    if not b.supports(q):
        raise SpattnError(f"backend {name!r} cannot run tensors on {q.device} with dtype "
                          f"{q.dtype}")
    return b
