"""YAML configs (spattn.load / spattn.config.loads) and `spattn check` (spattn.cli.check).

Compiled patterns are checked against the oracle masks of the equivalent hand-written text;
errors are checked for file, line, key and the offending input.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from reference import oracle_mask

import spattn
from spattn.cli.check import check_file
from spattn.config import Config, format_ranges, load, loads

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "patterns.yaml"

BASIC = """\
defaults:
  seq_len: [64, 128]
  block_size: 16
presets: |
  w = 4
  band(width) = window(width, 0) & causal
patterns:
  longdoc: win | global([0, -1])      # refers to a pattern defined below
  win: local(w)
  mixed: bigbird(3, [0:2], 2, seed=7)
  cb: band(5)
model:
  num_layers: 4
  num_heads: 4
  embed_dim: 32
  pattern: win
  layers:
    - {layers: "0-1", pattern: longdoc}
    - {layers: 3, heads: "2,3", pattern: "cb | stride(8)"}
    - {layers: [1, 2], heads: [0], pattern: mixed}
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def same_mask(p: spattn.Pattern, text: str, n: int = 40) -> bool:
    return np.array_equal(oracle_mask(p, n), oracle_mask(text, n))


def test_load_named_patterns_presets_and_references(tmp_path):
    cfg = load(write(tmp_path, BASIC))
    assert isinstance(cfg, Config)
    assert list(cfg.patterns) == ["longdoc", "win", "mixed", "cb"]  # file order
    assert same_mask(cfg.patterns["win"], "local(4)")
    assert same_mask(cfg.patterns["longdoc"], "local(4) | global([0, -1])")
    assert same_mask(cfg.patterns["mixed"], "local(3) | global([0:2]) | random(2, seed=7)")
    assert same_mask(cfg.patterns["cb"], "window(5, 0) & causal")
    assert cfg.seq_lens == (64, 128) and cfg.block_size == 16
    assert (cfg.num_layers, cfg.num_heads, cfg.embed_dim, cfg.backend) == (4, 4, 32, "auto")


def test_layer_assignment_precedence(tmp_path):
    cfg = load(write(tmp_path, BASIC))
    P = cfg.patterns
    inline = spattn.compile("(window(5, 0) & causal) | stride(8)")
    expect = {
        0: [P["longdoc"]] * 4,
        1: [P["mixed"], P["longdoc"], P["longdoc"], P["longdoc"]],
        2: [P["mixed"], P["win"], P["win"], P["win"]],
        3: [P["win"], P["win"], inline, inline],
    }
    for layer, pats in expect.items():
        assert cfg.layer_patterns(layer) == tuple(pats), layer
    groups = cfg.layer_groups(3)
    assert [(g.heads, g.name) for g in groups] == [((0, 1), "win"),
                                                   ((2, 3), "cb | stride(8)")]
    assert set(cfg.used_patterns()) == {"longdoc", "mixed", "win", "cb | stride(8)"}


def test_loads_and_example_file():
    cfg = loads(BASIC, label="inline.yaml")
    assert cfg.path is None and cfg.label == "inline.yaml"
    ex = load(EXAMPLE)
    assert ex.has_model and len(ex.layer_patterns(0)) == ex.num_heads


def test_no_model_section():
    cfg = loads("patterns:\n  a: local(3)\n")
    assert not cfg.has_model and cfg.seq_lens == (4096,)
    with pytest.raises(spattn.ConfigError, match="no `model` section"):
        cfg.layer_patterns(0)


def err(text: str) -> str:
    with pytest.raises(spattn.ConfigError) as e:
        loads(textwrap.dedent(text), label="f.yaml")
    assert isinstance(e.value, spattn.SpattnError)
    return str(e.value)


def test_cycle_is_named():
    msg = err("""\
        patterns:
          a: b | local(2)
          b: c & causal
          c: a
          d: local(1)
        """)
    assert "f.yaml:2: patterns:" in msg and "a -> b -> c -> a" in msg
    assert "a -> a" in err("patterns:\n  a: a | local(1)\n")


def test_bad_pattern_names_file_line_key_and_caret():
    msg = err("""\
        patterns:
          ok: local(3)
          bad: ok | glbal([0])
        """)
    assert msg.startswith("f.yaml:3: patterns.bad:")
    assert "did you mean 'global'" in msg and "^" in msg and "ok | glbal([0])" in msg
    # a block-scalar program: the caret line is the file's line
    msg = err("""\
        patterns:
          prog: |
            x = local(3)
            x | strde(4)
        """)
    assert "f.yaml:2: patterns.prog" in msg and "f.yaml line 4" in msg and "strde" in msg


def test_preset_block_errors_point_into_file():
    msg = err("""\
        presets: |
          f(w) = local(w)
          g(w) = locl(w)
        """)
    assert "f.yaml:1: presets" in msg and "f.yaml line 3" in msg and "'local'" in msg


