"""The ``spattn`` command line.

In: ``sys.argv``. Out: text on stdout (rich tables and trees, or JSON), PNG files, and an exit
status: 0 on success, 2 on a usage error or bad input (one clear message on stderr, never a
traceback), 1 when ``check`` finds problems, 130 when interrupted.

Commands (each a module of this package that registers itself with
:func:`spattn.cli.base.command`, so more can be added the same way)::

    spattn stats PATTERN -n N [-n N2 ...] [--block-size B] [--json]    # stats.py
    spattn show PATTERN -n N -o mask.png [--block-size B]                # show.py (needs [viz])
    spattn explain PATTERN [-n N]                                        # explain.py
    spattn check FILE.yaml                                               # check.py

:mod:`spattn.cli.base` holds what the commands share and imports none of them; this module
imports the commands (which registers them) and builds the parser. ``python -m spattn.cli``
runs :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import SpattnError
from . import base
from . import check as check
from . import explain as explain
from . import show as show
from . import stats as stats
from .base import COMMANDS, command, positive_int, seq_len, warnings_for
from .check import check_file

#: the order of commands in ``spattn --help``; commands registered elsewhere follow
ORDER = ("stats", "show", "explain", "check")

__all__ = ["main", "build_parser", "COMMANDS", "command", "seq_len", "positive_int",
           "warnings_for", "check_file", "base"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="spattn", description="Compile and inspect sparse attention patterns.",
        epilog="example: spattn stats 'local(64) | global([0,-1])' -n 4096 -n 65536")
    parser.add_argument("--version", action="version", version=f"spattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [c for c in ORDER if c in COMMANDS] + [c for c in COMMANDS if c not in ORDER]
    for name in names:
        help_, add, run = COMMANDS[name]
        sp = sub.add_parser(name, help=help_, description=help_)
        add(sp)
        sp.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spattn`` console script; returns (and exits with) a status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        status = args.run(args)
    except SpattnError as e:
        print(f"spattn {args.command}: error: {e}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except BrokenPipeError:
        status = 0
    except OSError as e:  # stdout on a full disk, /dev/full, a closed terminal
        print(f"spattn {args.command}: error: cannot write output: {e.strerror or e}",
              file=sys.stderr)
        status = 2
    return status
