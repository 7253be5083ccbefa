"""Caches: one bounded thread-safe LRU for memory, one private per-user directory for files.

In: values to keep in memory, bytes to keep on disk. Out: :class:`LRUCache` (bounded in entries
and optionally bytes; :func:`clear_all` clears them all) and :func:`private_dir`,
:func:`write_private`, :func:`read_private`: files only in a real directory owned by this user
and not writable by group or others, written atomically with mode 0600, read back only when
still private and, optionally, of the expected SHA-256. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pathlib
import secrets
import stat
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()
_registry: weakref.WeakSet[LRUCache] = weakref.WeakSet()
_registry_lock = threading.Lock()


class LRUCache(Generic[K, V]):
    """Bounded, thread-safe least-recently-used mapping.

    At most ``max_entries`` entries and, with ``max_bytes``, at most that many bytes by
    ``sizeof(value)`` (called in ``put``, outside the lock), except that an entry alone larger
    is kept while it is the only one. ``get`` counts a hit or miss and refreshes recency."""

    def __init__(self, name: str, max_entries: int, max_bytes: int | None = None,
                 sizeof: Callable[[V], int] | None = None) -> None:
        if max_entries < 1 or (max_bytes is not None and sizeof is None):
            raise ValueError(f"LRUCache {name!r}: needs max_entries >= 1, and sizeof for max_bytes")
        self.name, self.max_entries, self.max_bytes = name, max_entries, max_bytes
        self._sizeof = sizeof
        self._lock = threading.Lock()
        self._d: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.nbytes = self.hits = self.misses = 0
        with _registry_lock:
            _registry.add(self)

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value stored under ``key`` (now the most recent), else ``default``."""
        with self._lock:
            item = self._d.get(key, _MISSING)
            if item is _MISSING:
                self.misses += 1
                return default
            self._d.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: K, value: V) -> V:
        """Store ``value`` unless ``key`` is already present; return the stored value."""
        size = int(self._sizeof(value)) if self._sizeof is not None else 0
        with self._lock:
            item = self._d.get(key, _MISSING)
            if item is not _MISSING:
                self._d.move_to_end(key)
                return item[0]
            self._d[key] = (value, size)
            self.nbytes += size
            while len(self._d) > 1 and (len(self._d) > self.max_entries or (
                    self.max_bytes is not None and self.nbytes > self.max_bytes)):
                self.nbytes -= self._d.popitem(last=False)[1][1]
            return value

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        """The stored value, or ``factory()`` (called outside the lock) stored and returned.
        Threads racing on one key may each call ``factory``; all get the first stored value."""
        item = self._d.get(key, _MISSING)  # hits take no lock: dict reads are atomic
        if item is not _MISSING:
            try:
                self._d.move_to_end(key)
            except KeyError:  # evicted by another thread in between: still a valid value
                pass
            self.hits += 1
            return item[0]
        with self._lock:
            self.misses += 1
        return self.put(key, factory())

    def clear(self) -> None:
        """Drop every entry (the hit and miss counts are kept)."""
        with self._lock:
            self._d.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d  # one dict look-up: atomic

    def __repr__(self) -> str:
        mb = "" if self.max_bytes is None else f"/{self.max_bytes:,}"
        return (f"LRUCache({self.name!r}, entries={len(self)}/{self.max_entries}, "
                f"bytes={self.nbytes:,}{mb}, hits={self.hits}, misses={self.misses})")


def caches() -> list[LRUCache]:
    """The live :class:`LRUCache` instances of this process."""
    with _registry_lock:
        return list(_registry)


def clear_all() -> None:
    """Clear every LRUCache of this process (a registry of weak refs), e.g. to time a cold start."""
    for c in caches():
        c.clear()


# --------------------------------------------------------------------------------------------
# Files

_POSIX = hasattr(os, "getuid")  # elsewhere (Windows) there are no owners or mode bits to check
_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_warned: set[str] = set()