@pytest.mark.parametrize("text,needle", [
    ("patern:\n  a: local(3)\n", "f.yaml:1: patern: unknown key; did you mean 'patterns'"),
    ("patterns: {a: local(3), a: local(4)}\n", "duplicate key"),
    ("patterns: {local: full}\n", "'local' is a built-in name"),
    ("patterns: {longformer: full}\n", "already a preset"),
    ("patterns: {2a: full}\n", "identifier"),
    ("patterns: {a: 64}\n", "expected pattern text, got int 64"),
    ("patterns: {a: yes}\n", "quote"),
    ("patterns: {a: ''}\n", "empty pattern text"),
    ("patterns: [a, b]\n", "expected a mapping"),
    ("defaults: {seq_len: 0}\n", "defaults.seq_len: 0 is out of range"),
    ("defaults: {seq_len: []}\n", "empty list"),
    ("defaults: {block_size: big}\n", "expected an integer, got str 'big'"),
    ("a: [1, 2\n", "invalid YAML"),
    ("", "empty"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("!!python/object:os.system {}\n", "unsupported YAML tag"),
    ("patterns: {a: !!python/object/apply:os.system [echo]}\n", "unsupported YAML tag"),
    ("model: {num_layers: 2}\n", "missing key `num_heads`"),
    ("model: {num_layers: 2, num_heads: 0, pattern: full}\n", "num_heads: 0 is out of range"),
    ("model: {num_layers: 2, num_heads: 3, embed_dim: 16, pattern: full}\n", "not divisible"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{layers: 0, pattern: full}]}\n",
     "layer 1 heads 0-3 have no pattern"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{layers: '0-2', pattern: full}]}\n",
     "model.layers[0].layers: layer 2 is out of range: the model has num_layers = 2"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{heads: 4, pattern: full}]}\n",
     "model.layers[0].heads: head 4 is out of range"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{layers: '3-1', pattern: full}]}\n",
     "backwards"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{layers: 'x', pattern: full}]}\n",
     "cannot read 'x'"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{layers: 0}]}\n", "missing key `pattern`"),
    ("model: {num_layers: 2, num_heads: 4, layers: [{layer: 0, pattern: full}]}\n",
     "did you mean 'layers'"),
    ("model: {num_layers: 2, num_heads: 4, pattern: nope}\n", "unknown name 'nope'"),
    ("model: {num_layers: 2, num_heads: 4, pattern: full, layers: "
     "[{layers: 0, pattern: none}, {pattern: full}]}\n", "has no effect"),
])
def test_config_errors(text, needle):
    msg = err(text)
    assert needle in msg, msg
    assert msg.startswith("f.yaml")


def test_error_lines_in_model_section():
    msg = err("""\
        patterns:
          a: local(2)
        model:
          num_layers: 3
          num_heads: 2
          layers:
            - {layers: "0-2", pattern: a}
            - {layers: "1", heads: 5, pattern: a}
        """)
    assert msg.startswith("f.yaml:8: model.layers[1].heads: head 5")


def test_load_file_errors(tmp_path):
    with pytest.raises(spattn.ConfigError, match="no such file"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(spattn.ConfigError, match="directory"):
        load(tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"patterns:\n  a: \xff\xfe\n")
    with pytest.raises(spattn.ConfigError, match="not UTF-8"):
        load(bad)
    with pytest.raises(spattn.ConfigError, match="file path"):
        load(123)  # type: ignore[arg-type]


def test_layer_index_errors(tmp_path):
    cfg = load(write(tmp_path, BASIC))
    for bad in (-1, 4, "0", 1.0, True):
        with pytest.raises(spattn.ConfigError, match="out of range"):
            cfg.layer_patterns(bad)  # type: ignore[arg-type]


def test_alias_bomb_is_refused_without_expanding():
    levels = ["    - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"    - &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, 9)]
    text = "defaults:\n  seq_len:\n" + "\n".join(levels) + "\n"
    with pytest.raises(spattn.ConfigError, match="expected a single value, got a list"):
        loads(text)


def _check_output(capsys, path) -> tuple[int, str]:
    rc = check_file(str(path))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def test_cli_check_ok(tmp_path, capsys):
    rc, out = _check_output(capsys, write(tmp_path, BASIC))
    assert rc == 0, out
    for needle in ("longdoc", "Layers at n = 64", "Layers at n = 128", "ok"):
        assert needle in out, out
    # the density printed for layer 0 is the oracle's density of longdoc at n = 64
    dens = oracle_mask("local(4) | global([0, -1])", 64).mean()
    assert f"{dens:.3g}" in out


def test_cli_check_example_file(capsys):
    rc, out = _check_output(capsys, EXAMPLE)
    assert rc == 0, out


def test_cli_check_reports_lowering_problems(tmp_path, capsys):
    path = write(tmp_path, """\
        defaults: {seq_len: [32, 500]}
        patterns:
          bad: stride(n // 100)
          fine: local(2)
        model: {num_layers: 1, num_heads: 2, layers: [{heads: 0, pattern: bad},
                                                      {heads: 1, pattern: fine}]}
        """)
    rc, out = _check_output(capsys, path)
    assert rc == 1
    flat = " ".join(out.split())
    assert "cfg.yaml:3: patterns.bad: at seq_len 32" in flat, out
    assert "stride" in flat and "seq_len 500" not in flat


def test_cli_check_config_error(tmp_path, capsys):
    rc, out = _check_output(capsys, write(tmp_path, "patterns:\n  a: b\n  b: a\n"))
    assert rc == 1 and "a -> b -> a" in out.replace("\n", "")
    rc, out = _check_output(capsys, tmp_path / "nope.yaml")
    assert rc == 1 and "no such file" in out


def test_format_ranges():
    assert format_ranges([]) == ""
    assert format_ranges([3]) == "3"
    assert format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_config_module_only_loads_and_validates():
    import spattn.config as config

    assert not hasattr(config, "cli_check") and not hasattr(config, "_ranges")
