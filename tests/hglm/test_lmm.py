"""The profiled LMM search (hglm.lmm) against dense marginal likelihoods and the generic HL path."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.optimize

import hglm
from hglm.criterion import Criterion
from hglm.design import build_design
from hglm.eql import fit_eql
from hglm.families import response_family
from hglm.formula import parse_formula
from hglm.lmm import ProfiledCriterion, is_linear_mixed_model, moment_start
from hglm.model import Model

FORMULA = "y ~ x + (1|a) + (1|b)"


@pytest.fixture(scope="module")
def crossed() -> pd.DataFrame:
    """Two crossed terms, unbalanced, with prior weights."""
    rng = np.random.default_rng(11)
    n = 90
    a = rng.integers(0, 9, n)
    b = rng.integers(0, 6, n)
    w = rng.uniform(0.5, 2.0, n)
    x = rng.normal(size=n)
    y = (
        1
        + 0.4 * x
        + rng.normal(0, 0.8, 9)[a]
        + rng.normal(0, 0.5, 6)[b]
        + rng.normal(size=n) / np.sqrt(w)
    )
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str), "w": w})


def _model(data: pd.DataFrame, formula: str = FORMULA, **kw) -> Model:
    design = build_design(
        parse_formula(formula), data, response_family("gaussian"), rand_family="normal", **kw
    )
    return Model(design)


def _dense_loglik(model: Model, phi: float, lams: list[float], reml: bool) -> float:
    """log L of y ~ N(X beta, phi W^{-1} + sum lambda_k Z_k Z_k') at the GLS beta (ML), or the
    REML log-likelihood, with dense matrices."""
    d = model.design
    V = np.diag(phi / d.prior_weights)
    for t, lam in zip(d.terms, lams, strict=True):
        Z = np.eye(t.n_levels)[t.codes]
        V += lam * Z @ Z.T
    Vi = np.linalg.inv(V)
    X, y = d.X, d.y
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    m = len(y) - (X.shape[1] if reml else 0)
    ll = -0.5 * (np.linalg.slogdet(V)[1] + r @ Vi @ r + m * np.log(2 * np.pi))
    return ll - (0.5 * np.linalg.slogdet(XtViX)[1] if reml else 0.0)


def test_only_gaussian_identity_models_with_normal_intercepts_qualify(crossed) -> None:
    assert is_linear_mixed_model(_model(crossed))
    assert not is_linear_mixed_model(_model(crossed, disp="~ x"))
    poisson = crossed.assign(y=np.rint(np.exp(crossed["x"])))
    design = build_design(
        parse_formula(FORMULA), poisson, response_family("poisson"), rand_family="normal"
    )
    assert not is_linear_mixed_model(Model(design))


@pytest.mark.parametrize("reml", [False, True])
def test_profiled_criterion_is_the_dense_likelihood_at_profiled_phi(crossed, reml) -> None:
    model = _model(crossed, weights="w")
    crit = ProfiledCriterion(model, reml)
    rho = np.array([-0.3, -1.2])
    value = crit(rho)
    disp = crit.dispersions(rho)
    phi = float(disp.phi(model.design)[0])
    lams = [float(lk[0]) for lk in disp.lam(model.design)]
    assert lams == pytest.approx([phi * np.exp(r) for r in rho])
    assert value == pytest.approx(_dense_loglik(model, phi, lams, reml), rel=1e-10)
    # phi is profiled: the dense likelihood is flat in phi there (at fixed ratios)
    around = [_dense_loglik(model, phi * f, [lam * f for lam in lams], reml) for f in (0.99, 1.01)]
    assert max(around) < value


@pytest.mark.parametrize("reml", [False, True])
def test_profiled_gradient_matches_differences(crossed, reml) -> None:
    crit = ProfiledCriterion(_model(crossed, weights="w"), reml)
    rho = np.array([0.4, -2.0])
    grad = crit.gradient(rho)
    step = 1e-5
    numeric = [(crit(rho + step * e) - crit(rho - step * e)) / (2 * step) for e in np.eye(len(rho))]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reml", [False, True])
def test_fit_reaches_the_dense_maximum_and_the_generic_criterion(crossed, reml) -> None:
    model = _model(crossed, weights="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        res = hglm.fit(FORMULA, crossed, method="HL(0,1)", reml=reml, weights="w")
    assert res.converged
    best = scipy.optimize.minimize(
        lambda t: -_dense_loglik(model, np.exp(t[0]), list(np.exp(t[1:])), reml),
        np.log([1.0, 0.5, 0.3]),
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000},
    )
    key = "p_beta_v" if reml else "p_v"
    assert res.likelihood[key] == pytest.approx(-best.fun, abs=1e-6)
    # the generic criterion (inner IWLS, exact Laplace) agrees at the estimates, and the
    # generic gradient vanishes there
    start = fit_eql(res.model)
    crit = Criterion(res.model, res.outcome.disp, start.mean, key, beta_free=False)
    theta = res.outcome.disp.theta()
    assert crit(theta) == pytest.approx(res.likelihood[key], abs=1e-8)
    assert np.max(np.abs(crit.gradient(theta))) < 1e-3


def test_ml_estimates_do_not_depend_on_the_mean_order(crossed) -> None:
    a = hglm.fit(FORMULA, crossed, method="HL(0,1)", reml=False)
    b = hglm.fit(FORMULA, crossed, method="HL(1,1)", reml=False)
    np.testing.assert_allclose(a.varcomp["lambda"], b.varcomp["lambda"], rtol=1e-10)
    np.testing.assert_allclose(a.fixef["estimate"], b.fixef["estimate"], rtol=1e-10)
    assert a.likelihood["p_v"] == pytest.approx(b.likelihood["p_v"], rel=1e-12)


def test_moment_start_is_finite_and_within_bounds(crossed) -> None:
    rho = moment_start(_model(crossed))
    assert rho.shape == (2,) and np.all(np.isfinite(rho))


def test_a_vanishing_component_is_reported_on_any_scale() -> None:
    """With phi in the thousands a zero component still reads as singular (negligible next
    to phi), and the criterion is no lower than at lambda = 1e-8, the generic search's bound."""
    rng = np.random.default_rng(7)
    values = np.array([-2.0, -0.5, 0.0, 1.0, 1.5])
    df = pd.DataFrame(
        {
            "g": np.repeat(np.arange(10), 5).astype(str),
            "y": 100.0 * np.concatenate([rng.permutation(values) for _ in range(10)]),
        }
    )
    with pytest.warns(hglm.ConvergenceWarning, match="singular fit"):
        res = hglm.fit("y ~ 1 + (1|g)", df, method="HL(1,1)", reml=False)
    assert res.varcomp.loc["g", "lambda"] < 1e-6 * res.phi
    crit = Criterion(res.model, res.outcome.disp, res.outcome.mean, "p_v", beta_free=True)
    at_bound = np.concatenate([res.outcome.mean.beta, [np.log(res.phi), np.log(1e-8)]])
    assert res.likelihood["p_v"] >= crit(at_bound) - 1e-8
