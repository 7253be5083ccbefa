"""``spattn stats PATTERN -n N [-n N2 ...] [--documents L1,L2,...] [--block-size B] [--json]``.

In: pattern text, one or more sequence lengths, a block size. Out: the pattern's figures
(:class:`~spattn.Stats`) as a rich table with one column per n, or ``Stats.to_dict()`` as
JSON; notes and warnings (:func:`~spattn.cli.base.warnings_for`) below the table; status 0.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import SpattnError
from .base import command, compile_pattern, console, positive_int, seq_len, warnings_for


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="pattern text, e.g. 'local(64) | global([0,-1])'")
    p.add_argument("-n", dest="n", action="append", type=seq_len,
                   help="sequence length (repeat for one column per length)")
    p.add_argument("--documents", action="append", type=_lengths, metavar="L1,L2,...",
                   help="a packed sequence: document lengths, comma-separated (repeat for "
                        "one column per packing)")
    p.add_argument("--block-size", type=positive_int, default=128, help="block size (128)")
    p.add_argument("--json", action="store_true", help="print Stats.to_dict() as JSON")


def _lengths(text: str):
    from ..documents import documents
    from ..errors import SpattnError

    try:
        return documents([int(x) for x in text.replace(" ", "").split(",") if x])
    except (ValueError, SpattnError) as e:
        raise argparse.ArgumentTypeError(f"document lengths must be positive integers "
                                         f"separated by commas, got {text!r}: {e}") from None


def _fmt_int(v) -> str:
    return f"{v:,}"


def _stats_table(rows: list) -> Any:
    from rich.table import Table

    t = Table(title=rows[0].pattern, title_justify="left")
    t.add_column("figure", style="bold")
    for s in rows:
        docs = "" if s.documents is None else f" ({s.documents['count']:,} docs)"
        t.add_column(f"n = {s.seq_len:,}{docs}", justify="right")

    def mark(s, key):
        return "" if s.exact.get(key, True) else " ~"

    def line(label, fn):
        t.add_row(label, *[fn(s) for s in rows])

    line("nnz", lambda s: _fmt_int(s.nnz) + mark(s, "nnz"))
    line("density", lambda s: f"{s.density:.4g}" + mark(s, "density"))
    line("row degree min", lambda s: _fmt_int(s.row_degree["min"]) + mark(s, "row_degree"))
    line("row degree mean", lambda s: f"{s.row_degree['mean']:,.1f}" + mark(s, "row_degree"))
    line("row degree max", lambda s: _fmt_int(s.row_degree["max"]) + mark(s, "row_degree"))
    line("empty rows", lambda s: _fmt_int(s.empty_rows) + mark(s, "empty_rows"))
    line("causal", lambda s: ("yes" if s.causal else "no") + mark(s, "causal"))
    line("symmetric", lambda s: ("yes" if s.symmetric else "no") + mark(s, "symmetric"))
    B = rows[0].blocks["block_size"]
    line(f"blocks ({B}) nonzero", lambda s: _fmt_int(s.blocks["nonzero"]) + mark(s, "blocks"))
    line("blocks full", lambda s: _fmt_int(s.blocks["full"]) + mark(s, "blocks"))
    line("blocks partial", lambda s: _fmt_int(s.blocks["partial"]) + mark(s, "blocks"))
    line("block density", lambda s: f"{s.blocks['density']:.4g}" + mark(s, "blocks"))
    line("block efficiency", lambda s: f"{s.blocks['efficiency']:.1%}" + mark(s, "blocks"))
    line("kv cache", lambda s: "n/a (not causal)" if s.kv_cache is None else
         _fmt_int(s.kv_cache) + (" (grows)" if s.kv_cache_grows else "") + mark(s, "kv_cache"))
    line("reachable", lambda s: f"{s.receptive_field['reachable']:.4g}"
         + mark(s, "receptive_field"))
    line("hops to full", lambda s: _fmt_int(s.receptive_field["hops_to_full"])
         + mark(s, "receptive_field"))
    depths = sorted({L for s in rows for L in s.receptive_field["coverage"]})
    shown = [L for L in depths if L & (L - 1) == 0][:6]
    for L in shown:
        line(f"coverage @ {L} layer{'s' if L > 1 else ''}",
             lambda s, L=L: (f"{s.receptive_field['coverage'][L]:.4g}"
                             if L in s.receptive_field["coverage"] else
                             f"{s.receptive_field['coverage'][max(s.receptive_field['coverage'])]:.4g}")
             + mark(s, "receptive_field"))
    line("method", lambda s: s.method)
    return t


@command("stats", "figures of a pattern: density, degrees, blocks, KV cache, receptive field",
         _stats_args)
def cmd_stats(args: argparse.Namespace) -> int:
    """`spattn stats`: the figures as a table (one column per n) or JSON."""
    p = compile_pattern(args.pattern)
    sizes = list(args.n or []) + list(args.documents or [])
    if not sizes:
        raise SpattnError("spattn stats needs a sequence length (-n N) or document lengths "
                          "(--documents L1,L2,...)")
    rows = [p.stats(n, block_size=args.block_size) for n in sizes]
    if args.json:
        data = [s.to_dict() for s in rows]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return 0
    con = console()
    con.print(_stats_table(rows))
    if any(not all(s.exact.values()) for s in rows):
        con.print("[dim]~ marks an estimate (see notes)[/dim]")
    seen = set()
    for s in rows:
        for note in s.notes:
            if note not in seen:
                seen.add(note)
                con.print(f"note: {note}", soft_wrap=True)
    for s in rows[-1:]:
        for w in warnings_for(s):
            con.print(f"[bold yellow]warning:[/bold yellow] {w}", soft_wrap=True)
    return 0

