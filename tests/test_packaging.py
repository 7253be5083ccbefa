"""The wheel ships grammar/ and backends/ inside the package, and works outside the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: a build/ directory left in the checkout would leak stale modules
    src = tmp_path_factory.mktemp("src") / "spattn"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", "build", "dist", ".git", "__pycache__", "*.egg-info", ".hypothesis",
        ".pytest_cache", ".ruff_cache"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("spattn-*.whl")
    return whl


def test_wheel_contains_grammar_prelude_and_backends(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("spattn/grammar/spattn.lark", "spattn/grammar/prelude.spattn",
              "spattn/grammar/__init__.py", "spattn/backends/__init__.py",
              "spattn/backends/cpu.py", "spattn/__init__.py", "spattn/cli/__init__.py"):
        assert f in names, f
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "spattn = spattn.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_installed_wheel_works_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                        "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the development checkout's editable-install finder must not fill in what the wheel lacks
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if not "
            "getattr(f, '__module__', '').startswith('__editable__')]; "
            "import spattn, spattn.backends as b; p = spattn.compile('strided(4)'); "
            "p.stats(64); p.to_blocks(64, 16); import spattn.cli; spattn.cli.build_parser(); "
            f"assert spattn.__file__.startswith({str(target)!r}), spattn.__file__; "
            "print(p, p.nnz(10), sorted(b.names()))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    from reference import oracle_mask

    expected = int(oracle_mask("strided(4)", 10).sum())
    assert f"causal & (stride(4) | window(4, 0)) {expected}" in r.stdout
    assert "'cpu'" in r.stdout and "'triton'" in r.stdout
