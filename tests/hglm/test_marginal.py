"""Population-averaged predictions against closed forms, numerical integration and Monte Carlo."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

import hglm
from hglm.families import random_family


def _fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(*args, **kwargs)


def _lambda(res, term):
    return float(res.varcomp.loc[term, "lambda"])


@pytest.fixture(scope="module")
def poisson_gamma():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(15), 4)
    df = pd.DataFrame({"g": g, "x": rng.normal(size=60), "t": rng.uniform(1, 3, 60)})
    u = random_family("gamma").sample_u(0.4, 15, rng)
    df["y"] = rng.poisson(df["t"] * np.exp(0.2 + 0.5 * df["x"]) * u[g])
    return df, _fit("y ~ x + (1|g)", df, family="poisson", rand_family="gamma", offset="np.log(t)")


@pytest.fixture(scope="module")
def binomial_beta():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(15), 4)
    df = pd.DataFrame({"g": g, "x": rng.normal(size=60), "m": 8})
    u = random_family("beta").sample_u(0.3, 15, rng)
    df["k"] = rng.binomial(8, special.expit(-0.4 + 0.8 * df["x"] + special.logit(u)[g]))
    return df, _fit("k ~ x + (1|g)", df, family="binomial", trials="m", rand_family="beta")


def test_poisson_gamma_marginal_mean_is_exp_xbeta(poisson_gamma):
    df, res = poisson_gamma
    # E(u) = 1 for gamma random effects: the population mean is the fixed part alone
    X = np.column_stack([np.ones(len(df)), df["x"]])
    expected = df["t"] * np.exp(X @ res.fixef["estimate"].to_numpy())
    np.testing.assert_allclose(hglm.marginal_predict(res), expected, rtol=1e-6)
    np.testing.assert_allclose(res.marginal_predict(method="quadrature"), expected, rtol=1e-6)


def test_binomial_beta_marginal_mean_equals_the_integral(binomial_beta):
    df, res = binomial_beta
    s = 1 / (2 * _lambda(res, "g"))
    eta = res.predict(type="link", random=False)
    marg = hglm.marginal_predict(res)
    for i in range(0, len(df), 7):
        exact = integrate.quad(
            lambda u, e=eta[i]: special.expit(e + special.logit(u)) * stats.beta.pdf(u, s, s),
            0,
            1,
            epsabs=1e-12,
            epsrel=1e-12,
        )[0]
        assert marg[i] == pytest.approx(exact, abs=1e-6)
    # the Gauss-Jacobi route agrees with the closed form
    np.testing.assert_allclose(res.marginal_predict(method="quadrature"), marg, atol=1e-6)
    # averaging pulls the subject-specific curve towards 1/2
    ss = res.predict(random=False)
    assert np.all(np.abs(marg - 0.5) <= np.abs(ss - 0.5) + 1e-12)


def test_binomial_glmm_marginal_mean_matches_monte_carlo():
    rng = np.random.default_rng(3)
    a = np.repeat(np.arange(12), 6)
    b = np.tile(np.arange(6), 12)
    df = pd.DataFrame({"a": a, "b": b, "x": rng.normal(size=72), "m": 10})
    eta = 0.3 + 0.7 * df["x"] + rng.normal(0, 1.0, 12)[a] + rng.normal(0, 0.6, 6)[b]
    df["k"] = rng.binomial(10, special.expit(eta))
    res = _fit("k ~ x + (1|a) + (1|b)", df, family="binomial", trials="m")
    lam_a, lam_b = _lambda(res, "a"), _lambda(res, "b")
    assert lam_a > 0.05 and lam_b > 0.01
    new = pd.DataFrame({"x": [-1.5, 0.0, 2.0], "a": [0, 0, 0], "b": [0, 0, 0]})
    marg = hglm.marginal_predict(res, new)
    lin = res.predict(new, type="link", random=False)
    n = 400_000
    mc_rng = np.random.default_rng(4)
    v = mc_rng.normal(0, np.sqrt(lam_a), n) + mc_rng.normal(0, np.sqrt(lam_b), n)
    for i in range(len(new)):
        draws = special.expit(lin[i] + v)
        se = draws.std() / np.sqrt(n)
        assert abs(marg[i] - draws.mean()) < 3 * se
    # averaging over one term only: the other enters with its predicted effect
    part = hglm.marginal_predict(res, new, average_over=["b"])
    lin_a = lin + res.ranef["a"]["v"].iloc[0]
    draws = special.expit(lin_a[1] + mc_rng.normal(0, np.sqrt(lam_b), n))
    assert abs(part[1] - draws.mean()) < 3 * draws.std() / np.sqrt(n)


def test_identity_and_log_links_have_closed_forms():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(12), 5)
    df = pd.DataFrame({"g": g, "x": rng.normal(size=60)})
    df["y"] = np.exp(0.5 + 0.3 * df["x"] + rng.normal(0, 0.5, 12)[g]) * rng.gamma(5, 1 / 5, 60)
    res = _fit("y ~ x + (1|g)", df, family="gamma(log)")
    lin = res.predict(type="link", random=False)
    expected = np.exp(lin + _lambda(res, "g") / 2)  # E exp(v) for v ~ N(0, lambda)
    np.testing.assert_allclose(hglm.marginal_predict(res), expected, rtol=1e-10)
    np.testing.assert_allclose(res.marginal_predict(method="quadrature"), expected, rtol=1e-8)
    lmm = _fit("x ~ 1 + (1|g)", df, method="HL(0,1)")
    np.testing.assert_allclose(hglm.marginal_predict(lmm), lmm.predict(random=False))


def test_marginal_effect_of_a_covariate(poisson_gamma):
    df, res = poisson_gamma
    new = df.assign(t=1.0)
    eff = hglm.marginal_effect(res, new, "x", change=0.5)
    X = np.column_stack([np.ones(len(df)), df["x"]])
    beta = res.fixef["estimate"].to_numpy()
    base = np.exp(X @ beta)
    expected = np.mean(base * (np.exp(0.5 * beta[1]) - 1)) / 0.5
    assert eff["effect"] == pytest.approx(expected, rel=1e-8)
    assert eff["mean_before"] == pytest.approx(base.mean(), rel=1e-8)


def test_marginal_rejects_unknown_terms(poisson_gamma):
    _, res = poisson_gamma
    with pytest.raises(ValueError, match="unknown random term"):
        hglm.marginal_predict(res, average_over=["nope"])
