"""predict(se=True, interval=...): joint covariance of (beta, v - v-hat), intervals (issue 17)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special

import hglm

from .conftest import DATA


def _crossed(seed: int = 1, family: str = "gaussian") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, P = 8, 5
    a = np.repeat(np.arange(G), P * 2)
    b = np.tile(np.arange(P), G * 2)
    df = pd.DataFrame({"a": a, "b": b, "x": rng.normal(size=len(a))})
    eta = 0.5 + 0.5 * df["x"] + rng.normal(0, 0.8, G)[a] + rng.normal(0, 0.5, P)[b]
    if family == "gaussian":
        df["y"] = eta + rng.normal(0, 0.5, len(a))
    else:
        df["y"] = rng.poisson(np.exp(eta))
    return df


NEW = pd.DataFrame({"x": [0.3, 1.0, -1.0, 0.2], "a": [0, 1, 99, 99], "b": [2, 77, 3, 77]})


def _dense_forms(res: hglm.HGLMResult, df: pd.DataFrame, new: pd.DataFrame) -> np.ndarray:
    """c'C^{-1}c with C = T'W_aT built densely (W: the fit's working weights / phi)."""
    d = res.design
    G, P = int(df["a"].max()) + 1, int(df["b"].max()) + 1
    Z = np.hstack([np.eye(G)[df["a"]], np.eye(P)[df["b"]]])
    mu = res.fitted
    w = mu if d.family.name == "poisson" else np.ones(len(df))
    phi = res.phi
    lam = res.lambdas
    T = np.hstack([d.X, Z])
    C = T.T @ (T * (w / phi)[:, None])
    C[2:, 2:] += np.diag(np.r_[np.full(G, 1 / lam["a"]), np.full(P, 1 / lam["b"])])
    Xn = np.column_stack([np.ones(len(new)), new["x"]])
    Zn = np.zeros((len(new), G + P))
    for i, (aa, bb) in enumerate(zip(new["a"], new["b"], strict=True)):
        if aa < G:
            Zn[i, aa] = 1
        if bb < P:
            Zn[i, G + bb] = 1
    c = np.hstack([Xn, Zn])
    return np.einsum("ij,jk,ik->i", c, np.linalg.inv(C), c)


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_standard_errors_are_the_dense_joint_covariance(family: str) -> None:
    df = _crossed(family=family)
    # no data row has levels a = 1 and b = 2 together: that row takes the sparse solve, the
    # others the selected inverse of a data row's pattern (or its diagonal)
    df = df[~((df["a"] == 1) & (df["b"] == 2))].reset_index(drop=True)
    new = pd.concat([NEW, pd.DataFrame({"x": [0.5], "a": [1], "b": [2]})], ignore_index=True)
    res = hglm.fit("y ~ x + (1|a) + (1|b)", df, family=family)
    out = res.predict(new, se=True, type="link")
    np.testing.assert_allclose(out["se"] ** 2, _dense_forms(res, df, new), rtol=1e-7)
    np.testing.assert_allclose(out["fit"], res.predict(new, type="link"))
    # on the fit's own rows, the seen levels' full rows
    own = res.predict(se=True, type="link")
    np.testing.assert_allclose(own["se"] ** 2, _dense_forms(res, df, df), rtol=1e-7)


def test_prediction_interval_adds_new_levels_and_residual_variance() -> None:
    df = _crossed()
    res = hglm.fit("y ~ x + (1|a) + (1|b)", df)
    conf = res.predict(NEW, interval="confidence", level=0.9)
    pred = res.predict(NEW, interval="prediction", level=0.9)
    lam = res.lambdas
    extra = res.phi + lam["a"] * (NEW["a"] > 7) + lam["b"] * (NEW["b"] > 4)
    np.testing.assert_allclose(pred["se"] ** 2, conf["se"] ** 2 + extra, rtol=1e-10)
    z = 1.6448536269514722
    np.testing.assert_allclose(pred["upper"] - pred["fit"], z * pred["se"], rtol=1e-10)
    np.testing.assert_allclose(conf["fit"] - conf["lower"], z * conf["se"], rtol=1e-10)


def test_poisson_response_intervals() -> None:
    df = _crossed(family="poisson")
    res = hglm.fit("y ~ x + (1|a) + (1|b)", df, family="poisson")
    link = res.predict(NEW, type="link", interval="confidence")
    conf = res.predict(NEW, interval="confidence")
    np.testing.assert_allclose(conf["lower"], np.exp(link["lower"]))
    np.testing.assert_allclose(conf["upper"], np.exp(link["upper"]))
    pred = res.predict(NEW, interval="prediction")
    lp = res.predict(NEW, type="link", interval="prediction")
    assert np.all(pred["lower"] == np.floor(pred["lower"]))
    # the bounds are the quantiles of y mixed over eta ~ N(fit, se^2): check by simulation
    rng = np.random.default_rng(0)
    for i in range(len(NEW)):
        y = rng.poisson(np.exp(rng.normal(lp["fit"][i], lp["se"][i], 400_000)))
        lo, hi = pred["lower"][i], pred["upper"][i]
        assert np.mean(y < lo) <= 0.025 + 0.002 and np.mean(y <= lo) >= 0.025 - 0.002
        assert np.mean(y > hi) <= 0.025 + 0.002 and np.mean(y >= hi) >= 0.025 - 0.002


def test_binomial_prediction_needs_and_uses_trials() -> None:
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(20), 4)
    df = pd.DataFrame({"g": g, "m": 30, "x": rng.normal(size=80)})
    df["k"] = rng.binomial(30, special.expit(0.2 + 0.4 * df["x"] + rng.normal(0, 0.6, 20)[g]))
    res = hglm.fit("k ~ x + (1|g)", df, family="binomial", trials="m")
    new = pd.DataFrame({"x": [0.0, 1.0], "g": [0, 1000], "m": [30, 10]})
    pred = res.predict(new, interval="prediction")
    assert np.allclose(pred["lower"] * new["m"], np.round(pred["lower"] * new["m"]))
    assert np.all((pred["lower"] <= pred["fit"]) & (pred["fit"] <= pred["upper"]))
    with pytest.raises(ValueError, match="trials"):
        res.predict(new.drop(columns="m"), interval="prediction")


