"""YAML model configurations: named patterns, presets, and per-layer / per-head assignments.

In: a YAML file (or text). Out: a :class:`Config` holding compiled :class:`~spattn.Pattern`
objects by name, the default sequence lengths for checking, and a model section that says
which pattern each (layer, head) uses. Loading and validation only: ``spattn check FILE.yaml``
(:func:`spattn.cli.check.check_file`) renders the summary.

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

import operator
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import ir, prims
from .errors import ConfigError, SpattnError
from .parse import Env, parse_definitions, parse_program
from .pattern import Pattern
from .yamldoc import Doc, compose, format_ranges, selection, short

__all__ = ["Config", "LayerGroup", "load", "loads", "format_ranges"]

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
    data = _read_bounded(p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})"
                          ) from None
    return _build(text, str(p), str(p))


def _read_bounded(p: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES. Devices (``/dev/zero``: size 0
    on stat, endless on read), FIFOs (a read blocks forever) and sockets are refused; the file
    is opened non-blocking and checked on the opened descriptor, and never read past the
    limit."""
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{p}: is a directory, not a YAML file")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
                    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                    if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise ConfigError(f"{p}: is {kind}; spattn reads configs from regular files only")
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{p}: the file is {st.st_size:,} bytes; the limit for a config "
                              f"is {MAX_FILE_BYTES:,}")
        chunks, total = [], 0
        while True:  # the size can change under us: never read past the limit
            b = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > MAX_FILE_BYTES:
                raise ConfigError(f"{p}: the file is over {MAX_FILE_BYTES:,} bytes, the limit "
                                  "for a config")
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def loads(text: str, label: str = "<string>") -> Config:
    """Like :func:`load`, from YAML text; ``label`` names it in error messages."""
    if not isinstance(text, str):
        raise ConfigError(f"spattn.config.loads takes YAML text, got {type(text).__name__}")
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{label}: the text is {len(text):,} characters; the limit for a "
                          f"config is {MAX_FILE_BYTES:,}")
    return _build(text, None, label)


def _build(text: str, path: str | None, label: str) -> Config:
    root = compose(text, label)
    doc = Doc(text, label)
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


def _seq_lens(doc: Doc, node: yaml.Node) -> tuple[int, ...]:
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


def _check_name(doc: Doc, knode: yaml.Node, name: str, env: Env) -> None:
    key = f"patterns.{name}"
    if not _IDENT.fullmatch(name):
        raise doc.error(knode, key, "a pattern name must be an identifier (letters, digits, "
                                    "underscores; not starting with a digit)")
    if name in prims.PRIMITIVES or name in ir.FUNCTIONS or name == "n":
        raise doc.error(knode, key, f"{name!r} is a built-in name of the pattern language; "
                                    "choose another name")
    if name in env.presets:
        raise doc.error(knode, key, f"{name!r} is already a preset; choose another name")
    if name in env.values:
        raise doc.error(knode, key, f"{name!r} is already bound in the presets block")


def _named_patterns(doc: Doc, node: yaml.Node, env: Env
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


def _model(doc: Doc, node: yaml.Node, env: Env, patterns: dict[str, Pattern],
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
                            f"{short(b)}")
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
        layers = (selection(doc, e["layers"][1], f"{key}.layers", L, "layer")
                  if "layers" in e else list(range(L)))
        heads = (selection(doc, e["heads"][1], f"{key}.heads", H, "head")
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
            raise doc.error(node, "model", f"layer {layer} heads {format_ranges(missing)} have no "
                                           "pattern; add a `layers` entry for them or a "
                                           "default `pattern` for the model")
    return dict(num_layers=L, num_heads=H, embed_dim=embed_dim, backend=backend,
                cells=[tuple(row) for row in cells])  # type: ignore[misc]
