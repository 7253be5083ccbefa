"""Code generation for the Triton backend: a pattern's element mask as a Triton predicate,
inlined into the attention kernels (the way FlexAttention inlines a ``mask_mod``).

In: a bound pattern (:func:`spattn.bind.bind`). Out: :func:`generate` — in ONE walk, the
source of ``_mask_fn(i, j, n, PRM, TAB)`` and the int32 parameter vector ``PRM`` and table
``TAB`` that source reads — and :func:`kernel_module`, the compiled module holding ``_fwd``,
``_bwd_dq`` and ``_bwd_dkdv`` for a predicate.

How: each primitive's predicate is the same function numpy and torch evaluate
(``Primitive.mask`` in :mod:`spattn.prims`), run here on symbolic values: operators on
:class:`_Sym` write Triton expressions instead of computing, and every integer argument is a
parameter that, when the code first reads it, emits ``tl.load(PRM + k)`` and records its value
as entry k. Code and parameters therefore cannot disagree on order. Index sets and random keys
become tables appended to ``TAB`` (their offsets are parameters too). The code depends only
on the pattern's structure, never on argument values, so one compiled kernel serves every
sequence length; the predicate's arithmetic stays within int32 because every argument was
clamped to n when the pattern was bound.

Kernel modules are compiled from the source generated in memory. A copy is written to the
private per-user cache directory (:func:`spattn.cache.private_dir`, ``triton/``) only for
tracebacks and inspection; a file found there is used as the module's file name only when its
SHA-256 matches the generated source, and is never executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import os
import sys
import types

import numpy as np

from spattn.bind import Bound
from spattn.cache import LRUCache, private_dir, read_private, write_private
from spattn.errors import ResourceError
from spattn.predicate import evaluate, membership

#: compiled kernel modules by the SHA-256 of their source (recompiling one costs seconds)
MODULES: LRUCache[str, types.ModuleType] = LRUCache("triton kernel modules", 256)


class _Sym:
    """A symbolic Triton value: its expression as text."""

    __slots__ = ("_code",)

    def __init__(self, code: str):
        self._code = code

    @property
    def code(self) -> str:
        return self._code

    def __str__(self) -> str:
        return self.code

    def _bin(self, op: str, other, rev: bool = False) -> _Sym:
        a, b = (other, self) if rev else (self, other)
        return _Sym(f"({a} {op} {b})")

    __hash__ = object.__hash__

    def __add__(self, o): return self._bin("+", o)  # noqa: E704
    def __radd__(self, o): return self._bin("+", o, True)  # noqa: E704
    def __sub__(self, o): return self._bin("-", o)  # noqa: E704
    def __rsub__(self, o): return self._bin("-", o, True)  # noqa: E704
    def __mul__(self, o): return self._bin("*", o)  # noqa: E704
    def __rmul__(self, o): return self._bin("*", o, True)  # noqa: E704
    def __mod__(self, o): return self._bin("%", o)  # noqa: E704
    def __floordiv__(self, o): return self._bin("//", o)  # noqa: E704
    def __and__(self, o): return self._bin("&", o)  # noqa: E704
    def __rand__(self, o): return self._bin("&", o, True)  # noqa: E704
    def __or__(self, o): return self._bin("|", o)  # noqa: E704
    def __ror__(self, o): return self._bin("|", o, True)  # noqa: E704
    def __lt__(self, o): return self._bin("<", o)  # noqa: E704
    def __le__(self, o): return self._bin("<=", o)  # noqa: E704
    def __gt__(self, o): return self._bin(">", o)  # noqa: E704
    def __ge__(self, o): return self._bin(">=", o)  # noqa: E704
    def __eq__(self, o): return self._bin("==", o)  # type: ignore[override]  # noqa: E704
    def __ne__(self, o): return self._bin("!=", o)  # type: ignore[override]  # noqa: E704
    def __neg__(self): return _Sym(f"(-{self})")  # noqa: E704
    def __invert__(self): return _Sym(f"({self} == 0)")  # noqa: E704


class _Param(_Sym):
    """An integer argument: loaded from ``PRM`` (and its value recorded) on first use."""

    __slots__ = ("value", "_gen")

    def __init__(self, value: int, gen: _Gen):
        super().__init__("")
        self.value, self._gen = int(value), gen

    @property
    def code(self) -> str:
        if not self._code:
            self._code = self._gen.param(self.value)
        return self._code


class _Gen:
    """The predicate being written: code lines, parameter values, tables."""

    def __init__(self, n: int):
        self.n = n
        self.lines: list[str] = ["    d = i - j"]
        self.prm: list[int] = []
        self.tabs: list[np.ndarray] = []
        self.size = 0
        self.ntmp = 0
        self._tables: dict[int, str] = {}

    def param(self, value: int) -> str:
        k = len(self.prm)
        self.prm.append(int(value))
        self.lines.append(f"    p{k} = tl.load(PRM + {k})")
        return f"p{k}"

    def let(self, x) -> _Sym:
        name = f"t{self.ntmp}"
        self.ntmp += 1
        self.lines.append(f"    {name} = {x}")
        return _Sym(name)

    def table(self, key: int, t: np.ndarray) -> str:
        """The offset parameter of a table in ``TAB`` (each distinct table once)."""
        if key not in self._tables:
            o = self.size
            self.tabs.append(np.ascontiguousarray(t, np.int32).ravel())
            self.size += t.size
            if self.size >= 2**31 - 1:
                raise ResourceError(f"the pattern's tables exceed 2**31 entries at "
                                    f"n = {self.n:,}")
            self._tables[key] = self.param(o)
        return self._tables[key]


class TritonOps:
    """The array module the predicates are written against, emitting Triton code."""

    def __init__(self, gen: _Gen):
        self.g = gen
        self.keys: dict[int, np.ndarray | None] = {}

    def let(self, x) -> _Sym:
        return self.g.let(x)

    def member(self, runs, x) -> _Sym:
        if runs.step > 1:  # one arithmetic progression: three parameters, no table
            s, e, c = (self.g.param(v) for v in (runs.starts[0], runs.ends[0], runs.step))
            return _Sym(f"(({x} >= {s}) & ({x} < {e}) & ((({x} - {s}) % {c}) == 0))")
        o = self.g.table(id(runs), membership(runs, self.g.n))
        return _Sym(f"(tl.load(TAB + {o} + {x}) != 0)")

    def random(self, a: tuple, i, j) -> _Sym:
        g, keys = self.g, self.keys[id(a)]
        k = a[0].value
        o = g.table(id(a), keys) if keys is not None else g.param(0)
        cnt = g.param(k if keys is not None else 0)
        allf = g.param(int(k == g.n))
        h = g.let(f"(d * 0 + {allf}) != 0")
        g.lines.append(f"    for _t in range(0, {cnt}):")
        g.lines.append(f"        {h} = {h} | (tl.load(TAB + {o} + i.to(tl.int64) * {cnt} + _t) "
                       "== j)")
        return h


def generate(b: Bound, n: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(source, PRM, TAB)`` of the predicate of bound pattern ``b`` at ``n``."""
    g = _Gen(n)
    ops = TritonOps(g)
    out = evaluate(_Symbolic(b, ops), ops, _Sym("i"), _Sym("j"), _Sym("d"))
    src = ("@triton.jit\ndef _mask_fn(i, j, n, PRM, TAB):\n" + "\n".join(g.lines) +
           f"\n    return {out} & (d == d)\n")
    prm = np.asarray(g.prm + [0], np.int32)
    tab = np.concatenate(g.tabs) if g.tabs else np.zeros(1, np.int32)
    return src, prm, tab


