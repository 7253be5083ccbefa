"""Every error a user can cause is a SpattnError whose message names the problem."""

from __future__ import annotations

import pytest

import spattn
from spattn import (
    LoweringError,
    PatternNameError,
    PatternSyntaxError,
    ResourceError,
    SpattnError,
)


def err(text, n=None):
    with pytest.raises(SpattnError) as e:
        p = spattn.compile(text)
        if n is not None:
            p.to_csr(n)
    return e


def test_syntax_error_shows_caret_and_expected():
    e = err("local(64) | global([0,-1]")
    assert e.type is PatternSyntaxError
    msg = str(e.value)
    assert "local(64) | global([0,-1]" in msg
    lines = msg.splitlines()
    caret_line = lines[-1]
    assert caret_line.strip() == "^"
    # caret sits under the end of the text (the missing ')')
    assert caret_line.index("^") == lines[-2].index("local") + len("local(64) | global([0,-1]")
    assert "expected" in msg and "')'" in msg


def test_syntax_error_column_mid_text():
    e = err("local(64) || causal")
    msg = str(e.value)
    lines = msg.splitlines()
    col = lines[-1].index("^") - lines[-2].index("local")
    assert "local(64) || causal"[col] == "|" and col == 11
    assert "unexpected '|'" in msg


def test_misspelt_primitive_suggests_nearest():
    e = err("locl(64) | global([0])")
    assert e.type is PatternNameError
    assert "unknown name 'locl'" in str(e.value)
    assert "did you mean 'local'" in str(e.value)
    assert "^" in str(e.value)
    assert "did you mean 'stride'" in str(err("strid(3)").value)
    assert "did you mean 'causal'" in str(err("casual").value)
    assert "did you mean 'streaming'" in str(err("streamin(4, 8)").value)


def test_wrong_arity_and_keyword():
    assert "local takes 1 argument(s), got 2: local(w)" in str(err("local(1, 2)").value)
    assert "window is missing argument 'r'" in str(err("window(3)").value)
    assert "random has no argument 'sed'" in str(err("random(3, sed=1)").value)
    assert "preset strided takes 1 argument(s), got 2" in str(err("strided(1, 2)").value)
    assert "local needs arguments" in str(err("local").value)
    assert "keyword argument 'seed' given twice" in str(err("random(2, seed=1, seed=2)").value)


def test_argument_out_of_range_at_lowering_names_everything():
    e = err("stride(n // 1000)", n=500)
    assert e.type is LoweringError
    msg = str(e.value)
    for part in ("stride", "argument s = 0", "n // 1000", "n = 500", ">= 1"):
        assert part in msg, (part, msg)


def test_constant_argument_out_of_range_at_parse():
    msg = str(err("local(-1)").value)
    assert "local: argument w = -1" in msg and ">= 0" in msg
    assert "exceeds l" in str(err("fixed(4, 5)").value)


def test_index_out_of_range_names_position_and_n():
    e = err("global([0, 10])", n=10)
    assert e.type is LoweringError
    msg = str(e.value)
    assert "position 10" in msg and "n = 10" in msg and "-10..9" in msg
    assert "position -11" in str(err("cols([-11])", n=10).value)


def test_slice_step_zero():
    assert "slice step is zero" in str(err("cols([::0])", n=5).value)


def test_recursive_preset():
    e = err("f(x) = local(x) | f(x)\nf(2)")
    assert "recursive preset" in str(e.value) and "f" in str(e.value)


def test_type_errors():
    assert "cannot combine a pattern with an integer" in str(err("local(3) | 4").value)
    assert "must be an integer" in str(err("local(causal)").value)
    assert "must be an index set" in str(err("global(3)").value)
    assert "last expression must be a pattern" in str(err("3 + 4").value)
    assert "cannot rebind the built-in name 'local'" in str(err("local = causal\nlocal").value)
    assert "division by zero" in str(err("local(3 // 0)").value)
    assert "division by zero" in str(err("local(3 // (n - 5))", n=5).value)


def test_non_text_input():
    with pytest.raises(SpattnError, match="must be text or a spattn.Pattern, got int"):
        spattn.compile(42)


@pytest.mark.parametrize("text,what", [
    ("local(６４)", "U+FF16"),         # fullwidth digit look-alike
    ("local(64) ｜ causal", "U+FF5C"),  # fullwidth vertical bar
    ("local(64)\x00", "NUL"),
])
def test_lookalikes_and_nul(text, what):
    e = err(text)
    assert e.type is PatternSyntaxError
    assert what in str(e.value)


def test_nesting_limit():
    text = "(" * 10_000 + "causal" + ")" * 10_000
    assert "nests brackets 10000 deep" in str(err(text).value)


def test_oversized_requests():
    with pytest.raises(ResourceError, match="limit is n <= 16,384"):
        spattn.compile("causal").to_dense(100_000)
    spattn.set_memory_budget(10 << 20)
    try:
        with pytest.raises(ResourceError, match="over the memory budget"):
            spattn.compile("full").to_csr(10_000)
    finally:
        spattn.set_memory_budget(None)


def test_all_public_errors_are_spattn_errors():
    for cls in (PatternSyntaxError, PatternNameError, LoweringError, ResourceError,
                spattn.ShapeError, spattn.ConfigError):
        assert issubclass(cls, SpattnError)
