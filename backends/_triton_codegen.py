"""Code generation for the Triton backend: a pattern's element mask as a Triton predicate,
inlined into the attention kernels (the way FlexAttention inlines a ``mask_mod``).

In: a pattern IR node and a sequence length. Out: :func:`kernel_module`, an imported module
holding ``_fwd``, ``_bwd_dq`` and ``_bwd_dkdv`` for that pattern *structure*, plus
:func:`mask_params`, the int32 parameter vector and table the predicate reads at run time.

The generated code depends only on the shape of the IR (which primitives, combined how);
arguments (window widths, strides, …, evaluated at n) live in the parameter vector ``PRM``
and index sets / random keys in the int32 table ``TAB``, so one compiled kernel serves every
sequence length. The predicate is called with query positions ``i`` and key positions ``j``
clamped into ``[0, n)``; the kernels mask tails separately.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

import numpy as np

from spattn import ir
from spattn.blocks import _membership
from spattn.errors import ResourceError
from spattn.random_keys import row_keys

_lock = threading.Lock()
_modules: dict[str, object] = {}


class _Gen:
    def __init__(self):
        self.lines: list[str] = []
        self.nparams = 0
        self.ntmp = 0

    def param(self) -> str:
        k = self.nparams
        self.nparams += 1
        name = f"p{k}"
        self.lines.append(f"    {name} = tl.load(PRM + {k})")
        return name

    def tmp(self, expr: str) -> str:
        name = f"t{self.ntmp}"
        self.ntmp += 1
        self.lines.append(f"    {name} = {expr}")
        return name


def _gen(node: ir.Node, g: _Gen) -> str:
    """Emit code for ``node``; returns the name of its boolean tensor."""
    if isinstance(node, (ir.Union, ir.Inter)):
        op = " | " if isinstance(node, ir.Union) else " & "
        names = [_gen(x, g) for x in node.items]
        return g.tmp(op.join(f"({x})" for x in names))
    if isinstance(node, ir.Diff):
        a, b = _gen(node.a, g), _gen(node.b, g)
        return g.tmp(f"({a}) & ({b} == 0)")
    if isinstance(node, ir.Not):
        a = _gen(node.a, g)
        return g.tmp(f"{a} == 0")
    name = node.name
    if name in ("local", "window", "dilated"):
        lo, hi = g.param(), g.param()  # lo <= i - j <= hi
        e = f"(d >= -{lo}) & (d <= {hi})"
        if name == "dilated":
            s = g.param()
            e += f" & ((d % {s}) == 0)"
        return g.tmp(e)
    if name == "causal":
        return g.tmp("d >= 0")
    if name == "stride":
        s = g.param()
        return g.tmp(f"(d % {s}) == 0")
    if name == "block":
        b = g.param()
        return g.tmp(f"(i // {b}) == (j // {b})")
    if name == "fixed":
        l, c, allf = g.param(), g.param(), g.param()
        return g.tmp(f"((i // {l}) == (j // {l})) | ((j % {l}) >= {l} - {c})"
                     f" | (d * 0 + {allf} != 0)")
    if name == "sink":
        k = g.param()
        return g.tmp(f"(j < {k}) & (i >= 0)")
    if name == "full":
        return g.tmp("d == d")
    if name == "none":
        return g.tmp("d != d")
    if name in ("rows", "cols", "global"):
        o = g.param()
        parts = []
        if name in ("rows", "global"):
            parts.append(f"(tl.load(TAB + {o} + i) != 0)")
        if name in ("cols", "global"):
            parts.append(f"(tl.load(TAB + {o} + j) != 0)")
        if name == "rows":
            parts.append("(j >= 0)")
        if name == "cols":
            parts.append("(i >= 0)")
        return g.tmp((" | " if name == "global" else " & ").join(parts))
    if name == "random":
        o, k, allf = g.param(), g.param(), g.param()
        h = g.tmp(f"d * 0 + {allf} != 0")
        g.lines.append(f"    for _t in range(0, {k}):")
        g.lines.append(f"        {h} = {h} | (tl.load(TAB + {o} + i.to(tl.int64) * {k} + _t) == j)")
        return h
    raise TypeError(name)  # pragma: no cover


def predicate_source(node: ir.Node) -> str:
    """Source of ``_mask_fn(i, j, n, PRM, TAB)`` for the structure of ``node``."""
    g = _Gen()
    g.lines.append("    d = i - j")
    out = _gen(node, g)
    body = "\n".join(g.lines)
    return (f"@triton.jit\ndef _mask_fn(i, j, n, PRM, TAB):\n{body}\n"
            f"    return ({out}) & (d == d)\n")


def mask_params(node: ir.Node, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The parameter vector and table that :func:`predicate_source`'s code reads at ``n``,
    emitted in the same order as the code generation."""
    prm: list[int] = []
    tabs: list[np.ndarray] = []
    size = [0]
    cap = n + 1

    def add_table(t: np.ndarray) -> int:
        o = size[0]
        tabs.append(t.astype(np.int32).ravel())
        size[0] += t.size
        if size[0] >= 2**31 - 1:
            raise ResourceError(f"the pattern's tables exceed 2**31 entries at n = {n:,}")
        return o

    def walk(x: ir.Node) -> None:
        if not isinstance(x, ir.Prim):
            for c in ir.children(x):
                walk(c)
            return
        a = ir.prim_args(x, n)
        nm = x.name
        if nm == "local":
            prm.extend([min(a[0], cap), min(a[0], cap)])
        elif nm == "window":  # -l <= j - i <= r  <=>  -r <= i - j <= l
            prm.extend([min(a[1], cap), min(a[0], cap)])
        elif nm == "dilated":
            w = min(a[0] * a[1], cap)
            prm.extend([w, w, min(a[1], n)])
        elif nm == "stride":
            prm.append(min(a[0], n))
        elif nm == "block":
            prm.append(min(a[0], n))
        elif nm == "fixed":
            l, c = a
            prm.extend([min(l, n), min(c, n), int(l >= n)])
        elif nm == "sink":
            prm.append(min(a[0], cap))
        elif nm in ("rows", "cols", "global"):
            prm.append(add_table(_membership(a[0], n).astype(np.int32)))
        elif nm == "random":
            k = min(a[0], n)
            if 0 < k < n:
                prm.extend([add_table(row_keys(n, a[0], a[1], np.arange(n))), k, 0])
            else:
                prm.extend([0, 0, int(k == n)])

    walk(node)
    prm_a = np.asarray(prm + [0], np.int32)
    tab = np.concatenate(tabs) if tabs else np.zeros(1, np.int32)
    return prm_a, tab


