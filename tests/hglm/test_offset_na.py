"""offset(...) terms in formulas and na_action="omit" (issue 17)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hglm
from hglm.formula import parse_formula

from .conftest import load_dataset, load_references


def _exposure_counts(seed: int = 5, groups: int = 15, per: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    t = rng.uniform(0.5, 20, groups * per)
    x = rng.normal(size=groups * per)
    eta = np.log(t) - 1.0 + 0.4 * x + rng.normal(0, 0.5, groups)[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "t": t, "g": g})


def test_formula_takes_offsets_out_of_the_fixed_part() -> None:
    f = parse_formula("O ~ Paff + offset(log(E)) + (1 | area)")
    assert f.fixed == "Paff"
    assert f.offsets == ("log(E)",)
    f = parse_formula("y ~ offset(np.log(t)) + x + offset(z)")
    assert f.fixed == "x"
    assert f.offsets == ("np.log(t)", "z")
    assert parse_formula("y ~ offset(log(t))").fixed == "1"


@pytest.mark.parametrize("formula", ["y ~ x * offset(a)", "y ~ x - offset(a)", "y ~ offset(a"])
def test_malformed_offsets_are_refused_clearly(formula: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_formula(formula)


def test_offset_term_reproduces_r_hglm_pump() -> None:
    """R: hglm(S ~ factor(Gr), offset = log(t), random = ~1|System) (EQL)."""
    pump = load_dataset("pump")
    ref = next(
        r
        for r in load_references()
        if r["dataset"] == "pump" and r["package"] == "hglm" and r["model_id"] == "poisson_normal"
    )
    res = hglm.fit(
        "S ~ factor(Gr) + offset(log(t)) + (1|System)", pump, family="poisson", method="EQL"
    )
    want = {fe["name"]: fe["estimate"] for fe in ref["results"]["fixed_effects"]}
    for name, value in want.items():
        assert res.fixef.loc[name, "estimate"] == pytest.approx(value, rel=1e-4)
    # the same as the offset= argument
    arg = hglm.fit(
        "S ~ factor(Gr) + (1|System)", pump, family="poisson", method="EQL", offset="np.log(t)"
    )
    np.testing.assert_allclose(res.fixef["estimate"], arg.fixef["estimate"], rtol=1e-10)


def test_several_offsets_add_up_and_predict_rebuilds_them() -> None:
    df = _exposure_counts()
    df["half"] = 0.5
    two = hglm.fit("y ~ x + offset(log(t)) + offset(half) + (1|g)", df, family="poisson")
    one = hglm.fit("y ~ x + (1|g)", df, family="poisson", offset=np.log(df["t"]) + 0.5)
    np.testing.assert_allclose(two.fixef["estimate"], one.fixef["estimate"], atol=1e-6)
    np.testing.assert_allclose(two.design.offset, np.log(df["t"]) + 0.5)
    # on the fit's own rows, predict(newdata) is the fitted mean (offset included)
    np.testing.assert_allclose(two.predict(df), two.fitted, rtol=1e-8)
    # doubling the exposure doubles the predicted mean
    more = df.assign(t=2 * df["t"])
    np.testing.assert_allclose(two.predict(more), 2 * two.fitted, rtol=1e-8)
    # an array offset must be given again for new rows
    with pytest.raises(ValueError, match="offset="):
        one.predict(df)
    np.testing.assert_allclose(one.predict(df, offset=np.log(df["t"]) + 0.5), one.fitted, rtol=1e-6)


def test_offset_column_missing_from_data_is_named() -> None:
    df = _exposure_counts()
    with pytest.raises(ValueError, match=r"'E'.*offset"):
        hglm.fit("y ~ x + offset(log(E)) + (1|g)", df, family="poisson")


def test_na_omit_drops_rows_and_counts_them() -> None:
    df = _exposure_counts()
    df = df.astype({"x": float, "t": float})
    df.loc[[3, 17], "x"] = np.nan
    df.loc[40, "t"] = np.nan
    df["unused"] = np.nan  # a column the model does not use does not drop rows
    with pytest.raises(ValueError, match=r"missing values in rows \[3, 17\].*na_action"):
        hglm.fit("y ~ x + offset(log(t)) + (1|g)", df, family="poisson")
    res = hglm.fit("y ~ x + offset(log(t)) + (1|g)", df, family="poisson", na_action="omit")
    assert res.n_omitted == 3
    assert list(res.design.omitted) == [3, 17, 40]
    assert res.nobs == len(df) - 3
    clean = df.drop(index=[3, 17, 40]).drop(columns="unused")
    ref = hglm.fit("y ~ x + offset(log(t)) + (1|g)", clean, family="poisson")
    np.testing.assert_allclose(res.fixef["estimate"], ref.fixef["estimate"], rtol=1e-8)
    assert res.likelihood["p_v"] == pytest.approx(ref.likelihood["p_v"], abs=1e-8)
    assert "3 row(s) with missing values omitted" in res.summary()
    assert res.to_dict()["n_omitted"] == 3
    assert ref.n_omitted == 0


def test_na_omit_subsets_per_row_arrays() -> None:
    df = _exposure_counts().astype({"x": float})
    df.loc[5, "x"] = np.nan
    log_t = np.log(df["t"].to_numpy())
    res = hglm.fit("y ~ x + (1|g)", df, family="poisson", offset=log_t, na_action="omit")
    keep = df.index != 5
    ref = hglm.fit("y ~ x + (1|g)", df[keep], family="poisson", offset=log_t[keep])
    np.testing.assert_allclose(res.fixef["estimate"], ref.fixef["estimate"], rtol=1e-8)
    w = np.linspace(0.5, 2, len(df))
    res = hglm.fit("x ~ t + (1|g)", df, weights=w, na_action="omit")
    ref = hglm.fit("x ~ t + (1|g)", df[keep], weights=w[keep])
    np.testing.assert_allclose(res.fixef["estimate"], ref.fixef["estimate"], rtol=1e-8)


def test_na_action_must_be_known() -> None:
    with pytest.raises(ValueError, match="na_action"):
        hglm.fit("y ~ x + (1|g)", _exposure_counts(), family="poisson", na_action="drop")
