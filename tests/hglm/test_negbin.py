"""Negative binomial (NB2) responses: exact likelihood, theta by profiling (issue 17)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import hglm
from hglm.families import response_family

from .conftest import DATA

OWLS = "SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize)) + (1 | Nest)"


def _owls_reference() -> dict:
    return json.loads((DATA / "references_v2.json").read_text())["owls_nbinom2_ML"]["results"]


@pytest.fixture(scope="module")
def owls_fit() -> hglm.HGLMResult:
    owls = pd.read_csv(DATA / "Owls.csv")
    return hglm.fit(OWLS, owls, family="nbinom2", reml=False)


def test_nb_loglik_deviance_and_weights_are_exact() -> None:
    fam = response_family("negative_binomial").with_theta(1.7)
    y = np.array([0.0, 1, 3, 10, 42])
    mu = np.array([0.4, 2.0, 3.0, 7.5, 30.0])
    w = np.ones(5)
    want = stats.nbinom.logpmf(y, 1.7, 1.7 / (1.7 + mu))
    np.testing.assert_allclose(fam.loglik(y, mu, np.ones(5), w), want, rtol=1e-12)
    # deviance = 2 (log f(y | mu = y) - log f(y | mu))
    sat = stats.nbinom.logpmf(y, 1.7, 1.7 / (1.7 + np.maximum(y, 1e-300)))
    np.testing.assert_allclose(fam.deviance(y, mu, w), 2 * (sat - want), rtol=1e-10)
    np.testing.assert_allclose(fam.variance(mu), mu + mu**2 / 1.7)
    # observed weight = -d2 log f / d eta2, by differences of the exact log-likelihood
    eta = np.log(mu)
    h = 1e-4
    f = [fam.loglik(y, np.exp(eta + s * h), np.ones(5), w) for s in (-1, 0, 1)]
    numeric = -(f[2] - 2 * f[1] + f[0]) / h**2
    np.testing.assert_allclose(fam.observed_weight(y, eta, mu, w), numeric, rtol=1e-5)
    with pytest.raises(ValueError, match="theta"):
        response_family("nbinom2").variance(mu)


def test_owls_nb2_matches_glmmtmb(owls_fit: hglm.HGLMResult) -> None:
    """glmmTMB(..., family = nbinom2) Laplace ML on Owls: logLik, theta, nest variance."""
    ref = _owls_reference()
    assert owls_fit.likelihood["p_v"] == pytest.approx(ref["logLik"], abs=0.01)
    assert owls_fit.theta["estimate"] == pytest.approx(ref["theta"], rel=0.01)
    assert owls_fit.lambdas["Nest"] == pytest.approx(ref["nest_var"], rel=0.01)
    for fe in ref["fixed_effects"]:
        got = owls_fit.fixef.loc[fe["name"]]
        # estimates within 1 % of their SE; SEs (ours: the mixed-model equations' at theta-hat,
        # glmmTMB's: the full Hessian) within 5 %
        assert abs(got["estimate"] - fe["estimate"]) < 0.01 * fe["se"]
        assert got["se"] == pytest.approx(fe["se"], rel=0.05)


def test_owls_theta_is_reported(owls_fit: hglm.HGLMResult) -> None:
    th = owls_fit.theta
    assert 0 < th["se"] < th["estimate"]
    assert th["lower"] < th["estimate"] < th["upper"]
    text = owls_fit.summary()
    assert "theta = 0.84" in text
    d = owls_fit.to_dict()
    assert d["theta"]["estimate"] == pytest.approx(th["estimate"])
    assert d["family"] == "negative_binomial(log)"


def test_nb_without_random_terms_is_statsmodels_nb2_mle() -> None:
    rng = np.random.default_rng(11)
    n = 400
    x = rng.normal(size=n)
    mu = np.exp(0.5 + 0.6 * x)
    y = rng.poisson(rng.gamma(2.0, mu / 2.0))
    df = pd.DataFrame({"y": y, "x": x})
    res = hglm.fit("y ~ x", df, family="nbinom2", reml=False)
    sm_fit = sm.NegativeBinomial(y, sm.add_constant(x), loglike_method="nb2").fit(
        disp=0, method="bfgs", maxiter=500
    )
    np.testing.assert_allclose(res.fixef["estimate"], sm_fit.params[:2], atol=2e-4)
    assert res.theta["estimate"] == pytest.approx(1 / sm_fit.params[2], rel=1e-3)
    assert res.likelihood["p_v"] == pytest.approx(sm_fit.llf, abs=1e-4)
    # the SE of log theta: statsmodels' SE of alpha = 1/theta on the log scale is the same
    se_log_alpha = sm_fit.bse[2] / sm_fit.params[2]
    assert res.theta["se_log"] == pytest.approx(se_log_alpha, rel=1e-4)


def test_nb_with_gamma_random_effects_recovers_truth() -> None:
    rng = np.random.default_rng(4)
    groups, per = 60, 15
    g = np.repeat(np.arange(groups), per)
    x = rng.normal(size=groups * per)
    u = rng.gamma(1 / 0.3, 0.3, groups)  # E u = 1, var 0.3
    mu = np.exp(1.0 + 0.5 * x) * u[g]
    y = rng.poisson(rng.gamma(3.0, mu / 3.0))
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    res = hglm.fit("y ~ x + (1|g)", df, family="nbinom2", rand_family="gamma", reml=False)
    assert res.converged
    assert res.fixef.loc["x", "estimate"] == pytest.approx(0.5, abs=3 * res.fixef.loc["x", "se"])
    lo, hi = res.theta["lower"], res.theta["upper"]
    assert lo < 3.0 < hi
    assert 0.15 < res.lambdas["g"] < 0.6


def test_every_method_estimates_theta_and_a_given_theta_is_kept() -> None:
    owls = pd.read_csv(DATA / "Owls.csv")
    ml = _owls_reference()["theta"]
    for kw in ({}, {"method": "EQL"}):  # REML (p_beta,v) and EQL (p_beta,v of its fit)
        res = hglm.fit(OWLS, owls, family="negative_binomial", **kw)
        assert res.converged
        assert res.theta["estimate"] == pytest.approx(ml, rel=0.02)
    fixed = hglm.fit(OWLS, owls, family=hglm.negative_binomial_family(2.0), reml=False)
    assert fixed.theta["estimate"] == 2.0
    assert np.isnan(fixed.theta["se"])
    assert fixed.likelihood["p_v"] < -1741.805  # theta = 2 is worse than theta-hat
    with pytest.raises(ValueError, match="positive"):
        hglm.negative_binomial_family(0.0)


def test_refits_re_estimate_theta(owls_fit: hglm.HGLMResult) -> None:
    """A refit (the bootstrap's) profiles theta again instead of holding theta-hat."""
    from hglm.inference.refits import refit

    y = owls_fit.simulate(1, seed=3)[0]
    again = refit(owls_fit, y)
    assert again.outcome.theta is not None
    assert again.theta["estimate"] != pytest.approx(owls_fit.theta["estimate"], rel=1e-3)
    assert again.theta["estimate"] == pytest.approx(owls_fit.theta["estimate"], rel=0.5)
    # the original fit is untouched
    assert owls_fit.theta["estimate"] == pytest.approx(_owls_reference()["theta"], rel=0.01)
