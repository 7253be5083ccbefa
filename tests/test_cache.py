"""spattn.cache: the bounded thread-safe LRU and the private per-user cache directory."""

from __future__ import annotations

import gc
import hashlib
import os
import stat
import threading
import warnings

import pytest

from spattn import cache
from spattn.cache import (
    LRUCache,
    caches,
    clear_all,
    file_is_private,
    private_dir,
    read_private,
    write_private,
)

OTHER_UID = 65534  # nobody


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def give_away(path, monkeypatch) -> None:
    """Make ``path`` owned by another user: chown it when we are root, else pretend to be
    someone else."""
    if os.getuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)
    else:
        real = os.getuid()
        monkeypatch.setattr(cache.os, "getuid", lambda: real + 1)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A not yet existing cache root, set through SPATTN_CACHE_DIR."""
    r = tmp_path / "cache-root"
    monkeypatch.setenv("SPATTN_CACHE_DIR", str(r))
    return r


@pytest.fixture
def private(root):
    d = private_dir()
    assert d == root
    return d


# --------------------------------------------------------------------------------------------
# LRUCache

def test_eviction_follows_recency():
    c = LRUCache("t-recency", max_entries=3)
    for k in "abc":
        c.put(k, k.upper())
    assert c.get("a") == "A"  # a is now the most recent; b the least
    c.put("d", "D")
    assert "b" not in c and all(k in c for k in "acd")
    c.put("e", "E")
    assert "c" not in c and len(c) == 3


def test_max_entries_and_put_keeps_existing():
    c = LRUCache("t-entries", max_entries=2)
    first = c.put("k", [1])
    assert c.put("k", [2]) is first and c.get("k") is first
    for i in range(10):
        c.put(i, i)
    assert len(c) == 2 and 8 in c and 9 in c


def test_max_bytes_with_sizeof():
    c = LRUCache("t-bytes", max_entries=100, max_bytes=10, sizeof=len)
    c.put("a", b"xxxx")
    c.put("b", b"yyyy")
    assert c.nbytes == 8
    c.put("c", b"zzzz")  # 12 > 10: a goes
    assert "a" not in c and c.nbytes == 8 and len(c) == 2
    c.get("b")
    c.put("d", b"ww")  # 10: fits
    assert c.nbytes == 10 and len(c) == 3
    c.put("e", b"v")  # 11: c is the least recent (b was refreshed)
    assert "c" not in c and "b" in c and c.nbytes == 7


def test_single_oversized_entry_is_kept():
    c = LRUCache("t-big", max_entries=4, max_bytes=10, sizeof=len)
    c.put("a", b"1")
    c.put("b", b"2")
    big = c.put("big", b"x" * 100)
    assert len(c) == 1 and c.get("big") is big and c.nbytes == 100
    c.put("small", b"s")  # the big one is now the least recent and goes
    assert "big" not in c and c.nbytes == 1


def test_get_or_create_and_counts():
    c = LRUCache("t-goc", max_entries=4)
    calls = []

    def factory():
        calls.append(1)
        return object()

    v = c.get_or_create("k", factory)
    assert c.get_or_create("k", factory) is v and c.get("k") is v
    assert len(calls) == 1 and (c.hits, c.misses) == (2, 1)
    assert c.get("nope") is None and c.get("nope", 7) == 7 and c.misses == 3
    assert "k" in c and (c.hits, c.misses) == (2, 3)  # `in` counts nothing
    c.put("none", None)  # None is a value like any other
    assert c.get_or_create("none", factory) is None and len(calls) == 1
    r = repr(c)
    assert "t-goc" in r and "entries=2/4" in r and "hits=3" in r and "misses=3" in r


def test_get_or_create_race_returns_first_stored():
    c = LRUCache("t-race", max_entries=4)
    barrier = threading.Barrier(2)
    built, got = [], []

    def factory():
        barrier.wait(timeout=5)  # both threads miss before either stores
        obj = object()
        built.append(obj)
        return obj

    ts = [threading.Thread(target=lambda: got.append(c.get_or_create("k", factory)))
          for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(built) == 2 and got[0] is got[1] is c.get("k") and got[0] in built


def test_clear_and_clear_all():
    a = LRUCache("t-a", max_entries=8, max_bytes=100, sizeof=len)
    b = LRUCache("t-b", max_entries=8)
    a.put(1, b"abc")
    b.put(2, "x")
    assert a in caches() and b in caches()
    a.clear()
    assert len(a) == 0 and a.nbytes == 0 and 1 not in a
    a.put(1, b"abc")
    clear_all()
    assert len(a) == 0 and len(b) == 0 and a.nbytes == 0
    assert all(len(x) == 0 for x in caches())
    del b
    gc.collect()
    assert all(x.name != "t-b" for x in caches())  # weak references only


def test_bad_arguments():
    with pytest.raises(ValueError):
        LRUCache("t-bad", max_entries=0)
    with pytest.raises(ValueError):
        LRUCache("t-bad", max_entries=4, max_bytes=10)  # no sizeof


def test_thread_safety():
    c = LRUCache("t-threads", max_entries=8, max_bytes=120, sizeof=len)
    nkeys, errors = 32, []

    def value(k: int) -> bytes:
        return b"v" * (1 + k % 13)

    def work(seed: int) -> None:
        try:
            x = seed
            for i in range(2000):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
                k = x % nkeys
                op = i % 3
                if op == 0:
                    v = c.get(k)
                    assert v is None or v == value(k)
                elif op == 1:
                    assert c.put(k, value(k)) == value(k)
                else:
                    assert c.get_or_create(k, lambda k=k: value(k)) == value(k)
                assert len(c) <= 8
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(c) <= 8 and c.nbytes <= 120
    stored = [c.get(k) for k in range(nkeys) if k in c]
    assert len(stored) == len(c)
    assert c.nbytes == sum(len(v) for v in stored)


# --------------------------------------------------------------------------------------------
# private_dir

def test_private_dir_created_0700(tmp_path, monkeypatch):
    r = tmp_path / "a" / "b" / "spattn"
    monkeypatch.setenv("SPATTN_CACHE_DIR", str(r))
    old = os.umask(0o002)  # a permissive umask must not leak into the modes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            d = private_dir()
            sub = private_dir("triton")
            deep = private_dir("x", "y")
    finally:
        os.umask(old)
    assert d == r and sub == r / "triton" and deep == r / "x" / "y"
    for p in (tmp_path / "a", tmp_path / "a" / "b", r, sub, r / "x", deep):
        assert p.is_dir() and mode(p) == 0o700, p
    assert private_dir("triton") == sub  # idempotent


def test_existing_private_dir_is_used_unchanged(root):
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    assert private_dir() == root and mode(root) == 0o755  # not writable by others: fine


def test_world_writable_root_refused_with_warning(root):
    root.mkdir()
    os.chmod(root, 0o777)
    (root / "planted").write_text("x")
    with pytest.warns(UserWarning, match=r"mode 0777: writable by group and others") as w:
        assert private_dir("triton") is None
    msg = str(w[0].message)
    assert str(root) in msg and "SPATTN_CACHE_DIR" in msg
    assert mode(root) == 0o777 and (root / "planted").exists()  # never chmod'ed or cleaned
    assert not (root / "triton").exists()  # nothing created inside
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert private_dir() is None
    assert not again  # once per path per process


def test_group_writable_subdir_refused(private):
    (private / "triton").mkdir()
    os.chmod(private / "triton", 0o770)
    with pytest.warns(UserWarning, match=r"triton.*mode 0770: writable by group"):
        assert private_dir("triton") is None
    assert private_dir() == private  # the root itself is still fine


def test_root_owned_by_other_user_refused(root, monkeypatch):
    root.mkdir(mode=0o700)
    give_away(root, monkeypatch)
    with pytest.warns(UserWarning, match=r"owned by uid \d+"):
        assert private_dir() is None


def test_symlinked_root_refused(tmp_path, root):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    root.symlink_to(real)
    with pytest.warns(UserWarning, match="symbolic link"):
        assert private_dir() is None
    assert private_dir("triton") is None  # already warned about this path
    assert not (real / "triton").exists()


def test_symlinked_subdir_refused(tmp_path, private):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (private / "triton").symlink_to(real)
    with pytest.warns(UserWarning, match="symbolic link"):
        assert private_dir("triton") is None


def test_xdg_and_home_fallbacks(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATTN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert private_dir() == tmp_path / "xdg" / "spattn" and mode(tmp_path / "xdg") == 0o700
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert private_dir("triton") == tmp_path / "home" / ".cache" / "spattn" / "triton"
    monkeypatch.setenv("SPATTN_CACHE_DIR", "off")
    assert private_dir() is None


def test_uncreatable_root_is_none_silently(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SPATTN_CACHE_DIR", str(tmp_path / "file" / "spattn"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert private_dir() is None


def test_bad_parts(private):
    for bad in ("", "..", ".", "a/b"):
        with pytest.raises(ValueError):
            private_dir(bad)


# --------------------------------------------------------------------------------------------
# write_private / read_private

def test_round_trip_mode_0600(private):
    p = private / "f.bin"
    old = os.umask(0)
    try:
        assert write_private(p, b"hello")
    finally:
        os.umask(old)
    assert mode(p) == 0o600 and file_is_private(p)
    assert read_private(p) == b"hello"
    assert read_private(p, sha256=hashlib.sha256(b"hello").hexdigest()) == b"hello"
    assert read_private(p, sha256=hashlib.sha256(b"hello").hexdigest().upper()) == b"hello"
    assert write_private(p, b"again") and read_private(p) == b"again"  # replaces
    assert os.listdir(private) == ["f.bin"]  # no temporary files left


def test_write_failure_is_false(private):
    assert write_private(private / "missing-dir" / "f", b"x") is False
    (private / "adir").mkdir()
    assert write_private(private / "adir", b"x") is False
    assert sorted(os.listdir(private)) == ["adir"]


def test_write_replaces_a_symlink_not_its_target(tmp_path, private):
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    (private / "f").symlink_to(target)
    assert write_private(private / "f", b"new")
    assert target.read_bytes() == b"keep" and not (private / "f").is_symlink()


def test_read_refuses_wrong_hash(private):
    p = private / "f"
    write_private(p, b"data")
    assert read_private(p, sha256=hashlib.sha256(b"other").hexdigest()) is None
    assert read_private(p, sha256="not-a-digest") is None


@pytest.mark.parametrize("m", [0o620, 0o602, 0o666])
def test_read_refuses_writable_by_others(private, m):
    p = private / "f"
    write_private(p, b"data")
    os.chmod(p, m)
    assert read_private(p) is None and not file_is_private(p)


def test_read_refuses_symlink(private):
    real = private / "real"
    write_private(real, b"data")
    (private / "link").symlink_to(real)
    assert read_private(private / "link") is None and not file_is_private(private / "link")
    assert read_private(real) == b"data"


def test_read_refuses_other_owner(private, monkeypatch):
    p = private / "f"
    write_private(p, b"data")
    give_away(p, monkeypatch)
    assert read_private(p) is None and not file_is_private(p)


def test_read_refuses_non_regular(private):
    assert read_private(private) is None and read_private(private / "missing") is None
    if hasattr(os, "mkfifo"):
        os.mkfifo(private / "fifo", 0o600)
        assert read_private(private / "fifo") is None  # and does not block


# --------------------------------------------------------------------------------------------
# The planted-module attack, at the helper level

SOURCE = "RESULT = 'genuine kernel'\n"


def evil_source(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')\nRESULT = 'evil'\n"


def load_kernel(src: str) -> dict:
    """The intended use: compile from the source in memory; the file, when the directory is
    private, is written for inspection and only ever read back with the expected hash."""
    digest = hashlib.sha256(src.encode()).hexdigest()
    d = private_dir("triton")
    if d is not None:
        path = d / f"spattn_k_{digest[:20]}.py"
        on_disk = read_private(path, sha256=digest)
        if on_disk is None:
            write_private(path, src.encode())
        else:
            src = on_disk.decode()
    ns: dict = {}
    exec(compile(src, "<spattn kernel>", "exec"), ns)  # noqa: S102 - trusted generated source
    return ns


def test_planted_module_in_shared_root_never_runs(tmp_path, root):
    marker = tmp_path / "marker"
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()
    # the attacker creates the root first, world-writable, and plants modules at the names
    root.mkdir()
    os.chmod(root, 0o777)
    (root / "triton").mkdir()
    os.chmod(root / "triton", 0o777)
    for name in ("evil.py", f"spattn_k_{digest[:20]}.py"):
        (root / "triton" / name).write_text(evil_source(marker))
        os.chmod(root / "triton" / name, 0o666)
    exec(evil_source(tmp_path / "check"), {})  # noqa: S102 - the plant does work when run
    assert (tmp_path / "check").exists()

    with pytest.warns(UserWarning, match="writable by"):
        ns = load_kernel(SOURCE)
    assert ns["RESULT"] == "genuine kernel" and not marker.exists()


def test_altered_file_in_private_dir_is_rejected(tmp_path, private):
    marker = tmp_path / "marker"
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()
    d = private_dir("triton")
    path = d / f"spattn_k_{digest[:20]}.py"
    assert write_private(path, evil_source(marker).encode())  # private, but the wrong content
    assert file_is_private(path) and read_private(path, sha256=digest) is None
    ns = load_kernel(SOURCE)
    assert ns["RESULT"] == "genuine kernel" and not marker.exists()
    assert read_private(path, sha256=digest) == SOURCE.encode()  # rewritten with the real source
    assert load_kernel(SOURCE)["RESULT"] == "genuine kernel"


def test_grammar_tables_are_cached_only_in_a_private_directory(tmp_path, monkeypatch):
    """lark pickles its parse tables: a planted cache file would run code when loaded. The
    grammar cache is used only inside a private directory, and an existing file only when it
    is a private regular file."""
    import os
    import warnings

    from spattn.syntax import grammar_cache_file

    root = tmp_path / "c"
    monkeypatch.setenv("SPATTN_CACHE_DIR", str(root))
    path = grammar_cache_file("grammar text")
    assert path and os.path.dirname(path) == str(root)
    assert os.stat(root).st_mode & 0o777 == 0o700
    with open(path, "w") as f:
        f.write("planted")
    os.chmod(path, 0o666)  # writable by others: never handed to lark
    assert grammar_cache_file("grammar text") is False
    os.chmod(path, 0o600)
    assert grammar_cache_file("grammar text") == path
    os.chmod(root, 0o777)  # a shared directory: nothing in it is used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert grammar_cache_file("grammar text") is False
