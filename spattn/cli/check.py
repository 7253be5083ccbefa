"""``spattn check FILE.yaml``: validate a YAML config and summarise every layer.

In: the path of a YAML file (see :mod:`spattn.config` for the schema). Out: on stdout, a table
of the named patterns and, per default sequence length, one row per group of layers with each
pattern's density, keys per query, empty rows, causality, hops to full, receptive-field
coverage at the model's depth, block efficiency and KV cache; warnings and problems (each with
file, line and key) on stderr; the exit status: 0 when everything compiles and lowers, 1 on
any problem. :func:`check_file` is the whole command.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..errors import SpattnError
from .base import command

__all__ = ["check_file"]


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="YAML file of named patterns and per-layer configs")


@command("check", "validate a YAML file of patterns", _check_args)
def cmd_check(args: argparse.Namespace) -> int:
    """`spattn check FILE.yaml`: compile a config and print each layer's stats summary."""
    return int(check_file(args.file) or 0)


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


def check_file(path: str) -> int:
    """``spattn check FILE.yaml``: load the file, compile every pattern, compute each pattern's
    statistics at the default sequence lengths and print a summary per layer. Returns the exit
    status: 0 when everything compiles and lowers, 1 on any problem (each printed with the
    file, line and key)."""
    from rich.console import Console
    from rich.table import Table

    from ..config import format_ranges, load

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
                    lcol = format_ranges(layers) if gi == 0 else ""  # type: ignore[arg-type]
                    cells = [lcol, format_ranges(list(heads))] + cells
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
