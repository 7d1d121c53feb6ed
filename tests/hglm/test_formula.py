"""lme4-style formulas: fixed part, random intercepts, nesting and crossing."""

from __future__ import annotations

import pytest

from hglm.formula import RandomTerm, normalise_term_key, parse_formula


def test_fixed_and_one_random_term() -> None:
    f = parse_formula("y ~ x1 + x3 + x5 + x6 + (1|Device)")
    assert f.response == "y"
    assert f.fixed == "x1 + x3 + x5 + x6"
    assert f.random == (RandomTerm(("Device",)),)
    assert f.random[0].label == "(1 | Device)"


def test_nested_terms_expand_to_parent_and_interaction() -> None:
    f = parse_formula("y ~ x + (1 | lot/wafer/site)")
    assert [t.name for t in f.random] == ["lot", "lot:wafer", "lot:wafer:site"]


def test_crossed_terms_and_explicit_interaction() -> None:
    f = parse_formula("y ~ (1|tool) + x + (1|recipe:replicate) + (1 | chamber)")
    assert [t.name for t in f.random] == ["tool", "recipe:replicate", "chamber"]
    assert f.fixed == "x"


def test_random_only_formula_keeps_an_intercept() -> None:
    assert parse_formula("y ~ (1|g)").fixed == "1"
    assert parse_formula("y ~ 0 + x + (1|g)").fixed == "0 + x"


def test_plain_glm_formula_has_no_random_terms() -> None:
    f = parse_formula("y ~ a * b")
    assert f.random == () and f.fixed == "a * b"


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y + x", "no '~'"),
        ("~ x", "no response"),
        ("y ~ x + (x|g)", "only random intercepts"),
        ("y ~ x + (1|g) + (1|g)", "more than once"),
        ("y ~ x + (1|g/)", "malformed"),
        ("y ~ x + (1|log(g))", "random part"),
        ("y ~ x + (1|g-h)", "column names"),
    ],
)
def test_malformed_formulas_are_rejected(formula: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_formula(formula)


def test_term_keys_accept_lme4_spelling() -> None:
    assert normalise_term_key("(1 | a : b)") == "a:b"
    assert normalise_term_key("(1|Device)") == "Device"
    assert normalise_term_key("lot") == "lot"
