"""Text → syntax tree: the lark grammar, the statement separator, limits, and syntax errors.

In: pattern text. Out: a lark ``Tree`` (:func:`parse_tree`; the grammar lives in
``grammar/spattn.lark``, its parse tables in the private cache directory), or a
:class:`~spattn.errors.PatternSyntaxError` that shows the text with a caret under the
offending column and names the expected tokens. :func:`lift_long_lists` keeps very long
literal index lists out of the LALR parse. :mod:`spattn.parse` evaluates the tree into IR.
"""

from __future__ import annotations

import re
import threading
from importlib import resources

from lark import Lark, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ir
from .cache import file_is_private, private_dir
from .errors import PatternSyntaxError

MAX_TEXT = 1_000_000  # characters
MAX_NESTING = 200  # brackets deep

_lock = threading.Lock()
_parser: Lark | None = None


class _Separators:
    """Postlexer: newlines and ';' separate statements, except that newlines inside parentheses
    or brackets are ignored; runs of separators count once, and leading or trailing ones are
    dropped."""

    always_accept = ("_SEP",)

    def process(self, stream):
        depth = 0
        pending = None  # a separator waiting for the next statement
        seen = False
        for tok in stream:
            if tok.type == "_SEP":
                if depth and tok.value == "\n":
                    continue
                if seen and pending is None:
                    pending = tok
                continue
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            if pending is not None:
                yield pending
                pending = None
            seen = True
            yield tok


def grammar_cache_file(src: str) -> str | bool:
    """A file for lark's parse tables (building them takes ~60 ms; loading ~5 ms) in this
    user's private cache directory (:func:`spattn.cache.private_dir`). Lark pickles the
    tables, so no file is used unless the directory is private, and an existing file only
    when it is a private regular file of this user."""
    import hashlib

    import lark

    d = private_dir()
    if d is None:
        return False
    path = d / f"grammar-{hashlib.sha256((src + lark.__version__).encode()).hexdigest()[:16]}"
    path = path.with_suffix(".lark-cache")
    if path.exists() and not file_is_private(path):
        return False
    return str(path)


def _get_parser() -> Lark:
    global _parser
    if _parser is None:
        with _lock:
            if _parser is None:
                src = resources.files("spattn.grammar").joinpath("spattn.lark").read_text()
                _parser = Lark(src, parser="lalr", lexer="basic", propagate_positions=True,
                               maybe_placeholders=True, postlex=_Separators(),
                               cache=grammar_cache_file(src))
    return _parser


# --------------------------------------------------------------------------------------------
# Error display

_TOKEN_NAMES = {
    "NAME": "a name", "INT": "an integer", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "COLON": "':'", "SEMICOLON": "';'", "EQUAL": "'='",
    "VBAR": "'|'", "AMPERSAND": "'&'", "MINUS": "'-'", "PLUS": "'+'", "STAR": "'*'",
    "TILDE": "'~'", "PERCENT": "'%'", "__ANON_0": "'//'", "SLASH": "'//'", "_NL": "a newline",
    "$END": "the end of the pattern", "_SEP": "a new statement",
}


def caret(src: str, line: int, col: int, label: str = "") -> str:
    """The source line ``line`` (1-based) with a caret under column ``col`` (1-based)."""
    lines = src.splitlines() or [""]
    line = min(max(line, 1), len(lines))
    text = lines[line - 1]
    if len(text) > 120:  # window long lines around the column
        lo = max(0, col - 60)
        text, col = ("…" if lo else "") + text[lo:lo + 120], col - lo + (1 if lo else 0)
    where = f"{label} line {line}" if label else f"line {line}"
    prefix = f"  {where}: " if len(lines) > 1 or label else "  "
    return f"{prefix}{text}\n{' ' * (len(prefix) + col - 1)}^"


