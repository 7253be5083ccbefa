"""The ``spattn`` command line.

In: ``sys.argv``. Out: text on stdout (rich tables and trees, or JSON), PNG files, and an exit
status: 0 on success, 2 on a usage error or bad input (one clear message on stderr, never a
traceback), 1 when ``check`` finds problems.

Commands (each registered with :func:`command`, so more can be added the same way)::

    spattn stats PATTERN -n N [-n N2 ...] [--block-size B] [--json]
    spattn show PATTERN -n N -o mask.png [--block-size B]
    spattn explain PATTERN [-n N]
    spattn check FILE.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from .errors import SpattnError

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
    """argparse type for -n / --block-size: 4096, 64k, 1M or 2**20."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _console(stderr: bool = False):
    import os

    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, highlight=False, width=120)
    return con


def _compile(text: str):
    from .pattern import compile as _c

    return _c(text)


# --------------------------------------------------------------------------------------------
# stats


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="pattern text, e.g. 'local(64) | global([0,-1])'")
    p.add_argument("-n", dest="n", action="append", type=seq_len, required=True,
                   help="sequence length (repeat for one column per length)")
    p.add_argument("--block-size", type=positive_int, default=128, help="block size (128)")
    p.add_argument("--json", action="store_true", help="print Stats.to_dict() as JSON")


def _fmt_int(v) -> str:
    return f"{v:,}"


def warnings_for(s) -> list[str]:
    """Human warnings about a :class:`~spattn.Stats`."""
    out = []
    n = s.seq_len
    rf = s.receptive_field
    best = (n + 1) / (2 * n) if s.causal else 1.0
    if n > 1 and rf["reachable"] < 0.99 * best:
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


def _stats_table(rows: list) -> Any:
    from rich.table import Table

    t = Table(title=rows[0].pattern, title_justify="left")
    t.add_column("figure", style="bold")
    for s in rows:
        t.add_column(f"n = {s.seq_len:,}", justify="right")

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
    from .analysis import stats

    p = _compile(args.pattern)
    rows = [stats(p, n, block_size=args.block_size) for n in args.n]
    if args.json:
        data = [s.to_dict() for s in rows]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return 0
    con = _console()
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


# --------------------------------------------------------------------------------------------
# show


def _show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="pattern text")
    p.add_argument("-n", dest="n", type=seq_len, required=True, help="sequence length")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--block-size", type=positive_int, default=128,
                   help="block size used for the stats in the caption (128)")


TOKEN_LEVEL_MAX = 2048  #: token-level picture up to this n; a tile heat map beyond
HEATMAP_TILES = 256  #: tiles per side of the heat map