def _not_private(st: os.stat_result, want_dir: bool) -> str | None:
    """Why the file of (l/f)stat result ``st`` is not private to this user, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not (stat.S_ISDIR if want_dir else stat.S_ISREG)(st.st_mode):
        return "it is not a directory" if want_dir else "it is not a regular file"
    if _POSIX and st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    bad = st.st_mode & 0o022 if _POSIX else 0
    if bad:
        who = {0o020: "group", 0o002: "others", 0o022: "group and others"}[bad]
        return f"mode {stat.S_IMODE(st.st_mode):04o}: writable by {who}"
    return None


def file_is_private(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (not a symlink) owned by us, not group/world-writable."""
    try:
        return _not_private(os.lstat(path), want_dir=False) is None
    except OSError:
        return False


def _root() -> pathlib.Path | None:
    env = os.environ.get("SPATTN_CACHE_DIR")
    if env:
        return None if env.lower() == "off" else pathlib.Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative paths
        return pathlib.Path(xdg, "spattn")
    home = os.path.expanduser("~")
    return pathlib.Path(home, ".cache", "spattn") if os.path.isabs(home) else None


def _mkdir_private(d: pathlib.Path) -> None:
    """Create ``d`` and its missing parents with mode 0700 (less what the umask removes)."""
    missing = []
    while not os.path.lexists(d) and d.parent != d:
        missing.append(d)
        d = d.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process was faster: checked after
            os.mkdir(p, 0o700)


def private_dir(*parts: str) -> pathlib.Path | None:
    """This user's private cache directory for spattn, with optional sub-directories ``parts``
    (e.g. ``private_dir("triton")``), or None when there is none to use.

    Root: ``$SPATTN_CACHE_DIR`` if set (``off``: none), else ``$XDG_CACHE_HOME/spattn``, else
    ``~/.cache/spattn``; what it creates gets mode 0700. Each level must be a real directory
    owned by this user and not writable by group or others, else None and a warning (once per
    path) saying why and how to fix it; it never changes a directory it did not just create.
    None, silently, when a directory cannot be created (read-only home …)."""
    if any(not p or p in (".", "..") or "/" in p or os.sep in p for p in parts):
        raise ValueError(f"private_dir: bad sub-directory name in {parts!r}")
    root = _root()
    if root is None:
        return None
    for d in [root.joinpath(*parts[:i]) for i in range(len(parts) + 1)]:
        try:
            _mkdir_private(d)
            why = _not_private(os.lstat(d), want_dir=True)
        except OSError:
            return None
        if why is not None:
            if str(d) not in _warned:
                _warned.add(str(d))
                warnings.warn(f"spattn: not using the cache directory {d}: {why}. Remove it or "
                              "make it yours with mode 0700, or set SPATTN_CACHE_DIR to a private "
                              "directory (or to 'off' to disable the file cache).", stacklevel=2)
            return None
    return root.joinpath(*parts)


def write_private(path: pathlib.Path, data: bytes) -> bool:
    """Atomically write ``data`` to ``path`` (in a directory from :func:`private_dir`): a new
    temporary file in the same directory (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600) renamed over
    ``path``. False, leaving no temporary file behind, on any OSError."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        if fd is not None:  # only a file we created
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


def read_private(path: pathlib.Path, sha256: str | None = None) -> bytes | None:
    """The bytes of ``path`` if it is a private regular file (:func:`file_is_private`) and, given
    ``sha256`` (hex), its content has that digest; else None. Checked on the descriptor opened
    with ``O_NOFOLLOW`` (``fstat``): nothing can be swapped in between check and read."""
    try:
        before = os.lstat(path)  # also refuses symlinks where O_NOFOLLOW is missing
        if _not_private(before, want_dir=False) is not None:
            return None
        fd = os.open(path, os.O_RDONLY | _FLAGS | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if _not_private(st, want_dir=False) is not None or (
                    (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino)):
                return None
            data = f.read()
    except OSError:
        return None
    if sha256 is not None and not hmac.compare_digest(
            hashlib.sha256(data).hexdigest(), sha256.strip().lower()):
        return None
    return data
