"""The result object, and the linear algebra behind it checked against dense computations."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import hglm
from hglm.design import r_style_name
from hglm.eql import fit_eql
from hglm.model import Model

from .conftest import load_dataset


@pytest.fixture(scope="module")
def semi_fit() -> hglm.HGLMResult:
    semi = load_dataset("semiconductor")
    return hglm.fit(
        "y ~ x1 + x3 + x5 + x6 + (1|Device)", semi, family="gamma", link="log", disp="~ x2 + x3"
    )


def test_to_dict_is_plain_json(semi_fit) -> None:
    d = semi_fit.to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    for key in ("fixef", "varcomp", "phi", "likelihood", "converged", "n_iter"):
        assert key in back
    assert set(back["fixef"]["x1"]) == {"estimate", "se"}
    assert set(back["likelihood"]) == {"h", "p_v", "p_beta_v", "caic"}
    assert back["varcomp"]["Device"]["lambda"] == pytest.approx(
        semi_fit.varcomp.loc["Device", "lambda"]
    )
    assert back["phi"] is None and set(back["disp"]) == {"(Intercept)", "x2", "x3"}
    assert back["converged"] is True


def test_tables(semi_fit) -> None:
    fx = semi_fit.fixef
    assert list(fx.columns) == ["estimate", "se", "t", "p"]
    np.testing.assert_allclose(fx["t"], fx["estimate"] / fx["se"])
    re_ = semi_fit.ranef["Device"]
    assert len(re_) == 16 and (re_["se"] > 0).all()
    assert semi_fit.disp_coef is not None and semi_fit.phi is None
    assert set(semi_fit.timings) >= {"design", "eql", "outer", "total"}


def test_summary_sections(semi_fit) -> None:
    text = semi_fit.summary()
    assert "MEAN MODEL" in text and "DISPERSION MODEL" in text
    assert "Summary of the fixed effects estimates" in text
    assert "x3" in text and "p_v(h)" in text
    assert "converged" in repr(text), "the summary shows as its text at an interactive prompt"


def test_predict(semi_fit) -> None:
    semi = load_dataset("semiconductor")
    np.testing.assert_allclose(semi_fit.predict(semi), semi_fit.fitted, rtol=1e-10)
    link = semi_fit.predict(semi, type="link")
    np.testing.assert_allclose(np.exp(link), semi_fit.predict(semi, type="response"))
    fixed_only = semi_fit.predict(semi, type="link", random=False)
    X = semi[["x1", "x3", "x5", "x6"]].to_numpy()
    beta = semi_fit.fixef["estimate"].to_numpy()
    np.testing.assert_allclose(fixed_only, beta[0] + X @ beta[1:])
    new = semi.head(4).assign(Device=[1, 2, 99, 100])  # two unseen devices get v = 0
    pred = semi_fit.predict(new, type="link")
    v = semi_fit.ranef["Device"]["v"]
    np.testing.assert_allclose(pred[:2], fixed_only[:2] + v.loc[["1", "2"]].to_numpy())
    np.testing.assert_allclose(pred[2:], fixed_only[2:4])


def test_residuals(semi_fit) -> None:
    d = semi_fit.deviance_residuals
    np.testing.assert_allclose(d**2, semi_fit.deviance_components)
    q = semi_fit.leverages
    np.testing.assert_allclose(
        semi_fit.standardized_residuals, d / np.sqrt(semi_fit.phi_fitted * (1 - q))
    )
    assert np.all((q > 0) & (q < 1))


@pytest.mark.parametrize("method", ["EQL", "HL(0,1)", "HL(1,1)"])
def test_plain_glm_matches_statsmodels(method: str) -> None:
    epil = load_dataset("epil")
    res = hglm.fit("y ~ lbase * trt + lage + V4", epil, family="poisson", method=method)
    ref = sm.GLM.from_formula(
        "y ~ lbase * trt + lage + V4", epil, family=sm.families.Poisson()
    ).fit()
    names = [r_style_name(c, {}) for c in ref.params.index]
    np.testing.assert_allclose(res.fixef.loc[names, "estimate"], ref.params, rtol=1e-7)
    np.testing.assert_allclose(res.fixef.loc[names, "se"], ref.bse, rtol=1e-6)
    assert res.likelihood["h"] == pytest.approx(ref.llf, rel=1e-10)
    assert res.likelihood["p_v"] == pytest.approx(ref.llf, rel=1e-10)


def test_plain_gaussian_glm_ml_and_reml_dispersion() -> None:
    cake = load_dataset("cake")
    ols = sm.OLS.from_formula("angle ~ recipe + temp", cake).fit()
    rss, n, p = ols.ssr, ols.nobs, len(ols.params)
    ml = hglm.fit("angle ~ recipe + temp", cake, method="HL(1,1)", reml=False)
    reml = hglm.fit("angle ~ recipe + temp", cake, method="HL(0,1)", reml=True)
    assert ml.phi == pytest.approx(rss / n, rel=1e-5)
    assert reml.phi == pytest.approx(rss / (n - p), rel=1e-5)
    assert ml.likelihood["p_v"] == pytest.approx(ols.llf, rel=1e-8)


def _dense_pieces(res: hglm.HGLMResult):
    """T, W_a and the augmented hat diagonal computed densely (small models only)."""
    design = res.design
    out = res.outcome
    mean, disp = out.mean, out.disp
    Zs = [t.indicator().toarray() for t in design.terms]
    Z = np.hstack(Zs)
    q = Z.shape[1]
    n, p = design.X.shape
    T = np.block([[design.X, Z], [np.zeros((q, p)), np.eye(q)]])
    fam = design.family
    a = fam.working_weight(mean.eta, mean.mu, design.prior_weights) / disp.phi(design)
    w_m = np.concatenate(
        [
            t.family.quasi_rows(v, lk)[0]
            for t, v, lk in zip(design.terms, mean.v, disp.lam(design), strict=True)
        ]
    )
    W = np.concatenate([a, w_m])
    C = T.T @ (T * W[:, None])
    Cinv = np.linalg.inv(C)
    hat = W * np.einsum("ij,jk,ik->i", T, Cinv, T)
    return hat, C, Cinv, n, p, q


def test_sparse_leverages_logdets_and_ses_equal_dense() -> None:
    rng = np.random.default_rng(12)
    df = pd.DataFrame(
        {"a": rng.integers(0, 9, 200).astype(str), "b": rng.integers(0, 7, 200).astype(str)}
    )
    df["x"] = rng.normal(size=200)
    a = rng.normal(0, 0.4, 9)[df["a"].astype(int)]
    b = rng.normal(0, 0.3, 7)[df["b"].astype(int)]
    ab = rng.normal(0, 0.5, 63)[df["a"].astype(int) * 7 + df["b"].astype(int)]
    df["y"] = rng.poisson(np.exp(0.3 + 0.2 * df["x"] + a + b + ab))
    res = hglm.fit("y ~ x + (1|a) + (1|b) + (1|a:b)", df, family="poisson", method="HL(0,1)")
    hat, C, Cinv, n, p, _ = _dense_pieces(res)
    np.testing.assert_allclose(res.leverages, hat[:n], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.fixef["se"], np.sqrt(np.diag(Cinv)[:p]), rtol=1e-8)
    pred_var = np.concatenate([res.ranef[t]["se"].to_numpy() ** 2 for t in ("a", "b", "a:b")])
    np.testing.assert_allclose(pred_var, np.diag(Cinv)[p:], rtol=1e-8)
    lik = res.likelihood
    h = lik["h"]
    logdet_c = np.linalg.slogdet(C / (2 * np.pi))[1]
    logdet_h = np.linalg.slogdet(C[p:, p:] / (2 * np.pi))[1]
    assert lik["p_beta_v"] == pytest.approx(h - 0.5 * logdet_c, rel=1e-10)
    assert lik["p_v"] == pytest.approx(h - 0.5 * logdet_h, rel=1e-10)


def test_observation_level_term_is_eliminated_exactly() -> None:
    """One level per row: the closed-form elimination equals carrying the term in H."""
    rng = np.random.default_rng(5)
    n_lot, per = 12, 6
    df = pd.DataFrame({"lot": np.repeat(np.arange(n_lot), per).astype(str)})
    df["wafer"] = np.arange(len(df)).astype(str)
    df["x"] = rng.normal(size=len(df))
    eta = 0.2 + 0.5 * df["x"] + rng.normal(0, 0.4, n_lot)[np.repeat(np.arange(n_lot), per)]
    df["y"] = rng.binomial(20, 1 / (1 + np.exp(-(eta + rng.normal(0, 0.3, len(df))))))
    df["n"] = 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = hglm.fit(
            "y ~ x + (1|lot) + (1|wafer)", df, family="binomial", trials="n", method="EQL"
        )
    assert res.design.terms[1].observation_level
    # the same model with the wafer term carried as ordinary sparse columns
    terms = [dataclasses.replace(t, observation_level=False) for t in res.design.terms]
    carried = fit_eql(Model(dataclasses.replace(res.design, terms=terms)))
    np.testing.assert_allclose(res.outcome.mean.beta, carried.mean.beta, rtol=1e-9)
    for a, b in zip(res.outcome.mean.v, carried.mean.v, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    for key in ("h", "p_v", "p_beta_v", "caic"):
        assert res.likelihood[key] == pytest.approx(getattr(carried.likelihood, key), rel=1e-9)
    np.testing.assert_allclose(res.leverages, carried.leverages["data"], rtol=1e-8)
    wafer = res.design.terms[1]
    lam = carried.disp.lam(res.design)[1]
    w_m = wafer.family.quasi_rows(carried.mean.v[1], lam)[0]
    np.testing.assert_allclose(
        res.outcome.leverages["wafer"], carried.leverages["var:wafer"] * w_m, rtol=1e-8
    )
    np.testing.assert_allclose(
        res.ranef["wafer"]["se"] ** 2, carried.leverages["var:wafer"], rtol=1e-8
    )


_LINK_DATA = {
    "gaussian(log)": lambda rng, eta: rng.normal(np.exp(eta), 0.3),
    "gamma(inverse)": lambda rng, eta: rng.gamma(4.0, 1 / (4.0 * (2.0 + 0.5 * eta))),
    "binomial(probit)": lambda rng, eta: rng.binomial(8, 0.5 * (1 + np.tanh(eta / 1.6))),
    "binomial(cloglog)": lambda rng, eta: rng.binomial(8, 1 - np.exp(-np.exp(eta - 0.5))),
}


@pytest.mark.parametrize("method", ["EQL", pytest.param("HL(1,1)", marks=pytest.mark.slow)])
@pytest.mark.parametrize("family", sorted(_LINK_DATA))
def test_every_link_fits(family: str, method: str) -> None:
    rng = np.random.default_rng(4)
    g = rng.integers(0, 20, 200)
    df = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=200), "n": 8})
    eta = 0.5 + 0.3 * df["x"].to_numpy() + rng.normal(0, 0.3, 20)[g]
    df["y"] = _LINK_DATA[family](rng, eta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        res = hglm.fit(
            "y ~ x + (1|g)",
            df,
            family=family,
            method=method,
            trials="n" if family.startswith("binomial") else None,
        )
    assert res.converged
    assert np.all(np.isfinite(res.fixef.to_numpy()))
    assert np.isfinite(res.likelihood["p_v"])


def test_ranef_given_fixef_equals_the_dense_conditional_distribution() -> None:
    """For an LMM at its estimates, v | y, beta is normal with covariance
    P^{-1} = (Z'Z/phi + diag(1/lambda))^{-1} and mean P^{-1} Z'(y - X beta)/phi: the loading is
    -P^{-1} Z'X / phi and the SD of e the root of diag(P^{-1}), computed here densely."""
    rng = np.random.default_rng(7)
    n, n_a, n_b = 400, 25, 12
    a, b = rng.integers(0, n_a, n), rng.integers(0, n_b, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.8, n_a)[a] + rng.normal(0, 0.5, n_b)[b] + rng.normal(size=n)
    data = pd.DataFrame({"y": y, "x": x, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})
    res = hglm.fit("y ~ x + (1|a) + (1|b)", data, method="HL(1,1)", reml=False)

    phi = float(res.outcome.disp.phi(res.design)[0])
    lam = res.lambdas
    X = np.column_stack([np.ones(n), x])
    blocks, prior = [], []
    for name in ("a", "b"):
        levels = res.ranef[name].index
        codes = pd.Index(levels).get_indexer(data[name])
        Z = np.zeros((n, len(levels)))
        Z[np.arange(n), codes] = 1.0
        blocks.append(Z)
        prior.append(np.full(len(levels), 1.0 / lam[name]))
    Z = np.hstack(blocks)
    P_inv = np.linalg.inv(Z.T @ Z / phi + np.diag(np.concatenate(prior)))
    loading = -P_inv @ Z.T @ X / phi

    split = res.ranef_given_fixef()
    assert list(split) == ["a", "b"]
    got_loading = np.vstack([split["a"].loading, split["b"].loading])
    got_se = np.concatenate([split["a"].se, split["b"].se])
    np.testing.assert_allclose(got_loading, loading, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(got_se, np.sqrt(np.diag(P_inv)), rtol=1e-6)
    assert list(split["a"].levels) == list(res.ranef["a"].index)


def test_ranef_given_fixef_recombines_to_the_prediction_se(semi_fit) -> None:
    """loading cov(beta) loading' + se^2 is the prediction variance of every level."""
    for name, part in semi_fit.ranef_given_fixef().items():
        shared = np.einsum("ij,jk,ik->i", part.loading, semi_fit.outcome.cov_beta, part.loading)
        np.testing.assert_allclose(
            np.sqrt(shared + part.se**2), semi_fit.ranef[name]["se"].to_numpy(), rtol=1e-10
        )
