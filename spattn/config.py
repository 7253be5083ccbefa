"""YAML model configurations: named patterns, presets, and per-layer / per-head assignments.

In: a YAML file (or text). Out: a :class:`Config` holding compiled :class:`~spattn.Pattern`
objects by name, the default sequence lengths for checking, and a model section that says
which pattern each (layer, head) uses. ``spattn check FILE.yaml`` is :func:`cli_check`.

Schema (every section optional except that a model needs ``num_layers`` and ``num_heads``)::

    defaults:
      seq_len: [4096, 16384]     # one length or a list; used by `spattn check` (default 4096)
      block_size: 128            # block size for the block statistics (default 128)
    presets: |                   # a program in the pattern language: presets and bindings
      band(w) = window(w, 0) & causal
      w = 64
    patterns:                    # name: pattern text; may use presets, bindings, other names
      win: local(w)
      longdoc: win | global([0, -1])
    model:
      num_layers: 12
      num_heads: 8
      embed_dim: 512             # optional; used by SparseAttention.from_config
      backend: auto              # optional; default "auto"
      pattern: win               # optional default for every (layer, head) not assigned below
      layers:                    # entries apply in order; a later entry overrides an earlier one
        - {layers: "0-5", pattern: longdoc}            # heads omitted: every head
        - {heads: "0-3", pattern: win}                 # layers omitted: every layer
        - {layers: [6, 7], heads: "4-7", pattern: "strided(128)"}

Layer and head selections are an integer, a string of comma-separated integers and inclusive
ranges (``"0-5,8"``), a list of those, or ``"all"``. Every (layer, head) must end up with a
pattern, and an entry whose every cell is overridden by later entries is an error (it has no
effect, which is almost always a mistake).

Named patterns are resolved in dependency order; a cycle is an error that names the patterns
involved (``a -> b -> a``). Every error is a :class:`~spattn.ConfigError` naming the file, the
line and the key. Files are read with PyYAML's safe loader only (no arbitrary objects).
"""

from __future__ import annotations

import difflib
import operator
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import ir
from .errors import ConfigError, SpattnError
from .parse import MAX_TEXT, Env, parse_definitions, parse_program
from .pattern import Pattern

__all__ = ["Config", "LayerGroup", "load", "loads", "cli_check"]

MAX_FILE_BYTES = 4 << 20
"""Largest YAML file :func:`load` reads (bytes)."""
MAX_LAYERS = 100_000
MAX_HEADS = 4096
MAX_CELLS = 1_000_000
"""Largest ``num_layers * num_heads`` a model section may declare."""

DEFAULT_SEQ_LENS = (4096,)
DEFAULT_BLOCK_SIZE = 128

_TOP_KEYS = ("defaults", "presets", "patterns", "model")
_DEFAULT_KEYS = ("seq_len", "block_size")
_MODEL_KEYS = ("num_layers", "num_heads", "embed_dim", "backend", "pattern", "layers")
_ENTRY_KEYS = ("layers", "heads", "pattern")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_COMMENT = re.compile(r"#[^\n]*")
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                        for t in ("null", "bool", "int", "float", "str", "map", "seq"))


# --------------------------------------------------------------------------------------------
# YAML nodes with positions