def tile_density(node, n: int, tiles: int = HEATMAP_TILES,
                 budget: int = 4_000_000) -> tuple[Any, int, bool]:
    """Fraction of pairs present in each of ``tiles × tiles`` tiles (from row intervals, no
    n×n array). Rows are sampled (2 per tile row) when lowering all would exceed ``budget``
    intervals. Returns (grid, tile size, exact)."""
    import numpy as np

    from . import lower

    T = math.ceil(n / tiles)
    g = math.ceil(n / T)
    b = lower.bind(node, n)
    exact = b.est * n <= budget
    if exact:
        rows = np.arange(n, dtype=np.int64)
    else:
        rows = np.unique(np.concatenate([np.arange(g) * T, np.minimum(np.arange(g) * T + T // 2,
                                                                      n - 1)]))
    grid = np.zeros((g, g))
    counted = np.bincount(rows // T, minlength=g).astype(float)
    brk = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.concatenate([[0], brk])]
    ends = rows[np.concatenate([brk - 1, [len(rows) - 1]])] + 1
    for s0, e0 in zip(starts.tolist(), ends.tolist(), strict=True):
        for a, c in lower.chunks(b, n, s0, e0):
            row, lo, hi = lower.eval_rows(b, n, a, c)
            if len(lo) == 0:
                continue
            t0, t1 = lo // T, (hi - 1) // T + 1
            cnt = t1 - t0
            idx = np.repeat(np.arange(len(lo)), cnt)
            t = np.repeat(t0, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt,
                                                                             cnt))
            ov = np.minimum(hi[idx], (t + 1) * T) - np.maximum(lo[idx], t * T)
            np.add.at(grid, (row[idx] // T, t), ov)
    width = np.minimum(T, n - np.arange(g) * T).astype(float)
    grid /= np.maximum(counted, 1)[:, None] * width[None, :]
    return grid, T, exact


@command("show", "draw the mask (or a tile heat map) beside receptive-field coverage",
         _show_args)
def cmd_show(args: argparse.Namespace) -> int:
    """`spattn show`: a PNG of the mask beside receptive-field coverage against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import os

    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from .analysis import stats
    from .lower import check_n

    p = _compile(args.pattern)
    n = check_n(args.n)
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise SpattnError(f"cannot write {args.output!r}: no directory {parent!r}")
    s = stats(p, n, block_size=args.block_size)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 5.5),
                                   gridspec_kw={"width_ratios": [1.1, 1]})
    if n <= TOKEN_LEVEL_MAX:
        m = p.to_dense(n)
        ax0.imshow(m, cmap="Greys", interpolation="nearest", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
        ax0.set_title(f"mask at n = {n:,} (black: query attends key)")
        ax0.set_xlabel("key position j")
        ax0.set_ylabel("query position i")
    else:
        import numpy as np
        from matplotlib.colors import LogNorm

        grid, T, exact = tile_density(p.node, n)
        pos = grid[grid > 0]
        cmap = matplotlib.colormaps["viridis"].copy()
        cmap.set_bad("white")
        norm = LogNorm(vmin=max(float(pos.min()) if len(pos) else 1e-6, 1e-7), vmax=1.0)
        im = ax0.imshow(np.ma.masked_equal(grid, 0), cmap=cmap, norm=norm,
                        interpolation="nearest", extent=(0, n, n, 0))
        fig.colorbar(im, ax=ax0, fraction=0.046, pad=0.04,
                     label="fraction of pairs in tile (log scale; white: none)")
        fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
        ax0.xaxis.set_major_formatter(fmt)
        ax0.yaxis.set_major_formatter(fmt)
        how = "" if exact else ", sampled rows"
        ax0.set_title(f"tile density at n = {n:,} (tiles of {T:,}×{T:,} positions{how})")
        ax0.set_xlabel("key position j")
        ax0.set_ylabel("query position i")
    cov = s.receptive_field["coverage"]
    Ls = sorted(cov)
    ax1.plot(Ls, [cov[L] for L in Ls], marker="o")
    ax1.axhline(s.receptive_field["reachable"], color="grey", linestyle="--",
                label=f"reachable = {s.receptive_field['reachable']:.3g}")
    ax1.set_xscale("log", base=2)
    ax1.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax1.set_ylim(0, 1.05)
    ax1.set_xlabel("depth (stacked layers)")
    ax1.set_ylabel("mean fraction of positions in receptive field")
    at = s.receptive_field.get("measured_at")
    est = "" if s.receptive_field["exact"] else f" (estimated at n = {at:,})" if at else \
        " (estimate)"
    ax1.set_title(f"receptive-field coverage{est}; hops to full = "
                  f"{s.receptive_field['hops_to_full']:,}")
    ax1.legend(loc="lower right")
    ax1.grid(True, alpha=0.3)
    fig.suptitle(str(p))
    fig.tight_layout()
    try:
        fig.savefig(args.output, dpi=100)
    except OSError as e:
        raise SpattnError(f"cannot write {args.output!r}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    print(f"wrote {args.output}")
    for w in warnings_for(s):
        print(f"warning: {w}")
    return 0


# --------------------------------------------------------------------------------------------
# explain


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="pattern text")
    p.add_argument("-n", dest="n", type=seq_len, default=4096,
                   help="sequence length for node densities (4096)")


@command("explain", "canonical form and the IR as a tree with each node's density",
         _explain_args)
def cmd_explain(args: argparse.Namespace) -> int:
    """`spattn explain`: canonical form and the IR tree with each node's density."""
    from rich.markup import escape
    from rich.tree import Tree

    from . import ir
    from .lower import check_n, nnz

    p = _compile(args.pattern)
    n = check_n(args.n)
    con = _console()
    con.print(f"[bold]canonical:[/bold] {escape(str(p))}")

    def label(node) -> str:
        kind = {ir.Union: "| union", ir.Inter: "& intersection", ir.Diff: "- difference",
                ir.Not: "~ complement"}.get(type(node))
        head = escape(ir.text(node)) if kind is None else f"[bold]{kind}[/bold]"
        try:
            d = f"{nnz(node, n) / (float(n) * n):.4g}"
        except SpattnError as e:
            d = f"error: {escape(str(e).splitlines()[0])}"
        if kind is not None and len(ir.text(node)) <= 60:
            head += f"  {escape(ir.text(node))}"
        return f"{head}  [dim]density {d}[/dim]"

    tree = Tree(label(p.node))
    stack = [(p.node, tree)]
    while stack:
        node, t = stack.pop()
        for c in ir.children(node):
            sub = t.add(label(c))
            stack.append((c, sub))
    con.print(f"IR at n = {n:,}:")
    con.print(tree)
    return 0


# --------------------------------------------------------------------------------------------
# check


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="YAML file of named patterns and per-layer configs")


@command("check", "validate a YAML file of patterns", _check_args)
def cmd_check(args: argparse.Namespace) -> int:
    """`spattn check FILE.yaml`: compile a config and print each layer's stats summary."""
    try:
        from .config import cli_check
    except ImportError as e:
        raise SpattnError(f"`spattn check` is not available in this installation "
                          f"(spattn.config: {e})") from None
    return int(cli_check(args.file) or 0)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="spattn", description="Compile and inspect sparse attention patterns.",
        epilog="example: spattn stats 'local(64) | global([0,-1])' -n 4096 -n 65536")
    parser.add_argument("--version", action="version", version=f"spattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, run) in COMMANDS.items():
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
    return status


if __name__ == "__main__":
    sys.exit(main())
