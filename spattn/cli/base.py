"""What every ``spattn`` command shares: the command registry, argparse types, the console.

In: command modules that register themselves with :func:`command`. Out: :data:`COMMANDS`
(read by :func:`spattn.cli.build_parser`), the argparse types :func:`seq_len` and
:func:`positive_int`, :func:`console` (a rich console sized for terminals and pipes),
:func:`compile_pattern` and :func:`warnings_for` (human warnings about a
:class:`~spattn.Stats`, printed by ``stats`` and ``show``).

This module imports neither :mod:`spattn.cli` nor any command module, so commands can import
it without an import cycle.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

__all__ = ["COMMANDS", "command", "seq_len", "positive_int", "console", "compile_pattern",
           "warnings_for"]

#: name -> (help, add_arguments(parser), run(args) -> exit status)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> int`` as the subcommand ``name``."""
    def deco(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return deco


def seq_len(text: str) -> int:
    """A sequence length: ``4096``, ``64k``, ``1M``, ``2**20`` or ``2^20``."""
    s = text.strip().replace("_", "").replace(",", "")
    m = re.fullmatch(r"(\d+)\s*(?:\*\*|\^)\s*(\d+)", s)
    if m:
        v = int(m.group(1)) ** int(m.group(2)) if int(m.group(2)) < 64 else -1
    else:
        m = re.fullmatch(r"(\d+)([kKmMgG]?)", s)
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r} is not a sequence length "
                                             "(examples: 4096, 64k, 1M, 2**20)")
        v = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    if v < 1:
        raise argparse.ArgumentTypeError(f"sequence length must be >= 1, got {text!r}")
    return v


def positive_int(text: str) -> int:
    """argparse type for a positive integer such as ``--block-size 128``."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def console(stderr: bool = False, width: int = 120):
    """A rich console without syntax highlighting; ``width`` columns when output is not a
    terminal and ``COLUMNS`` is unset (logs and pipes)."""
    import os

    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, highlight=False, width=width)
    return con


def compile_pattern(text: str):
    """Compile pattern text to a :class:`~spattn.Pattern` (errors are SpattnErrors)."""
    from ..pattern import compile as _c

    return _c(text)


def warnings_for(s) -> list[str]:
    """Human warnings about a :class:`~spattn.Stats`."""
    out = []
    n = s.seq_len
    rf = s.receptive_field
    best = (n + 1) / (2 * n) if s.causal else 1.0
    if n > 1 and rf["reachable"] < 0.99 * best and s.documents is None:  # documents: by design
        out.append(f"never mixes: at n = {n:,}, stacking any number of layers lets a query see "
                   f"only {rf['reachable']:.1%} of all (query, key) pairs "
                   f"(at most {best:.1%} possible); information stays inside groups")
    eff = s.blocks["efficiency"]
    if s.blocks["nonzero"] and eff < 0.25:
        out.append(f"block efficiency is {eff:.1%} at block size {s.blocks['block_size']} "
                   f"(n = {n:,}): most block work is masked out")
    if s.kv_cache is not None and s.kv_cache_grows:
        out.append(f"KV cache grows with n ({s.kv_cache:,} keys at n = {n:,}): decoding memory "
                   "is not bounded")
    return out
