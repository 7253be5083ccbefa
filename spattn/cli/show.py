"""``spattn show PATTERN -n N -o mask.png [--block-size B]``.

In: pattern text, a sequence length, an output path. Out: a PNG with the mask (token level up
to :data:`TOKEN_LEVEL_MAX`, a log-scale tile heat map from :func:`tile_density` beyond) beside
receptive-field coverage against depth; status 0, or a SpattnError (status 2) when matplotlib,
the optional ``viz`` extra, is not installed.

matplotlib is imported only when the command runs, never when :mod:`spattn` or
:mod:`spattn.cli` is imported.
"""

from __future__ import annotations

import argparse

from ..analysis.density import tile_density
from ..errors import SpattnError
from .base import command, compile_pattern, positive_int, seq_len, warnings_for

INSTALL_HINT = "pip install 'spattn[viz]'"


def _show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="pattern text")
    p.add_argument("-n", dest="n", type=seq_len, required=True, help="sequence length")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--block-size", type=positive_int, default=128,
                   help="block size used for the stats in the caption (128)")


TOKEN_LEVEL_MAX = 2048  #: token-level picture up to this n; a tile heat map beyond


#: image formats ``show`` writes, by file suffix
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpeg",
           ".eps": "eps"}


def image_format(path: str) -> str:
    """The image format for an output path, from its suffix (PNG without one); exactly
    that path is written."""
    import os

    suffix = os.path.splitext(path)[1].lower()
    if not suffix:
        return "png"
    if suffix not in FORMATS:
        raise SpattnError(f"cannot write {path!r}: unknown image format {suffix!r}; use one of "
                          f"{', '.join(FORMATS)} (or no suffix for PNG)")
    return FORMATS[suffix]


def _import_matplotlib():
    """(matplotlib, pyplot, matplotlib.ticker) with the non-interactive Agg backend, or a
    SpattnError with the install hint when matplotlib (the optional ``viz`` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker as ticker
    except ImportError as e:
        top = (e.name or "matplotlib").split(".")[0]
        if top == "matplotlib":
            raise SpattnError(f"spattn show needs matplotlib, which is not installed: "
                              f"{INSTALL_HINT}") from None
        raise SpattnError(f"spattn show needs matplotlib, which failed to import ({e}); "
                          f"reinstall it: {INSTALL_HINT}") from None
    return matplotlib, plt, ticker


@command("show", "draw the mask (or a tile heat map) beside receptive-field coverage",
         _show_args)
def cmd_show(args: argparse.Namespace) -> int:
    """`spattn show`: a PNG of the mask beside receptive-field coverage against depth."""
    import os

    matplotlib, plt, ticker = _import_matplotlib()

    from ..lower import check_n

    p = compile_pattern(args.pattern)
    n = check_n(args.n)
    fmt_out = image_format(args.output)
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise SpattnError(f"cannot write {args.output!r}: no directory {parent!r}")
    s = p.stats(n, block_size=args.block_size)
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
        fmt = ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
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
    ax1.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
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
        fig.savefig(args.output, dpi=100, format=fmt_out)
    except OSError as e:
        raise SpattnError(f"cannot write {args.output!r}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    print(f"wrote {args.output}")
    for w in warnings_for(s):
        print(f"warning: {w}")
    return 0

