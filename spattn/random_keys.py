"""The keys of ``random(r, seed)``: a deterministic function of (seed, n, row).

Definition (the same on every platform and backend; all arithmetic modulo 2**64):

    mix(x)   = splitmix64 finaliser: x ^= x >> 30; x *= 0xBF58476D1CE4E5B9;
               x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31
    base     = mix(mix((seed mod 2**64) ^ 0x9E3779B97F4A7C15) ^ n)
    s_i      = mix(base ^ i)                      # row i's stream
    u_{i,k}  = mix(s_i + (k + 1) * 0x9E3779B97F4A7C15)

Row i's key set R_i is Floyd's sampling of k = min(r, n) distinct keys from 0..n-1: for
step k = 0 .. k-1 with t = n - k_total + k, x = u_{i,k} mod (t + 1); take x unless it was
already taken, else take t. Keys are then sorted. Because the draw depends only on
(seed, n, i), the same row of the same pattern gives the same keys whatever the query range,
chunking or backend.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        return x ^ (x >> np.uint64(31))


def _base(n: int, seed: int) -> np.uint64:
    s = np.array([seed % (1 << 64)], dtype=np.uint64)
    b = _mix(_mix(s ^ GOLDEN) ^ np.uint64(n))
    return b[0]


MAX_PASSES = 200_000  #: most numpy passes one drawing may take (a few seconds)
_BITMAP_CELLS = 1 << 25  #: rows x n cells of the "already taken" bitmap per chunk


def draw_passes(n: int, r: int, rows: int) -> int:
    """Numpy passes that drawing the keys of ``rows`` rows takes: Floyd's sampling is
    sequential in its k steps, vectorised over rows in chunks."""
    k = min(r, n)
    if k <= 32:
        return k
    return k * -(-rows // max(1, _BITMAP_CELLS // n))


def row_keys(n: int, r: int, seed: int, rows: np.ndarray) -> np.ndarray:
    """Sorted keys of ``random(r, seed)`` for each row in ``rows``: int64 array of shape
    ``(len(rows), min(r, n))``."""
    k = min(r, n)
    rows = np.asarray(rows, dtype=np.int64)
    R = len(rows)
    if k == 0 or R == 0:
        return np.zeros((R, k), np.int64)
    from . import guard

    guard.check(R * k * 24.0, f"the keys of random({k}) for {R:,} rows at n = {n:,}",
                "use fewer random keys or a smaller n")
    if k == n:
        return np.broadcast_to(np.arange(n, dtype=np.int64), (R, n)).copy()
    s = _mix(rows.astype(np.uint64) ^ _base(n, seed))
    out = np.empty((R, k), np.int64)
    if k <= 32:
        for step in range(k):
            t = n - k + step
            with np.errstate(over="ignore"):
                u = _mix(s + np.uint64(step + 1) * GOLDEN)
            x = (u % np.uint64(t + 1)).astype(np.int64)
            if step:
                taken = (out[:, :step] == x[:, None]).any(axis=1)
                x = np.where(taken, t, x)
            out[:, step] = x
    else:
        guard.check(float(n) + R * k * 8.0, f"drawing random({r}) keys at n = {n:,}")
        passes = draw_passes(n, r, R)
        if passes > MAX_PASSES:
            from .errors import ResourceError

            raise ResourceError(f"drawing random({k}) keys for {R:,} rows at n = {n:,} would "
                                f"take about {passes:,} sequential numpy passes (limit "
                                f"{MAX_PASSES:,}); use fewer random keys or a smaller n")
        chunk = max(1, _BITMAP_CELLS // n)
        for a in range(0, R, chunk):
            b = min(R, a + chunk)
            seen = np.zeros((b - a, n), dtype=bool)
            ar = np.arange(b - a)
            sa = s[a:b]
            for step in range(k):
                t = n - k + step
                with np.errstate(over="ignore"):
                    u = _mix(sa + np.uint64(step + 1) * GOLDEN)
                x = (u % np.uint64(t + 1)).astype(np.int64)
                x = np.where(seen[ar, x], t, x)
                seen[ar, x] = True
                out[a:b, step] = x
    out.sort(axis=1)
    return out