def test_nb_prediction_on_owls() -> None:
    owls = pd.read_csv(DATA / "Owls.csv")
    res = hglm.fit(
        "SiblingNegotiation ~ FoodTreatment + offset(log(BroodSize)) + (1 | Nest)",
        owls,
        family="nbinom2",
        reml=False,
    )
    new = owls.head(3).assign(Nest=["AutavauxTV", "nowhere", "nowhere"])
    out = res.predict(new, interval="prediction")
    assert np.all(out["lower"] <= out["fit"]) and np.all(out["fit"] <= out["upper"])
    # the new nest adds the nest variance on the link scale
    link_p = res.predict(new, type="link", interval="prediction")
    link_c = res.predict(new, type="link", interval="confidence")
    np.testing.assert_allclose(
        link_p["se"] ** 2 - link_c["se"] ** 2, np.array([0, 1, 1]) * res.lambdas["Nest"], atol=1e-12
    )


def test_prediction_refusals() -> None:
    df = _crossed()
    res = hglm.fit("y ~ x + (1|a) + (1|b)", df)
    with pytest.raises(ValueError, match="interval must be"):
        res.predict(NEW, interval="credible")
    with pytest.raises(ValueError, match="level"):
        res.predict(NEW, interval="confidence", level=95)
    pois = hglm.fit(
        "y ~ x + (1|a)", _crossed(family="poisson"), family="poisson", rand_family="gamma"
    )
    with pytest.raises(ValueError, match="normal random effect"):
        pois.predict(NEW, interval="prediction")
    # seen levels of a gamma term are fine
    assert np.isfinite(pois.predict(NEW.head(2), interval="prediction")["upper"]).all()
