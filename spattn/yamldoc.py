"""Reading YAML configuration text safely, with every error naming the file, line and key.

In: YAML text and a label (the file name). Out: the composed node tree (:func:`compose`, safe
loader only) and :class:`Doc`, whose methods turn nodes into checked values (mappings with
known keys, integers in range, pattern text, layer/head selections) or raise
:class:`~spattn.errors.ConfigError` ``"file:line: key: problem"``. :mod:`spattn.config` builds
the model configuration on top.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from .errors import ConfigError
from .syntax import MAX_TEXT

_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                        for t in ("null", "bool", "int", "float", "str", "map", "seq"))



class Doc:
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
            raise self.error(node, key, f"cannot read value: {yaml_problem(e)}") from None

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """``{key: (key node, value node)}``; rejects duplicate and (if ``allowed``) unknown
        keys, naming the nearest known key."""
        if not isinstance(node, yaml.MappingNode):
            got = "a list" if isinstance(node, yaml.SequenceNode) else \
                f"{short(self.scalar(node, key))}"
            raise self.error(node, key, f"expected a mapping (key: value lines), got {got}")
        self.check_tag(node, key)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            k = self.scalar(knode, key)
            if not isinstance(k, str):
                raise self.error(knode, key, f"keys must be text, got {short(k)}")
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
            raise self.error(node, key, f"expected an integer, got {short(v)}")
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
            raise self.error(node, key, f"expected pattern text, got {short(v)}{hint}")
        if not v.strip():
            raise self.error(node, key, "empty pattern text")
        return v

    def source(self, node: yaml.ScalarNode, text: str) -> str:
        """``text`` padded with newlines so that the parser's line numbers are the file's."""
        first = node.start_mark.line + (1 if node.style in ("|", ">") else 0)
        return text if len(text) + first > MAX_TEXT else "\n" * first + text


def short(v: Any) -> str:
    """A value for a message: its type and a shortened repr."""
    r = repr(v)
    r = r if len(r) <= 60 else r[:57] + "..."
    return f"{type(v).__name__} {r}" if v is not None else "nothing (null)"


def yaml_problem(e: yaml.YAMLError) -> str:
    """The one-line problem of a YAML error."""
    return " ".join(str(getattr(e, "problem", None) or e).split())



def compose(text: str, label: str) -> yaml.Node | None:
    """The YAML node tree of ``text`` (safe loader), or a ConfigError with the line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{label}{line}: invalid YAML: {yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: invalid YAML: {yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None


def selection(doc: Doc, node: yaml.Node, key: str, limit: int, what: str) -> list[int]:
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
                                     f"\"0-3,8\", got {short(v)}")
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


def format_ranges(xs: list[int]) -> str:
    """Sorted integers as comma-separated inclusive ranges: ``[0, 1, 2, 5, 7, 8]`` ->
    ``"0-2,5,7-8"`` (layer and head selections in messages and summaries)."""
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}" if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)
