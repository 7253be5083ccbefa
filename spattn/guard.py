"""Resource guard: estimate bytes before any large allocation and refuse past a budget.

The budget defaults to half of the memory available when first asked (``MemAvailable`` in
``/proc/meminfo``; 4 GiB where that cannot be read). Set it with :func:`set_memory_budget` or
the environment variable ``SPATTN_MEMORY_BUDGET`` (bytes, or with a K/M/G suffix).
"""

from __future__ import annotations

import os
import re
import sys
import threading

from .errors import ResourceError

_budget: int | None = None


def available() -> int:
    """Bytes of memory available (MemAvailable on Linux; 8 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 8 << 30


def _parse_bytes(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", s)
    if not m:
        raise ResourceError(f"SPATTN_MEMORY_BUDGET={s!r} is not a size such as 8G or 500M")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def memory_budget() -> int:
    """The current budget in bytes."""
    global _budget
    if _budget is None:
        env = os.environ.get("SPATTN_MEMORY_BUDGET")
        _budget = _parse_bytes(env) if env else available() // 2
    return _budget


def set_memory_budget(nbytes: int | None) -> None:
    """Set the budget in bytes (``None`` restores the default)."""
    global _budget
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int)
                             or nbytes <= 0):
        raise ResourceError(f"memory budget must be a positive number of bytes, got {nbytes!r}")
    _budget = nbytes


def fmt_bytes(b: float) -> str:
    """Human-readable size, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(b) < 1024 or unit == "PiB":
            return f"{b:,.0f} {unit}" if unit == "B" else f"{b:,.1f} {unit}"
        b /= 1024
    return f"{b} B"  # pragma: no cover


def check(nbytes: float, what: str, hint: str = "") -> None:
    """Raise :class:`ResourceError` if ``nbytes`` exceeds the budget."""
    budget = memory_budget()
    if nbytes > budget:
        msg = (f"{what} needs about {fmt_bytes(nbytes)}, over the memory budget of "
               f"{fmt_bytes(budget)}")
        msg += f"; {hint}" if hint else ""
        msg += " (raise it with spattn.set_memory_budget() or SPATTN_MEMORY_BUDGET)"
        raise ResourceError(msg)


_malloc_lock = threading.Lock()
_malloc_tuned = False


def tune_malloc() -> None:
    """Keep freed blocks under 32 MiB in the process heap (glibc only), once per process.

    By default glibc returns freed memory above a small, self-adjusting threshold to the
    system, so every fresh workspace buffer of a few MiB is paid again in page faults (on
    virtual machines about 1 ms per MiB: more than the arithmetic on the same buffer; it
    doubled the time of large lowerings and of the CPU backend). This sets
    ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 256 MiB, as PyTorch's CPU
    performance guide suggests (or use jemalloc/tcmalloc). It changes the whole process's
    allocator, so it runs only when spattn first lowers a large pattern or runs attention; set
    the environment variable ``SPATTN_MALLOC=0`` to leave malloc alone.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    with _malloc_lock:
        if _malloc_tuned:
            return
        _malloc_tuned = True
        if os.environ.get("SPATTN_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
            return
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            pass
