"""The ``spattn`` console script, run in a subprocess as users run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = shutil.which("spattn", path=os.path.dirname(sys.executable)) or shutil.which("spattn")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [SCRIPT, *args] if SCRIPT else [sys.executable, "-m", "spattn.cli", *args]
    env = dict(os.environ, COLUMNS="160", MPLBACKEND="Agg")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_console_script_is_installed():
    assert SCRIPT is not None, "the `spattn` console script is not on PATH"


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0
    for name in ("stats", "show", "explain", "check"):
        assert name in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("spattn ")
    r = run("stats", "--help")
    assert r.returncode == 0 and "--block-size" in r.stdout and "--json" in r.stdout


def test_no_command_prints_help_and_fails():
    r = run()
    assert r.returncode != 0 and "stats" in r.stdout + r.stderr


def test_stats_table_with_several_n():
    r = run("stats", "local(64) | global([0,-1])", "-n", "4096", "-n", "64k")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "n = 4,096" in out and "n = 65,536" in out
    assert "hops to full" in out and "nnz" in out and "540,346" in out
    assert "block efficiency" in out
    assert "warning" in out and "efficiency" in out  # 15 % < 25 %
    assert "Traceback" not in r.stderr


def test_stats_json_matches_api():
    import spattn

    r = run("stats", "streaming(4, 256)", "-n", "1000", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    ref = spattn.compile("streaming(4, 256)").stats(1000).to_dict()
    assert d == json.loads(json.dumps(ref))
    assert d["kv_cache"] == 261 and d["seq_len"] == 1000
    r = run("stats", "local(4)", "-n", "100", "-n", "200", "--json")
    assert [x["seq_len"] for x in json.loads(r.stdout)] == [100, 200]


def test_stats_warnings():
    r = run("stats", "block(256)", "-n", "4096")
    assert r.returncode == 0 and "never mixes" in r.stdout
    r = run("stats", "strided(128)", "-n", "4096")
    assert r.returncode == 0 and "KV cache grows with n" in r.stdout
    r = run("stats", "streaming(4, 256)", "-n", "4096")
    assert "grows with n" not in r.stdout and "never mixes" not in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["stats", "local(16) | globl([0])", "-n", "10"], "^"),
    (["stats", "local(16) |", "-n", "10"], "^"),
    (["stats", "stride(n // 1000)", "-n", "500"], "stride"),
    (["stats", "rows([5])", "-n", "3"], "position 5"),
    (["stats", "local(1)", "-n", "0"], "sequence length"),
    (["stats", "local(1)", "-n", "ten"], "sequence length"),
    (["stats", "local(1)", "-n", "10", "--block-size", "0"], "positive"),
    (["show", "local(1", "-n", "10", "-o", "x.png"], "^"),
    (["explain", "frobnicate(3)"], "frobnicate"),
])
def test_errors_are_one_clear_message(args, needle, tmp_path):
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert needle in r.stderr


def test_error_shows_caret_under_pattern():
    r = run("stats", "local(16) | globl([0])", "-n", "10")
    lines = r.stderr.splitlines()
    i = next(k for k, ln in enumerate(lines) if "local(16) | globl([0])" in ln)
    assert lines[i + 1].index("^") == lines[i].index("globl")
    assert "global" in r.stderr  # nearest known name


def _decode_png(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


@pytest.mark.parametrize("pattern, n", [("local(8) | global([0])", "300"),
                                        ("streaming(4, 256)", "5000")])
def test_show_writes_a_png(tmp_path, pattern, n):
    out = tmp_path / "mask.png"
    r = run("show", pattern, "-n", n, "-o", str(out))
    assert r.returncode == 0, r.stderr
    img = _decode_png(out)
    assert img.std() > 0  # not blank


def test_show_unwritable_path(tmp_path):
    r = run("show", "local(1)", "-n", "10", "-o", str(tmp_path / "no" / "dir" / "x.png"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_explain_tree_with_densities():
    r = run("explain", "longformer(16, [0,-1]) - causal", "-n", "1024")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "canonical: (global([0, -1]) | local(16)) - causal" in out
    assert "union" in out and "difference" in out and "local(16)" in out
    assert out.count("density") == 5


def test_python_dash_m_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "spattn.cli", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("spattn ")
    r = subprocess.run([sys.executable, "-m", "spattn.cli", "stats", "local(1)", "-n", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def _relative_imports(path) -> list[tuple[int, str]]:
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            mod = node.module or ""
            if node.level == 1 and not mod:
                out += [(1, a.name) for a in node.names]
            else:
                out.append((node.level, mod))
        elif isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
    return out


def test_cli_package_has_no_import_cycle():
    """base imports neither the package nor a command; each command imports only base from
    the package (plus spattn's library modules)."""
    from pathlib import Path

    import spattn.cli as cli

    root = Path(cli.__file__).parent
    commands = {"stats", "show", "explain", "check"}
    assert commands <= {p.stem for p in root.glob("*.py")}
    for path in root.glob("*.py"):
        if path.stem in ("__init__", "__main__"):
            continue
        for level, mod in _relative_imports(path):
            assert not (level == 0 and mod.startswith("spattn.cli")), (path.name, mod)
            if level == 1:
                assert path.stem != "base", f"base.py imports .{mod}"
                assert mod == "base", f"{path.name} imports .{mod}; commands import only .base"
    assert set(cli.COMMANDS) >= commands
