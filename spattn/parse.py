"""Text → IR: evaluate a pattern program's syntax tree into a pattern node.

In: pattern text (a program: bindings, preset definitions, a final expression), parsed by
:mod:`spattn.syntax`. Out: a raw (not yet canonical) :class:`spattn.ir.Node`. Names, presets
(those of ``grammar/prelude.spattn`` are defined by running that file through this module),
calls checked against the primitive table's signatures, integer expressions. Every error is a
:class:`~spattn.errors.SpattnError` that shows the text with a caret.
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass, field
from importlib import resources

from lark import Token, Tree

from . import ir, prims
from .errors import PatternNameError, PatternSyntaxError
from .syntax import MAX_TEXT, caret, fail, lift_long_lists, parse_tree

_lock = threading.RLock()  # held while the prelude is evaluated

# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Preset:
    """A parameterised preset: its parameters, defaults, body and defining environment."""
    name: str
    params: tuple[str, ...]
    defaults: dict  # param name -> value
    body: Tree
    env: Env
    src: str
    label: str


@dataclass
class Env:
    """Names bound while evaluating a program: values (patterns, integers, index sets) and
    presets."""
    values: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)

    def child(self) -> Env:
        """A copy whose bindings do not leak back into this environment."""
        return Env(dict(self.values), dict(self.presets))


def _kind(v) -> str:
    if isinstance(v, ir.Node):
        return "a pattern"
    if isinstance(v, ir.IntExpr):
        return "an integer"
    if isinstance(v, (ir.IndexList, ir.IndexSlice)):
        return "an index set"
    return "a preset"


_BINOPS = {"union", "inter", "add", "sub", "mul", "floordiv", "mod"}
_ARITH = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}
_OPSYM = {"union": "|", "inter": "&", **_ARITH}


class _Evaluator:
    def __init__(self, src: str, label: str = "", calling: tuple[str, ...] = ()):
        self.src = src
        self.label = label
        self.calling = calling

    def fail(self, msg, meta, cls=PatternNameError):
        if self.calling:
            msg = f"{msg} (in preset {self.calling[-1]!r})"
        fail(cls, msg, self.src, meta, self.label)

    # -- expressions
    def eval(self, t, env: Env):
        if isinstance(t, Token):  # pragma: no cover - grammar always wraps tokens
            raise TypeError(t)
        d = t.data
        if d in _BINOPS:
            return self._chain(t, env)
        if d in ("invert", "neg", "pos"):
            ops = []
            while isinstance(t, Tree) and t.data in ("invert", "neg", "pos"):
                ops.append(t)
                t = t.children[0]
            v = self.eval(t, env)
            for op in reversed(ops):
                v = self._unary(op, v)
            return v
        if d == "int":
            return ir.Const(int(t.children[0]))
        if d == "name":
            return self._name(t.children[0], env)
        if d == "call":
            return self._call(t, env)
        if d == "index_list":
            items = tuple(self._int(c, env, "an index") for c in t.children if c is not None)
            return ir.IndexList(items)
        if d == "index_slice":
            b = [None if c is None else self._int(c, env, "a slice bound")
                 for c in t.children]
            b += [None] * (3 - len(b))
            return ir.IndexSlice(*b)
        if d == "kwarg":
            self.fail("a keyword argument is only allowed inside a call", t.meta,
                      PatternSyntaxError)
        raise TypeError(d)  # pragma: no cover

    def _int(self, t, env, what) -> ir.IntExpr:
        v = self.eval(t, env)
        if not isinstance(v, ir.IntExpr):
            self.fail(f"{what} must be an integer expression, got {_kind(v)}", t.meta)
        return v

    def _chain(self, t, env):
        # iterate down the left spine so long chains (a | b | c ...) do not recurse
        rest = []
        while isinstance(t, Tree) and t.data in _BINOPS:
            rest.append(t)
            t = t.children[0]
        acc = self.eval(t, env)
        pending: list = []  # items of a union/intersection being collected (linear time)
        kind = None
        for node in reversed(rest):
            rhs = self.eval(node.children[1], env)
            op = node.data
            if op in ("union", "inter") and isinstance(acc, ir.Node) \
                    and isinstance(rhs, ir.Node):
                cls = ir.Union if op == "union" else ir.Inter
                if kind is not cls:
                    if kind is not None:
                        acc = kind(tuple(pending))
                    pending, kind = list(_flat(cls, acc)), cls
                pending.extend(_flat(cls, rhs))
                acc = cls(())  # placeholder; the real node is built from `pending`
                continue
            if kind is not None:
                acc, kind = kind(tuple(pending)), None
            acc = self._binary(node, acc, rhs)
        if kind is not None:
            acc = kind(tuple(pending))
        return acc

    def _binary(self, t, a, b):
        op = t.data
        if op in ("union", "inter", "sub") and isinstance(a, ir.Node) and isinstance(b, ir.Node):
            if op == "union":
                return ir.Union(_flat(ir.Union, a) + _flat(ir.Union, b))
            if op == "inter":
                return ir.Inter(_flat(ir.Inter, a) + _flat(ir.Inter, b))
            if isinstance(a, ir.Diff):  # (x - y) - b == x - (y | b): keeps the IR shallow
                return ir.Diff(a.a, ir.Union(_flat(ir.Union, a.b) + _flat(ir.Union, b)))
            return ir.Diff(a, b)
        if op in _ARITH and isinstance(a, ir.IntExpr) and isinstance(b, ir.IntExpr):
            if op in ("floordiv", "mod") and isinstance(b, ir.Const) and b.value == 0:
                self.fail(f"division by zero in `{ir.int_text(a)} {_OPSYM[op]} 0`", t.meta)
            return ir.fold(ir.BinOp(_ARITH[op], a, b, self._depth(t, a, b)))
        sym = _OPSYM[op]
        hint = ""
        if op in ("union", "inter"):
            hint = "; `|` and `&` combine patterns"
        elif op in _ARITH and op != "sub":
            hint = f"; `{sym}` is integer arithmetic, for arguments"
        self.fail(f"`{sym}` cannot combine {_kind(a)} with {_kind(b)}{hint}", t.meta)

    def _depth(self, where, *children) -> int:
        d = 1 + max((ir.expr_depth(c) for c in children), default=0)
        if d > ir.MAX_EXPR_DEPTH:
            self.fail(f"argument expression is nested {d} operations deep; the limit is "
                      f"{ir.MAX_EXPR_DEPTH}", getattr(where, "meta", where), PatternSyntaxError)
        return d

    def _unary(self, t, v):
        if t.data == "invert":
            if isinstance(v, ir.Node):
                return v.a if isinstance(v, ir.Not) else ir.Not(v)
            self.fail(f"`~` (complement) needs a pattern, got {_kind(v)}", t.meta)
        if isinstance(v, ir.IntExpr):
            return ir.fold(ir.Neg(v, self._depth(t, v))) if t.data == "neg" else v
        sym = "-" if t.data == "neg" else "+"
        self.fail(f"unary `{sym}` needs an integer, got {_kind(v)}; "
                  "use `~p` for a complement", t.meta)

    def _known(self, env: Env) -> list[str]:
        return sorted(set(prims.PRIMITIVES) | set(ir.FUNCTIONS) | set(env.values)
                      | set(env.presets) | {"n"})

    def _unknown(self, name: str, meta, env: Env):
        close = difflib.get_close_matches(name, self._known(env), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.fail(f"unknown name {name!r}{hint}", meta)

    def _name(self, tok: Token, env: Env):
        name = str(tok)
        if name in env.values:
            return env.values[name]
        if name == "n":
            return ir.SeqLen()
        if name in prims.PRIMITIVES:
            spec = prims.PRIMITIVES[name]
            if not spec.params:
                return ir.Prim(name)
            sig = ", ".join(p.name for p in spec.params)
            self.fail(f"{name} needs arguments: {name}({sig})", tok)
        if name in env.presets:
            pre = env.presets[name]
            if not pre.params:
                return self._apply(pre, [], {}, tok)
            self.fail(f"preset {name} needs arguments: {name}({', '.join(pre.params)})", tok)
        if name in ir.FUNCTIONS:
            self.fail(f"{name} is a function: {name}(x)", tok)
        if name in self.calling:
            self.fail(f"recursive preset: {' -> '.join(self.calling + (name,))}", tok)
        self._unknown(name, tok, env)

    def _args(self, t, env):
        pos, kw = [], {}
        for c in t.children[1:]:
            if c is None:
                continue
            if isinstance(c, Tree) and c.data == "kwarg":
                k = str(c.children[0])
                if k in kw:
                    self.fail(f"keyword argument {k!r} given twice", c.children[0])
                kw[k] = (self.eval(c.children[1], env), c)
            else:
                if kw:
                    self.fail("positional argument after a keyword argument", c.meta,
                              PatternSyntaxError)
                pos.append((self.eval(c, env), c))
        return pos, kw

    def _call(self, t, env):
        tok = t.children[0]
        name = str(tok)
        if name in self.calling:
            self.fail(f"recursive preset: {' -> '.join(self.calling + (name,))}", tok)
        if name in env.presets:
            pos, kw = self._args(t, env)
            return self._apply(env.presets[name], pos, kw, tok)
        if name in ir.FUNCTIONS:
            pos, kw = self._args(t, env)
            if kw:
                self.fail(f"{name}() takes no keyword arguments", tok)
            if len(pos) != ir.FUNCTIONS[name]:
                self.fail(f"{name}() takes {ir.FUNCTIONS[name]} argument(s), got {len(pos)}",
                          tok)
            args = []
            for v, c in pos:
                if not isinstance(v, ir.IntExpr):
                    self.fail(f"{name}() needs integer arguments, got {_kind(v)}", c.meta)
                args.append(v)
            return ir.fold(ir.Func(name, tuple(args), self._depth(tok, *args)))
        if name in prims.PRIMITIVES:
            pos, kw = self._args(t, env)
            return self._prim(prims.PRIMITIVES[name], pos, kw, tok)
        if name in env.values:
            self.fail(f"{name!r} is {_kind(env.values[name])}, not a preset; "
                      "it takes no arguments", tok)
        self._unknown(name, tok, env)

    def _prim(self, spec: prims.Primitive, pos, kw, tok):
        sig = f"{spec.name}({', '.join(p.name for p in spec.params)})"
        if len(pos) > len(spec.params):
            self.fail(f"{spec.name} takes {len(spec.params)} argument(s), got {len(pos)}: "
                      f"{sig}", tok)
        names = [p.name for p in spec.params]
        for k, (_, c) in kw.items():
            if k not in names:
                self.fail(f"{spec.name} has no argument {k!r}: {sig}", c.children[0])
            if names.index(k) < len(pos):
                self.fail(f"{spec.name}: argument {k!r} given twice", c.children[0])
        args = []
        for i, par in enumerate(spec.params):
            if i < len(pos):
                v, c = pos[i]
            elif par.name in kw:
                v, c = kw[par.name]
            elif par.default is not None:
                args.append(ir.Const(par.default))
                continue
            else:
                self.fail(f"{spec.name} is missing argument {par.name!r}: {sig}", tok)
            meta = c.meta
            if par.kind == "index":
                if not isinstance(v, (ir.IndexList, ir.IndexSlice)):
                    self.fail(f"{spec.name}: argument {par.name} must be an index set such as "
                              f"[0, -1] or [0:n:64], got {_kind(v)}", meta)
            elif not isinstance(v, ir.IntExpr):
                self.fail(f"{spec.name}: argument {par.name} must be an integer, "
                          f"got {_kind(v)}", meta)
            elif isinstance(v, ir.Const) and par.minimum is not None and v.value < par.minimum:
                self.fail(f"{spec.name}: argument {par.name} = {v.value}; "
                          f"{par.name} must be >= {par.minimum}", meta)
            args.append(v)
        vals = prims.const_values(tuple(args))
        problem = None if vals is None else spec.check(vals)
        if problem:
            self.fail(problem, tok)
        return ir.Prim(spec.name, tuple(args))

    def _apply(self, pre: Preset, pos, kw, tok):
        sig = f"{pre.name}({', '.join(pre.params)})"
        if len(pos) > len(pre.params):
            self.fail(f"preset {pre.name} takes {len(pre.params)} argument(s), got {len(pos)}: "
                      f"{sig}", tok)
        local = pre.env.child()
        for i, p in enumerate(pre.params):
            if i < len(pos):
                if p in kw:
                    self.fail(f"preset {pre.name}: argument {p!r} given twice", tok)
                local.values[p] = pos[i][0]
            elif p in kw:
                local.values[p] = kw[p][0]
            elif p in pre.defaults:
                local.values[p] = pre.defaults[p]
            else:
                self.fail(f"preset {pre.name} is missing argument {p!r}: {sig}", tok)
        for k, (_, c) in kw.items():
            if k not in pre.params:
                self.fail(f"preset {pre.name} has no argument {k!r}: {sig}", c.children[0])
        sub = _Evaluator(pre.src, pre.label, self.calling + (pre.name,))
        try:
            v = sub.eval(pre.body, local)
        except PatternNameError as e:
            raise PatternNameError(f"{e}\n  called from:\n"
                                   f"{caret(self.src, tok.line, tok.column, self.label)}") from None
        return v

    # -- statements
    def run(self, tree: Tree, env: Env, final_required: bool = True):
        stmts = [c for c in tree.children if isinstance(c, Tree)]
        result = None
        for k, s in enumerate(stmts):
            last = k == len(stmts) - 1
            if s.data == "bind":
                name = str(s.children[0])
                self._check_bindable(name, s.children[0])
                env.values[name] = self.eval(s.children[1], env)
                env.presets.pop(name, None)
            elif s.data == "define":
                self._define(s, env)
            else:
                if not last:
                    self.fail("only the last statement may be a bare expression; "
                              "bind it with `name = ...`", s.meta, PatternSyntaxError)
                result = (self.eval(s.children[0], env), s)
        if final_required:
            if result is None:
                where = stmts[-1].meta if stmts else None
                self.fail("a pattern program must end with a pattern expression", where,
                          PatternSyntaxError)
            v, s = result
            if not isinstance(v, ir.Node):
                self.fail(f"the program's last expression must be a pattern, got {_kind(v)}",
                          s.meta)
            return v
        return None

    def _check_bindable(self, name, tok):
        if name in prims.PRIMITIVES or name in ir.FUNCTIONS or name == "n":
            self.fail(f"cannot rebind the built-in name {name!r}", tok)

    def _define(self, s: Tree, env: Env):
        target, body = s.children
        tok = target.children[0]
        name = str(tok)
        self._check_bindable(name, tok)
        params, defaults = [], {}
        for c in target.children[1:]:
            if c is None:
                continue
            if isinstance(c, Tree) and c.data == "name":
                p = str(c.children[0])
            elif isinstance(c, Tree) and c.data == "kwarg":
                p = str(c.children[0])
                defaults[p] = self.eval(c.children[1], env)
            else:
                self.fail(f"preset {name}: parameters must be plain names", c.meta,
                          PatternSyntaxError)
            if p in params:
                self.fail(f"preset {name}: parameter {p!r} repeated", c.meta)
            self._check_bindable(p, c.meta)
            params.append(p)
        # a preset's body may use its parameters and names bound before it, never itself
        for sub in body.iter_subtrees():
            toks = ([sub.children[0]] if sub.data in ("name", "call") else [])
            for tk in toks:
                nm = str(tk)
                if nm == name:
                    self.fail(f"recursive preset: {name} uses itself", tk)
                if sub.data == "name" and nm not in params and nm not in env.values \
                        and nm not in env.presets and nm not in prims.PRIMITIVES and nm != "n":
                    self._unknown(nm, tk, env)
                if sub.data == "call" and nm not in env.presets and nm not in prims.PRIMITIVES \
                        and nm not in ir.FUNCTIONS:
                    self._unknown(nm, tk, env)
        env.presets[name] = Preset(name, tuple(params), defaults, body, env.child(), self.src,
                                   self.label)
        env.values.pop(name, None)


def _flat(cls, node):
    return node.items if isinstance(node, cls) else (node,)


_prelude_env: Env | None = None


def prelude_env() -> Env:
    """The environment of the shipped presets (``grammar/prelude.spattn``)."""
    global _prelude_env
    if _prelude_env is None:
        with _lock:
            if _prelude_env is None:
                src = resources.files("spattn.grammar").joinpath("prelude.spattn").read_text()
                env = Env()
                _Evaluator(src, "prelude").run(parse_tree(src, "prelude"), env,
                                               final_required=False)
                _prelude_env = env
    return _prelude_env


def parse_program(text: str, env: Env | None = None, label: str = "") -> ir.Node:
    """Parse and evaluate a pattern program; returns the (raw) pattern node."""
    if not isinstance(text, str):
        raise PatternSyntaxError(f"pattern text must be a str, got {type(text).__name__}")
    lifted, lists = lift_long_lists(text) if len(text) <= MAX_TEXT else (text, {})
    tree = parse_tree(lifted, label)
    env = (env or prelude_env()).child()
    env.values.update(lists)
    try:
        return _Evaluator(text, label).run(tree, env)
    except RecursionError:
        raise PatternSyntaxError("pattern is too deeply nested") from None


def parse_definitions(text: str, env: Env | None = None, label: str = "") -> Env:
    """Run a program of bindings and preset definitions (no final expression needed) and
    return the resulting environment. Used for user prelude files and YAML configs."""
    tree = parse_tree(text, label)
    env = (env or prelude_env()).child()
    _Evaluator(text, label).run(tree, env, final_required=False)
    return env


def presets() -> dict[str, tuple[str, ...]]:
    """Names of the shipped presets and their parameters."""
    return {k: v.params for k, v in prelude_env().presets.items()}


__all__ = ["parse_program", "parse_definitions", "prelude_env", "presets", "caret", "Env",
           "MAX_TEXT"]
