"""Every example runs, in its fast mode, as a user would run it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(args: list[str], tmp_path: Path, timeout: int = 300) -> str:
    env = dict(os.environ, SPATTN_FAST="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_quickstart(tmp_path):
    out = run([str(EXAMPLES / "quickstart.py")], tmp_path)
    assert "canonical form" in out and "max |sparse - dense|" in out and out.rstrip().endswith("ok")


def test_patterns_yaml_checks_clean(tmp_path):
    code = ("import sys; from spattn.cli import main; "
            f"sys.exit(main(['check', {str(EXAMPLES / 'patterns.yaml')!r}]))")
    out = run(["-c", code], tmp_path)
    assert "Layers at n = 1,024" in out and "ok" in out


def test_long_document_fast(tmp_path):
    out = run([str(EXAMPLES / "long_document.py"), "--fast"], tmp_path)
    assert "2,048 tokens" in out and "spattn" in out and "dense" in out and "MB" in out


def test_seed_patterns_fast(tmp_path):
    png = tmp_path / "seed.png"
    out = run([str(EXAMPLES / "seed_patterns.py"), "--fast", "--out", str(png)], tmp_path)
    assert "Accuracy" in out and "local(16)" in out
    assert png.exists() and png.stat().st_size > 1000
    # the analysis part is exact: position 0 never reaches the last position under A
    a_line = next(line for line in out.splitlines() if line.startswith("A  local(16)"))
    assert a_line.split()[-2:] == ["no", "no"]
    b_line = next(line for line in out.splitlines() if line.startswith("B  global"))
    assert b_line.split()[-2:] == ["yes", "yes"]


def test_chat_stream_fast_memory_is_flat(tmp_path):
    out = run([str(EXAMPLES / "chat_stream.py"), "--fast"], tmp_path)
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("spattn ") and "resident" in ln]
    caches = {ln.split("caches")[1].split("MiB")[0].strip() for ln in lines}
    held = {ln.split("per layer")[1].split(",")[0].strip() for ln in lines}
    assert len(lines) == 10 and len(caches) == 1 and held == {"132"}
    plain = [ln for ln in out.splitlines() if ln.strip().startswith("plain ") and "resident" in ln]
    sizes = [float(ln.split("caches")[1].split("MiB")[0]) for ln in plain]
    assert sizes[-1] > sizes[0]  # the plain cache grows
    assert "same 1,500 tokens from both loops: yes" in out


def test_hf_generate_fast_pattern_cache_is_flat(tmp_path):
    pytest.importorskip("transformers")
    out = run([str(EXAMPLES / "hf_generate.py"), "--fast"], tmp_path)
    rows = [ln.split("|")[1:-1] for ln in out.splitlines() if ln.startswith("| 128 ")
            or ln.startswith("| 256 ")]
    assert [r[0].strip() for r in rows] == ["128", "256"]
    dyn = [float(r[3].replace(",", "")) for r in rows]
    pat = [float(r[4].replace(",", "")) for r in rows]
    assert dyn[1] > dyn[0] and pat[0] == pat[1] < dyn[0]
    assert "PatternCache stays at" in out and out.rstrip().endswith("True")


@pytest.mark.parametrize("name", ["quickstart.py", "long_document.py", "seed_patterns.py",
                                  "chat_stream.py", "hf_generate.py"])
def test_examples_have_docstrings(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""')


def _readme_pictures() -> list[tuple[str, list[str]]]:
    """(pattern text, rows) for every picture in the README's language reference."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from make_pictures import WIDTH
    finally:
        sys.path.pop(0)
    text = (ROOT / "README.md").read_text()
    start = text.index("## Language reference")
    out = []
    for blk in text[start:].split("```text\n")[1:]:
        lines = blk.split("```")[0].rstrip("\n").split("\n")
        if len(lines) != 9 or "#" not in lines[1] + lines[2] + "".join(lines[3:]):
            continue
        titles = [lines[0][c:c + WIDTH].strip() for c in range(0, len(lines[0]), WIDTH)]
        for k, t in enumerate(titles):
            out.append((t, [ln[k * WIDTH:k * WIDTH + 15] for ln in lines[1:]]))
    return out


def test_readme_pictures_match_reference_masks():
    from reference import oracle_mask

    pics = _readme_pictures()
    names = {t.split("(")[0] for t, _ in pics}
    for prim in ("local", "window", "causal", "stride", "dilated", "block", "fixed", "rows",
                 "cols", "global", "sink", "random", "full", "none"):
        assert prim in names, prim
    for text, rows in pics:
        m = oracle_mask(text, 8)
        want = [" ".join("#" if x else "." for x in r) for r in m]
        assert rows == want, text


def test_readme_yaml_walkthrough_runs(tmp_path, monkeypatch):
    """The README's "From a YAML config to a model" snippets, run as written."""
    text = (ROOT / "README.md").read_text()
    sec = text[text.index("### From a YAML config to a model"):]
    yaml_src = sec.split("```yaml\n", 1)[1].split("```", 1)[0]
    py_src = sec.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "model.yaml").write_text(yaml_src)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(py_src, "README.md", "exec"), ns)  # noqa: S102 - the README's own snippet
    cfg, encoder, attn = ns["cfg"], ns["encoder"], ns["attn"]
    assert len(encoder.layers) == cfg.num_layers == 12
    assert attn.patterns == cfg.layer_patterns(7)
    from reference import oracle_mask

    n = 300
    assert (oracle_mask(cfg.layer_patterns(7)[0], n)
            == oracle_mask("local(128) | stride(256)", n)).all()
    assert (oracle_mask(cfg.layer_patterns(3)[5], n)
            == oracle_mask("local(128) | global([0, -1])", n)).all()