class _Symbolic:
    """A view of a bound tree whose primitives carry symbolic arguments (integers become
    :class:`_Param`; tables the predicate reads per row are registered with the ops)."""

    def __init__(self, b: Bound, ops: TritonOps):
        self.kind, self.spec, self.items, self.args = b.kind, b.spec, (), ()
        if b.kind == "prim":
            self.args = tuple(_Param(x, ops.g) if isinstance(x, int) else x for x in b.args)
            ops.keys[id(self.args)] = b.spec.key_table(b.args, ops.g.n)
        else:
            self.items = tuple(_Symbolic(x, ops) for x in b.items)


def predicate_tensors(pattern, n: int, device):
    """(kernel module, PRM, TAB on ``device``) of a pattern at n: one generation walk."""
    import torch

    from spattn.bind import bind

    src, prm, tab = generate(bind(pattern.node, n), n)
    return (kernel_module(src), torch.from_numpy(prm).to(device),
            torch.from_numpy(tab).to(device))


def kernel_module(predicate: str, template: str | None = None) -> types.ModuleType:
    """The compiled kernel module for a predicate's source (cached by its SHA-256):
    ``template`` (default: the attention kernels of :mod:`.triton_kernels`) with the line
    ``# @MASK_FN@`` replaced by the predicate."""
    if template is None:
        from .triton_kernels import TEMPLATE as template

    src = template.replace("# @MASK_FN@", predicate)
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    digest = hashlib.sha256(src.encode()).hexdigest()
    return MODULES.get_or_create(f"{digest}:{int(interp)}", lambda: _load(src, digest, interp))


def _load(src: str, digest: str, interp: bool) -> types.ModuleType:
    name = f"spattn_triton_k_{digest[:20]}_{int(interp)}"
    fname = f"<spattn kernel {digest[:20]}>"
    d = private_dir("triton")
    if d is not None:
        path = d / f"spattn_k_{digest[:20]}.py"
        if read_private(path, sha256=digest) is not None or write_private(path, src.encode()):
            fname = str(path)
    # inspect (and so triton.jit) reads the source from linecache: the text compiled here
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    mod = types.ModuleType(name)
    mod.__file__ = fname
    sys.modules[name] = mod
    code = compile(src, fname, "exec")
    with _interpret_knob(interp):
        exec(code, mod.__dict__)  # noqa: S102 - spattn's own generated source, from memory
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
