"""The backend registry (spattn.backends): registration in code, and third-party backends
installed as packages with an entry point in the group ``spattn.backends``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import dense_attention, oracle_mask

import spattn
from spattn import backends

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_SRC = '''
"""A tiny third-party spattn backend: dense masked attention from the pattern's mask."""
import torch


class DummyBackend:
    name = "dummy"
    calls = 0

    def is_available(self):
        return True

    def supports(self, q):
        return q.device.type == "cpu"

    def attention(self, q, k, v, patterns, scale):
        DummyBackend.calls += 1
        m, n = q.shape[2], k.shape[2]
        outs = []
        for h, p in enumerate(patterns):
            mask = torch.from_numpy(p.to_dense(n)[n - m:])
            s = (q[:, h] @ k[:, h].transpose(-1, -2)) * scale
            w = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
            outs.append(w @ v[:, h])
        return torch.stack(outs, 1)


class Unavailable(DummyBackend):
    name = "unavailable"

    def is_available(self):
        return False
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "spattn-dummy"
version = "0.1"

[tool.setuptools]
py-modules = ["spattn_dummy"]

[project.entry-points."spattn.backends"]
dummy = "spattn_dummy:DummyBackend"
unavailable = "spattn_dummy:Unavailable"
broken = "spattn_dummy_missing:Backend"
'''

CHILD = '''
import json, torch, spattn
from spattn import backends
out = {"available": backends.available(), "names": backends.names()}
torch.manual_seed(0)
q, k, v = (torch.randn(2, 3, 10, 4, dtype=torch.float64) for _ in range(3))
y = spattn.attention(q, k, v, ["local(1)", "causal", "global([0])"], backend="dummy")
import spattn_dummy
out["calls"] = spattn_dummy.DummyBackend.calls
out["y"] = y.tolist()
out["q"], out["k"], out["v"] = q.tolist(), k.tolist(), v.tolist()
try:
    backends.get("broken")
except spattn.SpattnError as e:
    out["broken"] = str(e)
try:
    spattn.attention(q, k, v, "full", backend="unavailable")
except spattn.SpattnError as e:
    out["unavailable"] = str(e)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """Build and install the tiny plugin package into a private --target directory."""
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "spattn_dummy.py").write_text(PLUGIN_SRC)
    target = tmp_path_factory.mktemp("plugin_site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
           "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
           str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the plugin package here: {proc.stderr[-500:]}")
    assert any(p.name.startswith("spattn_dummy") and p.suffix == ".dist-info"
               for p in target.iterdir())
    return target


def test_entry_point_plugin_is_discovered_and_used(plugin_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(plugin_dir), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env=env, timeout=300, cwd=str(plugin_dir))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "dummy" in out["available"] and "cpu" in out["available"]
    assert "unavailable" in out["names"] and "unavailable" not in out["available"]
    assert "broken" in out["names"] and "broken" not in out["available"]
    assert out["calls"] == 1
    q, k, v = (torch.tensor(out[x], dtype=torch.float64) for x in "qkv")
    ref = dense_attention(q, k, v, [oracle_mask(p, 10) for p in
                                    ("local(1)", "causal", "global([0])")])
    torch.testing.assert_close(torch.tensor(out["y"], dtype=torch.float64), ref)
    assert "'broken'" in out["broken"] and "spattn-dummy" in out["broken"]
    assert "not available" in out["unavailable"]


def test_plugin_absent_without_the_package():
    assert "dummy" not in backends.names()


class _Counting:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def is_available(self):
        return True

    def supports(self, q):
        return True

    def attention(self, q, k, v, patterns, scale):
        self.calls += 1
        n = k.shape[2]
        return dense_attention(q, k, v, [oracle_mask(p, n) for p in patterns], scale).to(q.dtype)


@pytest.mark.parametrize("how", ["object", "class", "factory"])
def test_register_in_code(how):
    obj = _Counting()
    factory = {"object": obj, "class": _Counting, "factory": lambda: obj}[how]
    backends.register("counting", factory)
    try:
        assert "counting" in backends.available()
        b = backends.get("counting")
        assert isinstance(b, _Counting) and backends.get("counting") is b
        q = torch.randn(1, 2, 6, 4, dtype=torch.float64)
        y = spattn.attention(q, q, q, "local(1)", backend="counting", scale=0.5)
        torch.testing.assert_close(y, dense_attention(q, q, q, oracle_mask("local(1)", 6), 0.5))
        assert b.calls == 1
    finally:
        backends.unregister("counting")
    assert "counting" not in backends.names()


def test_registry_errors():
    with pytest.raises(spattn.SpattnError, match="identifier"):
        backends.register("no good", _Counting)
    with pytest.raises(spattn.SpattnError, match="'auto'"):
        backends.register("auto", _Counting)
    with pytest.raises(spattn.SpattnError, match="needs a backend object"):
        backends.register("x", 42)
    backends.register("half", lambda: object())
    try:
        with pytest.raises(spattn.SpattnError, match="lacks 'name', 'is_available'"):
            backends.get("half")
        assert "half" not in backends.available()
    finally:
        backends.unregister("half")
    with pytest.raises(spattn.SpattnError, match="unknown backend 'nope'; known: cpu"):
        backends.get("nope")
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(spattn.SpattnError, match="unknown backend 'nope'"):
        spattn.attention(q, q, q, "full", backend="nope")


def test_auto_selection():
    assert backends.auto_name("cpu") == "cpu"
    assert backends.auto_name(torch.device("cpu")) == "cpu"
    q = torch.randn(1, 1, 4, 2)
    assert backends.select("auto", q).name == "cpu"
    triton_ok = "triton" in backends.available()
    assert backends.auto_name("cuda") == ("triton" if triton_ok else "cpu")


def test_interface_is_documented():
    doc = backends.__doc__ or ""
    for word in ("is_available", "supports", "attention", "spattn.backends", "entry"):
        assert word in doc
    assert backends.BACKEND_INTERFACE == ("name", "is_available", "supports", "attention")