class _Doc:
    """The composed YAML document plus helpers that turn nodes into checked values."""

    def __init__(self, text: str, label: str):
        self.text = text
        self.label = label
        self._constructor = yaml.constructor.SafeConstructor()

    def line(self, node: yaml.Node | None) -> int:
        return node.start_mark.line + 1 if node is not None else 1

    def where(self, node: yaml.Node | None) -> str:
        return f"{self.label}:{self.line(node)}"

    def error(self, node: yaml.Node | None, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where(node)}: {key}: {msg}" if key
                           else f"{self.where(node)}: {msg}")

    def check_tag(self, node: yaml.Node, key: str) -> None:
        """Refuse explicit non-standard tags (``!!python/...``, ``!custom``): plain data only."""
        if node.tag not in _PLAIN_TAGS:
            raise self.error(node, key, f"unsupported YAML tag {node.tag!r}; configs hold "
                                        "plain data only")

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node] | None:
        """The items of a list node, or None when ``node`` is not a list."""
        if not isinstance(node, yaml.SequenceNode):
            return None
        self.check_tag(node, key)
        return list(node.value)

    def scalar(self, node: yaml.Node, key: str) -> Any:
        self.check_tag(node, key)
        if not isinstance(node, yaml.ScalarNode):
            kind = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            raise self.error(node, key, f"expected a single value, got {kind}")
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as e:
            raise self.error(node, key, f"cannot read value: {_yaml_problem(e)}") from None

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """``{key: (key node, value node)}``; rejects duplicate and (if ``allowed``) unknown
        keys, naming the nearest known key."""
        if not isinstance(node, yaml.MappingNode):
            got = "a list" if isinstance(node, yaml.SequenceNode) else \
                f"{_short(self.scalar(node, key))}"
            raise self.error(node, key, f"expected a mapping (key: value lines), got {got}")
        self.check_tag(node, key)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            k = self.scalar(knode, key)
            if not isinstance(k, str):
                raise self.error(knode, key, f"keys must be text, got {_short(k)}")
            sub = f"{key}.{k}" if key else k
            if k in out:
                raise self.error(knode, sub, f"duplicate key (first given on line "
                                             f"{self.line(out[k][0])})")
            if allowed is not None and k not in allowed:
                near = difflib.get_close_matches(k, allowed, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise self.error(knode, sub, f"unknown key; {hint}known keys: "
                                             f"{', '.join(allowed)}")
            out[k] = (knode, vnode)
        return out

    def integer(self, node: yaml.Node, key: str, lo: int, hi: int) -> int:
        v = self.scalar(node, key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(node, key, f"expected an integer, got {_short(v)}")
        if not lo <= v <= hi:
            raise self.error(node, key, f"{v} is out of range; expected {lo} <= value <= {hi}")
        return v

    def text_of(self, node: yaml.Node, key: str) -> str:
        v = self.scalar(node, key)
        if not isinstance(v, str):
            hint = ""
            if isinstance(v, bool):
                hint = " (YAML reads yes/no/on/off as booleans: quote the text)"
            elif isinstance(v, int):
                hint = " (bind integers in the presets block, e.g. `w = 64`)"
            raise self.error(node, key, f"expected pattern text, got {_short(v)}{hint}")
        if not v.strip():
            raise self.error(node, key, "empty pattern text")
        return v

    def source(self, node: yaml.ScalarNode, text: str) -> str:
        """``text`` padded with newlines so that the parser's line numbers are the file's."""
        first = node.start_mark.line + (1 if node.style in ("|", ">") else 0)
        return text if len(text) + first > MAX_TEXT else "\n" * first + text


def _short(v: Any) -> str:
    r = repr(v)
    r = r if len(r) <= 60 else r[:57] + "..."
    return f"{type(v).__name__} {r}" if v is not None else "nothing (null)"


def _yaml_problem(e: yaml.YAMLError) -> str:
    return " ".join(str(getattr(e, "problem", None) or e).split())


# --------------------------------------------------------------------------------------------
# The config object


@dataclass(frozen=True)
class LayerGroup:
    """Heads of one layer that share a pattern: ``heads`` (sorted head indices), ``name``
    (the pattern's name in the file, or its text when given inline) and ``pattern``."""

    heads: tuple[int, ...]
    name: str
    pattern: Pattern


class Config:
    """A loaded YAML configuration (see the module docstring for the schema).

    Attributes: ``path`` (the file, or None for :func:`loads`), ``patterns`` (read-only
    mapping name → :class:`Pattern`, in file order), ``seq_lens`` (tuple of default sequence
    lengths for checking), ``block_size``, and for a model section ``num_layers``,
    ``num_heads``, ``embed_dim`` (or None), ``backend``. Without a model section
    ``num_layers`` is None and :meth:`layer_patterns` raises :class:`ConfigError`.
    """

    def __init__(self, *, path: str | None, label: str, patterns: dict[str, Pattern],
                 origins: dict[str, str], seq_lens: tuple[int, ...], block_size: int,
                 num_layers: int | None, num_heads: int | None, embed_dim: int | None,
                 backend: str, cells: list[tuple[str, ...]] | None,
                 inline: dict[str, Pattern] | None = None):
        self.path = path
        self.label = label
        self.patterns: Mapping[str, Pattern] = MappingProxyType(dict(patterns))
        self._origins = dict(origins)
        self.seq_lens = seq_lens
        self.block_size = block_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.embed_dim = embed_dim
        self.backend = backend
        self._cells = cells  # per layer: the name of each head's pattern
        self._inline = dict(inline or {})  # model patterns given as text, not by name

    def __repr__(self) -> str:
        model = (f", num_layers={self.num_layers}, num_heads={self.num_heads}"
                 if self.has_model else "")
        return (f"Config({self.label!r}, patterns={list(self.patterns)}, "
                f"seq_lens={list(self.seq_lens)}{model})")

    @property
    def has_model(self) -> bool:
        """Whether the file has a ``model`` section."""
        return self._cells is not None

    def _resolve(self, name: str) -> Pattern:
        if name in self.patterns:
            return self.patterns[name]
        return self._inline[name]

    def _check_layer(self, layer: Any) -> int:
        if not self.has_model:
            raise ConfigError(f"{self.label}: the file has no `model` section, so it assigns "
                              "no patterns to layers")
        try:
            layer = operator.index(layer) if not isinstance(layer, bool) else layer
        except TypeError:
            pass
        if isinstance(layer, bool) or not isinstance(layer, int) \
                or not 0 <= layer < self.num_layers:  # type: ignore[operator]
            raise ConfigError(f"{self.label}: layer {layer!r} is out of range; the model has "
                              f"num_layers = {self.num_layers} (layers 0-"
                              f"{self.num_layers - 1})")  # type: ignore[operator]
        return layer

    def layer_patterns(self, layer: int) -> tuple[Pattern, ...]:
        """The ``num_heads`` patterns of ``layer``, one per head (pass to
        :func:`spattn.attention` or :class:`spattn.nn.SparseAttention`)."""
        layer = self._check_layer(layer)
        return tuple(self._resolve(n) for n in self._cells[layer])  # type: ignore[index]

    def layer_groups(self, layer: int) -> tuple[LayerGroup, ...]:
        """The heads of ``layer`` grouped by pattern, in order of their first head."""
        layer = self._check_layer(layer)
        groups: dict[str, list[int]] = {}
        for h, name in enumerate(self._cells[layer]):  # type: ignore[index]
            groups.setdefault(name, []).append(h)
        return tuple(LayerGroup(tuple(hs), name, self._resolve(name))
                     for name, hs in groups.items())

    def used_patterns(self) -> dict[str, Pattern]:
        """Every pattern the model uses (name or inline text → Pattern), in first-use order;
        without a model section, every named pattern."""
        if not self.has_model:
            return dict(self.patterns)
        out: dict[str, Pattern] = {}
        for row in self._cells:  # type: ignore[union-attr]
            for name in row:
                if name not in out:
                    out[name] = self._resolve(name)
        return out

    def origin(self, name: str) -> str:
        """``file:line: key`` where the pattern ``name`` (named or inline) is defined."""
        return self._origins.get(name, self.label)


# --------------------------------------------------------------------------------------------
# Loading


def load(path: str | os.PathLike) -> Config:
    """Read a YAML configuration file (safe loading only) and compile every pattern in it.

    Returns a :class:`Config`. Raises :class:`ConfigError` naming the file, line and key for
    anything wrong: a missing file, malformed YAML, unknown keys, bad pattern text, a cycle
    among named patterns, a layer or head out of range, an unassigned (layer, head).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"spattn.load takes a file path, got {type(path).__name__}: "
                          f"{path!r:.80}")
    if isinstance(path, str) and "\n" in path:
        raise ConfigError("spattn.load takes a file path, and this looks like YAML text; use "
                          "spattn.config.loads(text) for text")
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{p}: the file is {size:,} bytes; the limit for a config is "
                              f"{MAX_FILE_BYTES:,}")
        data = p.read_bytes()
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})"
                          ) from None
    return _build(text, str(p), str(p))


def loads(text: str, label: str = "<string>") -> Config:
    """Like :func:`load`, from YAML text; ``label`` names it in error messages."""
    if not isinstance(text, str):
        raise ConfigError(f"spattn.config.loads takes YAML text, got {type(text).__name__}")
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{label}: the text is {len(text):,} characters; the limit for a "
                          f"config is {MAX_FILE_BYTES:,}")
    return _build(text, None, label)


def _compose(text: str, label: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{label}{line}: invalid YAML: {_yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: invalid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None


def _build(text: str, path: str | None, label: str) -> Config:
    root = _compose(text, label)
    doc = _Doc(text, label)
    if root is None:
        raise ConfigError(f"{label}: the file is empty; expected keys such as `patterns` and "
                          "`model`")
    top = doc.mapping(root, "", _TOP_KEYS)

    # defaults
    seq_lens, block_size = DEFAULT_SEQ_LENS, DEFAULT_BLOCK_SIZE
    if "defaults" in top:
        d = doc.mapping(top["defaults"][1], "defaults", _DEFAULT_KEYS)
        if "seq_len" in d:
            seq_lens = _seq_lens(doc, d["seq_len"][1])
        if "block_size" in d:
            block_size = doc.integer(d["block_size"][1], "defaults.block_size", 1, 1 << 16)

    # presets: a program of definitions in the language
    # (parsing the empty program first builds the parser outside parse.py's prelude lock)
    env: Env = parse_definitions("", label=label)
    if "presets" in top:
        node = top["presets"][1]
        src = doc.text_of(node, "presets")
        try:
            env = parse_definitions(doc.source(node, src), env=env, label=label)
        except ConfigError:
            raise
        except SpattnError as e:
            raise doc.error(node, "presets", str(e)) from None
    env = env.child()

    # named patterns, in dependency order
    patterns: dict[str, Pattern] = {}
    origins: dict[str, str] = {}
    if "patterns" in top:
        patterns, origins = _named_patterns(doc, top["patterns"][1], env)

    cfg_kw: dict[str, Any] = dict(num_layers=None, num_heads=None, embed_dim=None,
                                  backend="auto", cells=None)
    inline: dict[str, Pattern] = {}
    if "model" in top:
        cfg_kw = _model(doc, top["model"][1], env, patterns, origins, inline)
    return Config(path=path, label=label, patterns=patterns, origins=origins,
                  seq_lens=seq_lens, block_size=block_size, inline=inline, **cfg_kw)


def _seq_lens(doc: _Doc, node: yaml.Node) -> tuple[int, ...]:
    key = "defaults.seq_len"
    items = doc.sequence(node, key)
    items = [node] if items is None else items
    if not items:
        raise doc.error(node, key, "empty list; give at least one sequence length")
    out = tuple(doc.integer(x, key, 1, 1 << 40) for x in items)
    return tuple(dict.fromkeys(out))


def _deps(text: str, names: Mapping[str, Any]) -> list[str]:
    """Named patterns a pattern's text mentions (identifiers, comments removed)."""
    seen = dict.fromkeys(m for m in _IDENT.findall(_COMMENT.sub("", text)) if m in names)
    return list(seen)


def _check_name(doc: _Doc, knode: yaml.Node, name: str, env: Env) -> None:
    key = f"patterns.{name}"
    if not _IDENT.fullmatch(name):
        raise doc.error(knode, key, "a pattern name must be an identifier (letters, digits, "
                                    "underscores; not starting with a digit)")
    if name in ir.PRIMITIVES or name in ir.FUNCTIONS or name == "n":
        raise doc.error(knode, key, f"{name!r} is a built-in name of the pattern language; "
                                    "choose another name")
    if name in env.presets:
        raise doc.error(knode, key, f"{name!r} is already a preset; choose another name")
    if name in env.values:
        raise doc.error(knode, key, f"{name!r} is already bound in the presets block")


def _named_patterns(doc: _Doc, node: yaml.Node, env: Env
                    ) -> tuple[dict[str, Pattern], dict[str, str]]:
    items = doc.mapping(node, "patterns", None)
    raw: dict[str, tuple[yaml.Node, yaml.Node, str]] = {}
    for name, (knode, vnode) in items.items():
        _check_name(doc, knode, name, env)
        raw[name] = (knode, vnode, doc.text_of(vnode, f"patterns.{name}"))
    deps = {name: _deps(t, raw) for name, (_, _, t) in raw.items()}

    done: dict[str, Pattern] = {}

    def compile_one(name: str) -> None:
        knode, vnode, t = raw[name]
        try:
            node_ = parse_program(doc.source(vnode, t), env=env, label=doc.label)
            p = Pattern(node_)
        except SpattnError as e:
            raise doc.error(vnode, f"patterns.{name}", str(e)) from None
        env.values[name] = p.node
        done[name] = p

    for root in raw:  # iterative depth-first search: dependencies first, cycles named
        if root in done:
            continue
        path, iters = [root], [iter(deps[root])]
        while path:
            d = next(iters[-1], None)
            if d is None:
                compile_one(path.pop())
                iters.pop()
                continue
            if d in done:
                continue
            if d in path:
                cycle = path[path.index(d):] + [d]
                first = raw[cycle[0]][0]
                raise doc.error(first, "patterns", "named patterns refer to each other in a "
                                                   f"cycle: {' -> '.join(cycle)}")
            path.append(d)
            iters.append(iter(deps[d]))
    ordered = {name: done[name] for name in raw}
    origins = {name: f"{doc.where(raw[name][1])}: patterns.{name}" for name in raw}
    return ordered, origins


def _selection(doc: _Doc, node: yaml.Node, key: str, limit: int, what: str) -> list[int]:
    """Parse a layer or head selection: int, "0-5,8", a list of those, or "all"."""
    items = doc.sequence(node, key)
    if items is not None:
        if not items:
            raise doc.error(node, key, f"empty list of {what}s")
        parts = [(doc.scalar(x, key), x) for x in items]
    else:
        parts = [(doc.scalar(node, key), node)]
    out: list[int] = []
    hi = limit - 1
    for v, n_ in parts:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise doc.error(n_, key, f"expected {what} numbers such as 3, \"0-5\" or "
                                     f"\"0-3,8\", got {_short(v)}")
        if isinstance(v, str) and v.strip().lower() in ("all", "*"):
            out.extend(range(limit))
            continue
        pieces = [v] if isinstance(v, int) else [s.strip() for s in v.split(",")]
        for s in pieces:
            if isinstance(s, int):
                a = b = s
            else:
                m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", s)
                if not m:
                    raise doc.error(n_, key, f"cannot read {s!r}: expected {what} numbers such "
                                             "as 3, \"0-5\" (inclusive) or \"0-3,8\"")
                a = int(m.group(1))
                b = int(m.group(2)) if m.group(2) is not None else a
                if b < a:
                    raise doc.error(n_, key, f"range {s!r} is backwards (write {b}-{a})")
            for x in (a, b):
                if not 0 <= x <= hi:
                    raise doc.error(n_, key, f"{what} {x} is out of range: the model has "
                                             f"num_{what}s = {limit} ({what}s 0-{hi})")
            out.extend(range(a, b + 1))
    return sorted(set(out))


def _ranges(xs: list[int]) -> str:
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}" if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def _model(doc: _Doc, node: yaml.Node, env: Env, patterns: dict[str, Pattern],
           origins: dict[str, str], inline: dict[str, Pattern]) -> dict[str, Any]:
    m = doc.mapping(node, "model", _MODEL_KEYS)
    for req in ("num_layers", "num_heads"):
        if req not in m:
            raise doc.error(node, "model", f"missing key `{req}`")
    L = doc.integer(m["num_layers"][1], "model.num_layers", 1, MAX_LAYERS)
    H = doc.integer(m["num_heads"][1], "model.num_heads", 1, MAX_HEADS)
    if L * H > MAX_CELLS:
        raise doc.error(node, "model", f"num_layers * num_heads = {L * H:,} exceeds the limit "
                                       f"{MAX_CELLS:,}")
    embed_dim = None
    if "embed_dim" in m:
        embed_dim = doc.integer(m["embed_dim"][1], "model.embed_dim", 1, 1 << 20)
        if embed_dim % H:
            raise doc.error(m["embed_dim"][1], "model.embed_dim",
                            f"embed_dim = {embed_dim} is not divisible by num_heads = {H}")
    backend = "auto"
    if "backend" in m:
        b = doc.scalar(m["backend"][1], "model.backend")
        if not isinstance(b, str) or not b.isidentifier():
            raise doc.error(m["backend"][1], "model.backend",
                            f"expected a backend name such as auto, cpu or triton, got "
                            f"{_short(b)}")
        backend = b

    def pattern_ref(vnode: yaml.Node, key: str) -> str:
        t = doc.text_of(vnode, key)
        name = t.strip()
        if name in patterns:
            return name
        try:
            p = Pattern(parse_program(doc.source(vnode, t), env=env, label=doc.label))
        except SpattnError as e:
            raise doc.error(vnode, key, str(e)) from None
        disp = " ".join(name.split())
        inline[disp] = p
        origins.setdefault(disp, f"{doc.where(vnode)}: {key}")
        return disp

    cells: list[list[str | None]] = [[None] * H for _ in range(L)]
    owner: list[list[int]] = [[-1] * H for _ in range(L)]  # -1: the model's default pattern
    if "pattern" in m:
        default = pattern_ref(m["pattern"][1], "model.pattern")
        cells = [[default] * H for _ in range(L)]
    entries: list[yaml.Node] = []
    if "layers" in m:
        lnode = m["layers"][1]
        seq = doc.sequence(lnode, "model.layers")
        if seq is None:
            raise doc.error(lnode, "model.layers", "expected a list of entries such as "
                                                   "`- {layers: \"0-5\", pattern: win}`")
        entries = seq
    for k, enode in enumerate(entries):
        key = f"model.layers[{k}]"
        e = doc.mapping(enode, key, _ENTRY_KEYS)
        if "pattern" not in e:
            raise doc.error(enode, key, "missing key `pattern`")
        name = pattern_ref(e["pattern"][1], f"{key}.pattern")
        layers = (_selection(doc, e["layers"][1], f"{key}.layers", L, "layer")
                  if "layers" in e else list(range(L)))
        heads = (_selection(doc, e["heads"][1], f"{key}.heads", H, "head")
                 if "heads" in e else list(range(H)))
        for layer in layers:
            for h in heads:
                cells[layer][h] = name
                owner[layer][h] = k
    used = {o for row in owner for o in row}
    for k, enode in enumerate(entries):
        if k not in used:
            raise doc.error(enode, f"model.layers[{k}]",
                            "this entry has no effect: later entries override every layer and "
                            "head it selects")
    for layer, row in enumerate(cells):
        missing = [h for h, c in enumerate(row) if c is None]
        if missing:
            raise doc.error(node, "model", f"layer {layer} heads {_ranges(missing)} have no "
                                           "pattern; add a `layers` entry for them or a "
                                           "default `pattern` for the model")
    return dict(num_layers=L, num_heads=H, embed_dim=embed_dim, backend=backend,
                cells=[tuple(row) for row in cells])  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# `spattn check FILE.yaml`


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _coverage_at(rf: Mapping[str, Any], depth: int) -> str:
    """Receptive-field coverage after ``depth`` layers as ``"full@L"`` (everything reachable
    is reached after L <= depth layers) or ``"0.75@8"`` (the largest tabulated L <= depth)."""
    hops = rf.get("hops_to_full")
    if isinstance(hops, int) and hops <= depth:
        reach = rf.get("reachable")
        return f"full@{hops}" if reach in (None, 1, 1.0) else f"{_fmt(reach)}@{hops}"
    cov = rf.get("coverage")
    pairs: list[tuple[int, Any]] = []
    if isinstance(cov, Mapping):
        for k, v in cov.items():
            try:
                pairs.append((int(k), v))
            except (TypeError, ValueError):
                continue
    pairs = [p for p in sorted(pairs) if p[0] <= depth]
    return f"{_fmt(pairs[-1][1])}@{pairs[-1][0]}" if pairs else "-"


