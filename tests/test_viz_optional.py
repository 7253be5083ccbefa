"""matplotlib is optional (the ``spattn[viz]`` extra): only ``spattn show`` needs it.

Each check runs in a fresh interpreter, once with matplotlib made unimportable (a
``sys.meta_path`` finder that refuses ``matplotlib`` and its submodules, as if it were not
installed) and once as installed, and looks at ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent("""\
    import sys

    class _NoMatplotlib:
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                self.attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoMatplotlib())
    """)

LIBRARY_USE = textwrap.dedent("""\
    import json
    import sys

    import torch

    import spattn
    import spattn.cli
    import spattn.config
    import spattn.nn

    p = spattn.compile("local(2) | global([0])")
    s = p.stats(256).to_dict()
    assert s["seq_len"] == 256
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    out = spattn.attention(q, k, v, p)
    assert out.shape == (1, 2, 16, 8)
    out = spattn.attention(q, k, v, "sliding(4)", backend="cpu")
    assert spattn.cli.main(["stats", "local(2)", "-n", "64", "--json"]) == 0
    loaded = sorted(m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib."))
    print("RESULT " + json.dumps(loaded))
    """)


def _run(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


def _result(r: subprocess.CompletedProcess):
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_library_works_without_matplotlib():
    r = _run(BLOCK + LIBRARY_USE)
    assert _result(r) == []
    assert "Traceback" not in r.stderr


def test_library_does_not_import_matplotlib_when_installed():
    r = _run(LIBRARY_USE)
    assert _result(r) == [], "compiling, stats or attention imported matplotlib"


def test_show_without_matplotlib_is_one_clear_error(tmp_path):
    out = tmp_path / "m.png"
    code = BLOCK + textwrap.dedent(f"""\
        import spattn.cli

        rc = spattn.cli.main(["show", "local(2)", "-n", "16", "-o", {str(out)!r}])
        print("RESULT", rc)
        """)
    r = _run(code)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT 2" in r.stdout
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert err[0].startswith("spattn show: error: ")
    assert "matplotlib" in err[0] and "not installed" in err[0]
    assert "pip install 'spattn[viz]'" in err[0]
    assert not out.exists()


def test_show_error_is_a_spattn_error_naming_the_extra():
    code = BLOCK + textwrap.dedent("""\
        import argparse

        import spattn
        from spattn.cli import show

        args = argparse.Namespace(pattern="local(2)", n=16, output="x.png", block_size=128)
        try:
            show.cmd_show(args)
        except spattn.SpattnError as e:
            print("RESULT", "viz" in str(e))
        """)
    r = _run(code)
    assert "RESULT True" in r.stdout, r.stdout + r.stderr
