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
        ("y ~ x + (x|a/b)", "intercepts only"),
        ("y ~ x + (0|g)", "no columns"),
        ("y ~ x + ar1(a + b | g)", "one time column"),
        ("y ~ x + ar1(t | a/b)", "one grouping factor"),
        ("y ~ x + (x|g) + (1|g)", "more than once"),
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


def test_random_slopes_in_lme4_syntax() -> None:
    f = parse_formula("Reaction ~ Days + (Days | Subject)")
    (t,) = f.random
    assert f.fixed == "Days"
    assert t.effects == ("1", "Days") and t.name == "Subject" and t.label == "(Days | Subject)"
    assert t.effects_formula == "1 + Days" and not t.intercept_only
    (t0,) = parse_formula("y ~ x + (0 + x + z | g)").random
    assert t0.effects == ("x", "z") and t0.name == "g.x.z" and t0.effects_formula == "0 + x + z"
    assert parse_formula("y ~ x + (x - 1 | g)").random == (t0.__class__(("g",), ("x",)),)


def test_double_bar_splits_into_uncorrelated_terms() -> None:
    f = parse_formula("Reaction ~ Days + (Days || Subject)")
    assert [t.label for t in f.random] == ["(1 | Subject)", "(0 + Days | Subject)"]
    assert [t.name for t in f.random] == ["Subject", "Subject.Days"]
    assert f.random[0].intercept_only


@pytest.mark.parametrize("spelling", ["ar1(week | tool)", "ar1(factor(week) + 0 | tool)"])
def test_ar1_terms(spelling: str) -> None:
    f = parse_formula(f"cbind_good ~ x + {spelling} + (1|lot)")
    assert f.fixed == "x"
    ar, lot = f.random
    assert (ar.structure, ar.time, ar.name, ar.label) == ("ar1", "week", "tool", "ar1(week | tool)")
    assert lot.name == "lot"