def cli_check(path: str) -> int:
    """``spattn check FILE.yaml``: load the file, compile every pattern, compute each pattern's
    statistics at the default sequence lengths and print a summary per layer. Returns the exit
    status: 0 when everything compiles and lowers, 1 on any problem (each printed with the
    file, line and key)."""
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)
    if not out.is_terminal:  # logs and pipes: wide enough for the tables
        out = Console(highlight=False, width=140)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        cfg = load(path)
    except SpattnError as e:
        err.print(f"[bold red]error:[/] {_esc(str(e))}")
        return 1

    problems: list[str] = []
    warnings: list[str] = []
    stats: dict[tuple[str, int], dict[str, Any] | None] = {}
    used = cfg.used_patterns()
    to_check = dict(cfg.patterns)
    to_check.update(used)
    for name, p in to_check.items():
        for n in cfg.seq_lens:
            try:
                d = p.stats(n, block_size=cfg.block_size).to_dict()
            except SpattnError as e:
                problems.append(f"{cfg.origin(name)}: at seq_len {n}: {e}")
                d = None
            stats[name, n] = d
            if d and d.get("empty_rows"):
                warnings.append(f"{cfg.origin(name)}: at seq_len {n}, {d['empty_rows']:,} "
                                "queries attend no key (their output is zero)")

    out.print(f"[bold]{_esc(cfg.label)}[/]: {len(cfg.patterns)} named pattern(s); "
              f"seq_len {', '.join(map(str, cfg.seq_lens))}; block size {cfg.block_size}")
    if cfg.patterns:
        t = Table(title="Named patterns", title_justify="left")
        t.add_column("name", style="cyan")
        t.add_column("canonical form")
        t.add_column("defined at")
        for name, p in cfg.patterns.items():
            t.add_row(name, _esc(str(p)), _esc(cfg.origin(name).split(": ")[0]))
        out.print(t)

    depth = cfg.num_layers or 1
    for n in cfg.seq_lens:
        title = (f"Layers at n = {n:,} ({cfg.num_layers} layers x {cfg.num_heads} heads, "
                 f"backend {cfg.backend})" if cfg.has_model else f"Patterns at n = {n:,}")
        t = Table(title=title, title_justify="left")
        if cfg.has_model:
            t.add_column("layers", justify="right")
            t.add_column("heads", justify="right")
        t.add_column("pattern", style="cyan", overflow="fold", min_width=14)
        for col in ("density", "keys/q", "empty", "causal", "hops", f"cov@{depth}",
                    "blk eff", "kv"):
            t.add_column(col, justify="right")
        rows: list[tuple[list[str], list[tuple[tuple[int, ...], str]]]] = []
        if cfg.has_model:
            for layer in range(cfg.num_layers):  # type: ignore[arg-type]
                sig = [(g.heads, g.name) for g in cfg.layer_groups(layer)]
                if rows and rows[-1][1] == sig and rows[-1][0][-1] == layer - 1:
                    rows[-1][0].append(layer)  # type: ignore[arg-type]
                else:
                    rows.append(([layer], sig))  # type: ignore[list-item]
        else:
            rows = [([], [((), name)]) for name in cfg.patterns]
        for k, (layers, sig) in enumerate(rows):
            for gi, (heads, name) in enumerate(sig):
                d = stats.get((name, n))
                cells = [_esc(name)]
                if d is None:
                    cells += ["[red]error[/]"] + [""] * 7
                else:
                    rf = d.get("receptive_field") or {}
                    blocks = d.get("blocks") or {}
                    deg = d.get("row_degree") or {}
                    kv = d.get("kv_cache")
                    kv = kv.get("max", kv.get("value")) if isinstance(kv, Mapping) else kv
                    cells += [_fmt(d.get("density")), _fmt(deg.get("mean"), 4),
                              _fmt(d.get("empty_rows")), _fmt(d.get("causal")),
                              _fmt(rf.get("hops_to_full")), _coverage_at(rf, depth),
                              _fmt(blocks.get("efficiency")), _fmt(kv)]
                if cfg.has_model:
                    lcol = _ranges(layers) if gi == 0 else ""  # type: ignore[arg-type]
                    cells = [lcol, _ranges(list(heads))] + cells
                t.add_row(*cells, end_section=(gi == len(sig) - 1 and k < len(rows) - 1))
        out.print(t)

    out.print(f"keys/q: mean keys per query; empty: queries with no key; hops: layers until "
              f"every reachable pair is reached; cov@{depth}: receptive-field coverage after "
              f"{depth} layer(s) (full@L: complete after L layers; x@L: x after L layers, the "
              f"largest tabulated L); blk eff: nnz / computed block "
              f"area at block size {cfg.block_size}; kv: KV-cache keys (causal only)")
    for w in warnings:
        err.print(f"[yellow]warning:[/] {_esc(w)}")
    for pmsg in problems:
        err.print(f"[bold red]error:[/] {_esc(pmsg)}")
    if problems:
        err.print(f"[bold red]{len(problems)} problem(s)[/] in {_esc(cfg.label)}")
        return 1
    what = (f"{cfg.num_layers} layers x {cfg.num_heads} heads, " if cfg.has_model else "")
    out.print(f"[green]ok[/]: {what}{len(used)} distinct pattern(s) checked at "
              f"{len(cfg.seq_lens)} sequence length(s)")
    return 0


def _esc(s: str) -> str:
    from rich.markup import escape

    return escape(s)