def _cache_dir() -> str:
    d = os.environ.get("SPATTN_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"spattn_triton_{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(d, exist_ok=True)
    return d


def kernel_module(node: ir.Node):
    """The imported kernel module for ``node``'s structure (generated and cached)."""
    from ._triton_kernels import TEMPLATE

    src = TEMPLATE.replace("# @MASK_FN@", predicate_source(node))
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    key = hashlib.sha256((src + str(interp)).encode()).hexdigest()[:20]
    with _lock:
        mod = _modules.get(key)
        if mod is not None:
            return mod
        path = os.path.join(_cache_dir(), f"spattn_k_{key}.py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(src)
            os.replace(tmp, path)
        name = f"spattn_triton_k_{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        with _interpret_knob(interp):
            spec.loader.exec_module(mod)
        _modules[key] = mod
        return mod


@contextlib.contextmanager
def _interpret_knob(interp: bool):
    """``triton.jit`` decides interpreted vs compiled when it decorates. Newer Triton reads
    ``TRITON_INTERPRET`` through a knob whose value can be fixed before the variable was set
    in this process, so set the knob explicitly while our kernels are decorated."""
    try:
        from triton import knobs

        rt = knobs.runtime
        rt.interpret  # noqa: B018 - probe
    except Exception:  # noqa: BLE001 - older Triton reads os.environ directly
        yield
        return
    had = "interpret" in rt.__dict__
    old = rt.__dict__.get("interpret")
    rt.__dict__["interpret"] = interp
    try:
        yield
    finally:
        if had:
            rt.__dict__["interpret"] = old
        else:
            rt.__dict__.pop("interpret", None)