def fail(cls, msg: str, src: str, meta, label: str = ""):
    line = getattr(meta, "line", None)
    col = getattr(meta, "column", None)
    if line is not None and col is not None:
        msg = f"{msg}\n{caret(src, line, col, label)}"
    raise cls(msg)


def syntax_error(text: str, e: UnexpectedInput, label: str = "") -> PatternSyntaxError:
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        what = f"unexpected character {ch!r}"
        if ch and ord(ch) > 127:
            what += f" (U+{ord(ch):04X}; patterns are plain ASCII)"
    elif isinstance(e, UnexpectedEOF):
        what = "the pattern ends too early"
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            what = "the pattern ends too early"
        elif tok.type == "_SEP":
            what = "unexpected end of statement"
        else:
            what = f"unexpected {str(tok)!r}"
    else:  # pragma: no cover
        what = "syntax error"
    expected = sorted({_TOKEN_NAMES.get(t, t) for t in (getattr(e, "expected", None) or ())
                       if not t.startswith("__")} - {"a new statement"})
    msg = f"syntax error: {what}"
    if expected:
        msg += "; expected " + (", ".join(expected[:-1]) + " or " + expected[-1]
                                if len(expected) > 1 else expected[0])
    line, col = getattr(e, "line", 1), getattr(e, "column", 1)
    at_end = isinstance(e, UnexpectedEOF) or (
        isinstance(e, UnexpectedToken) and e.token.type == "$END")
    if at_end or line in (None, -1):
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    return PatternSyntaxError(f"{msg}\n{caret(text, line, col, label)}")



def nesting(text: str) -> int:
    """The deepest bracket nesting of ``text``."""
    depth = best = 0
    for ch in text:
        if ch in "([":
            depth += 1
            best = max(best, depth)
        elif ch in ")]":
            depth -= 1
    return best


def parse_tree(text: str, label: str = "") -> Tree:
    """The lark tree of pattern text (limits checked first); syntax errors with a caret."""
    if not isinstance(text, str):
        raise PatternSyntaxError(f"pattern text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise PatternSyntaxError(f"pattern text is {len(text):,} characters; the limit is "
                                 f"{MAX_TEXT:,}")
    if "\x00" in text:
        pos = text.index("\x00")
        before = text[:pos]
        line = before.count("\n") + 1
        col = pos - (before.rfind("\n") + 1) + 1
        raise PatternSyntaxError("syntax error: NUL character in pattern text\n"
                                 + caret(text.replace("\x00", " "), line, col, label))
    if nesting(text) > MAX_NESTING:
        raise PatternSyntaxError(f"pattern nests brackets {nesting(text)} deep; the limit is "
                                 f"{MAX_NESTING}")
    try:
        return _get_parser().parse(text)
    except UnexpectedInput as e:
        raise syntax_error(text, e, label) from None
    except RecursionError:  # pragma: no cover - guarded by MAX_NESTING
        raise PatternSyntaxError("pattern is too deeply nested") from None



_LONG_LIST = re.compile(r"\[[ \t]*-?[0-9]+(?:[ \t]*,[ \t]*-?[0-9]+){15,}[ \t]*,?[ \t]*\]")


def lift_long_lists(text: str) -> tuple[str, dict]:
    """Replace long literal index lists (16+ integers on one line) by same-length names bound
    to the list: LALR parsing costs ~10 µs a token, and a 100,000-entry list would otherwise
    take seconds. Columns of everything else are unchanged, so carets stay right."""
    if text.count(",") < 15:
        return text, {}
    lists: dict = {}

    def sub(m: re.Match) -> str:
        name = f"_spattn_list_{len(lists)}"
        if len(name) > len(m.group(0)):
            return m.group(0)
        vals = [int(x) for x in re.findall(r"-?[0-9]+", m.group(0))]
        lists[name] = ir.IndexList(tuple(ir.Const(v) for v in vals))
        return name.ljust(len(m.group(0)))

    return _LONG_LIST.sub(sub, text), lists
