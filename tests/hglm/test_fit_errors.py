"""Bad input gets a ValueError naming the column and rows; failures to converge say so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hglm

from .conftest import load_dataset


@pytest.fixture
def semi() -> pd.DataFrame:
    return load_dataset("semiconductor")


def test_missing_values_name_column_and_rows(semi) -> None:
    semi.loc[[3, 17], "x3"] = np.nan
    with pytest.raises(ValueError, match=r"column 'x3'.*missing values.*rows \[3, 17\]"):
        hglm.fit("y ~ x1 + x3 + (1|Device)", semi, family="gamma")


def test_unknown_column(semi) -> None:
    with pytest.raises(ValueError, match="column 'x9'"):
        hglm.fit("y ~ x1 + x9 + (1|Device)", semi, family="gamma")
    with pytest.raises(ValueError, match=r"column 'lot'.*grouping factor"):
        hglm.fit("y ~ x1 + (1|lot)", semi, family="gamma")
    with pytest.raises(ValueError, match=r"column 'x7'.*dispersion"):
        hglm.fit("y ~ x1 + (1|Device)", semi, family="gamma", disp="~ x7")


def test_non_integer_counts() -> None:
    df = pd.DataFrame({"y": [1, 2.5, 3, 0], "g": list("aabb")})
    with pytest.raises(ValueError, match=r"'y'.*integer counts.*rows \[1\]"):
        hglm.fit("y ~ 1 + (1|g)", df, family="poisson")
    with pytest.raises(ValueError, match=r"'y'.*integer counts.*rows \[1\]"):
        hglm.fit("y ~ 1 + (1|g)", df.assign(n=5), family="binomial", trials="n")


def test_negative_gamma_response(semi) -> None:
    semi.loc[5, "y"] = -0.1
    with pytest.raises(ValueError, match=r"'y' must be positive for gamma.*rows \[5\]"):
        hglm.fit("y ~ x1 + (1|Device)", semi, family="gamma")


def test_trials_smaller_than_successes() -> None:
    seeds = load_dataset("seeds")
    seeds.loc[2, "n"] = seeds.loc[2, "r"] - 1
    with pytest.raises(ValueError, match=r"trials < 'r'.*rows \[2\]"):
        hglm.fit("r ~ seed + (1|plate)", seeds, family="binomial", trials="n")


def test_binary_response_must_be_zero_one() -> None:
    df = pd.DataFrame({"y": [0, 1, 2, 1], "g": list("aabb")})
    with pytest.raises(ValueError, match=r"0/1.*rows \[2\]"):
        hglm.fit("y ~ 1 + (1|g)", df, family="binomial")


def test_grouping_factor_with_one_level(semi) -> None:
    semi["plant"] = "P1"
    with pytest.raises(ValueError, match=r"'plant'.*single level"):
        hglm.fit("y ~ x1 + (1|plant)", semi, family="gamma")


def test_bad_method_and_family(semi) -> None:
    with pytest.raises(ValueError, match="method"):
        hglm.fit("y ~ x1 + (1|Device)", semi, family="gamma", method="REML")
    with pytest.raises(ValueError, match="link"):
        hglm.fit("y ~ x1 + (1|Device)", semi, family="poisson(identity)")
    # a quasi-likelihood phi for Poisson/binomial (issue 17) is R hglm's EQL only
    with pytest.raises(ValueError, match="method='EQL' only"):
        hglm.fit("y ~ x1 + (1|Device)", semi.assign(k=1), family="poisson", disp="~ x2")


def test_two_observation_level_terms_are_refused() -> None:
    df = pd.DataFrame({"y": np.arange(1.0, 7.0), "a": range(6), "b": range(6)})
    with pytest.raises(ValueError, match="one level per row"):
        hglm.fit("y ~ 1 + (1|a) + (1|b)", df)


def test_non_convergence_is_reported(semi) -> None:
    with pytest.warns(hglm.ConvergenceWarning, match="did not converge"):
        res = hglm.fit("y ~ x1 + x3 + (1|Device)", semi, family="gamma", method="EQL", max_iter=1)
    assert not res.converged
    assert any("did not converge" in w for w in res.warnings)
    assert "DID NOT CONVERGE" in res.summary()


def test_singular_fit_is_reported() -> None:
    # every group has the same values, so the group means are identical: lambda-hat = 0
    rng = np.random.default_rng(7)
    values = np.array([-2.0, -0.5, 0.0, 1.0, 1.5])
    df = pd.DataFrame(
        {
            "g": np.repeat(np.arange(10), 5).astype(str),
            "y": np.concatenate([rng.permutation(values) for _ in range(10)]),
        }
    )
    with pytest.warns(hglm.ConvergenceWarning, match="singular fit"):
        res = hglm.fit("y ~ 1 + (1|g)", df, method="HL(0,1)")
    assert res.varcomp.loc["g", "lambda"] < 1e-6
    assert res.singular and "(1 | g)" in res.singular[0]
