"""Shared bits for the benchmark scripts: the standard suite and the machine header."""

from __future__ import annotations

import os
import platform
import statistics
import time

from spattn.suite import SUITE  # noqa: F401 - re-exported for the bench scripts


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(title: str) -> str:
    import numpy
    import torch

    try:
        import triton

        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = "not installed"
    import scipy

    return (f"# {title}\n"
            f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}; "
            f"torch {torch.__version__}; triton {tv}; numpy {numpy.__version__}; "
            f"scipy {scipy.__version__}; torch threads {torch.get_num_threads()}")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(headers)) + " |"
    sep = "|" + "|".join("-" * (w[i] + 2) for i in range(len(headers))) + "|"
    body = ["| " + " | ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r))
            + " |" for r in cells[1:]]
    return "\n".join([line, sep, *body])


def median_time(fn, reps: int) -> float:
    """The median of ``reps`` consecutive calls of ``fn`` (seconds)."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)

