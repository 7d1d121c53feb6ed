"""Designs: R-compatible fixed-effect names, random-term codes, observation-level terms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

from hglm.design import build_design, poly_contrasts
from hglm.families import response_family
from hglm.formula import parse_formula

from .conftest import load_dataset


def _design(formula: str, data, family: str = "gaussian", **kw):
    return build_design(parse_formula(formula), data, response_family(family), **kw)


def test_treatment_contrasts_use_r_names() -> None:
    seeds = load_dataset("seeds")
    d = _design("r ~ seed * extract + (1|plate)", seeds, "binomial", trials="n")
    assert d.fixed_names == ["(Intercept)", "seedO75", "extractCucumber", "seedO75:extractCucumber"]
    # binomial response is the proportion, prior weights the trials
    np.testing.assert_allclose(d.y * d.prior_weights, seeds["r"])


def test_factor_call_is_named_like_r() -> None:
    pump = load_dataset("pump")
    d = _design("S ~ factor(Gr) + (1|System)", pump, "poisson")
    assert d.fixed_names == ["(Intercept)", "factor(Gr)1"]


def test_ordered_factor_gets_polynomial_contrasts() -> None:
    cake = load_dataset("cake")
    d = _design("angle ~ temperature + (1|recipe:replicate)", cake)
    assert d.fixed_names == ["(Intercept)"] + [
        f"temperature{s}" for s in (".L", ".Q", ".C", "^4", "^5")
    ]
    matrix, _ = poly_contrasts(6)
    # orthonormal columns orthogonal to the constant, as R's contr.poly
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(matrix.sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(matrix[:, 0], np.linspace(-5, 5, 6) / np.sqrt(70), atol=1e-12)


def test_random_term_codes_and_levels() -> None:
    df = pd.DataFrame(
        {"y": np.arange(6.0), "lot": ["b", "a", "b", "c", "a", "c"], "w": [1, 2, 1, 1, 2, 2]}
    )
    d = _design("y ~ 1 + (1|lot/w)", df)
    lot, lot_w = d.terms
    assert list(lot.levels) == ["a", "b", "c"]
    np.testing.assert_array_equal(lot.codes, [1, 0, 1, 2, 0, 2])
    assert list(lot_w.levels) == ["a:2", "b:1", "c:1", "c:2"]
    assert not lot.observation_level
    ind = lot.indicator().toarray()
    np.testing.assert_array_equal(ind.argmax(axis=1), lot.codes)


def test_numeric_grouping_levels_sort_numerically() -> None:
    df = pd.DataFrame({"y": np.arange(4.0), "g": [10, 2, 2, 10]})
    d = _design("y ~ 1 + (1|g)", df)
    assert list(d.terms[0].levels) == ["2", "10"]


def test_one_level_per_row_is_an_observation_level_term() -> None:
    pump = load_dataset("pump")
    d = _design("S ~ 1 + (1|System)", pump, "poisson")
    assert d.terms[0].observation_level


def test_polars_and_pandas_give_the_same_design() -> None:
    semi = load_dataset("semiconductor")
    a = _design("y ~ x1 + x3 + (1|Device)", semi, "gamma", disp="~ x2")
    b = _design("y ~ x1 + x3 + (1|Device)", pl.from_pandas(semi), "gamma", disp="~ x2")
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.X_disp, b.X_disp)
    np.testing.assert_array_equal(a.terms[0].codes, b.terms[0].codes)


def test_rand_disp_covariates_per_level() -> None:
    df = pd.DataFrame(
        {"y": np.arange(6.0), "g": list("aabbcc"), "z": [1.0, 1.0, 2.0, 2.0, 5.0, 5.0]}
    )
    d = _design("y ~ 1 + (1|g)", df, rand_disp={"(1|g)": "~ z"})
    np.testing.assert_array_equal(d.terms[0].X_disp, [[1, 1], [1, 2], [1, 5]])
    df.loc[3, "z"] = 9.0
    with pytest.raises(ValueError, match="constant within its levels"):
        _design("y ~ 1 + (1|g)", df, rand_disp={"g": "~ z"})


def test_offset_expression_and_weights() -> None:
    pump = load_dataset("pump")
    d = _design("S ~ 1 + (1|System)", pump, "poisson", offset="np.log(t)", weights="t")
    np.testing.assert_allclose(d.offset, np.log(pump["t"]))
    np.testing.assert_allclose(d.prior_weights, pump["t"])
