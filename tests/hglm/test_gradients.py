"""Analytic gradients of p_v(h) and p_beta,v(h) against central differences of the criterion.

Each model class of the notes' table, with crossed terms and, where it makes sense, an
observation-level term (eliminated in closed form), is evaluated away from its optimum (so
the gradient is not ~0) for the three criterion set-ups: p_v(h) with beta as a parameter
(HL(1,1), ML), p_v(h) with beta solved inside (HL(0,1), ML) and p_beta,v(h) (REML)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hglm
from hglm.criterion import Criterion


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 240
    g1 = rng.integers(0, 15, n)
    g2 = rng.integers(0, 6, n)
    x = rng.normal(size=n)
    eta = 0.3 + 0.4 * x + rng.normal(0, 0.5, 15)[g1] + rng.normal(0, 0.3, 6)[g2]
    eta = eta + rng.normal(0, 0.3, n)
    return pd.DataFrame(
        {
            "x": x,
            "g1": g1.astype(str),
            "g2": g2.astype(str),
            "obs": np.arange(n).astype(str),
            "cnt": rng.poisson(np.exp(eta)),
            "tot": 20,
            "k": rng.binomial(20, 1 / (1 + np.exp(-eta))),
            "bin": rng.binomial(1, 1 / (1 + np.exp(-eta))),
            "yg": rng.gamma(3, np.exp(eta) / 3),
            "yn": eta + rng.normal(0, 0.5, n),
            "z1": g1 / 10.0,  # a covariate of the g1 levels (for a lambda model)
        }
    )


DATA = _data()

MODELS = {
    "binomial GLMM + wafer term": dict(
        formula="k ~ x + (1|g1) + (1|g2) + (1|obs)", family="binomial", trials="tot"
    ),
    "binomial GLMM with a lambda model": dict(
        formula="k ~ x + (1|g1) + (1|g2) + (1|obs)",
        family="binomial",
        trials="tot",
        rand_disp={"g1": "~ z1"},
    ),
    "binary probit GLMM": dict(formula="bin ~ x + (1|g1) + (1|g2)", family="binomial(probit)"),
    "Poisson GLMM + observation term": dict(
        formula="cnt ~ x + (1|g1) + (1|g2) + (1|obs)", family="poisson"
    ),
    "Poisson-gamma": dict(
        formula="cnt ~ x + (1|g1) + (1|g2)", family="poisson", rand_family="gamma"
    ),
    "Poisson-gamma, gamma observation term": dict(
        formula="cnt ~ x + (1|g1) + (1|obs)",
        family="poisson",
        rand_family={"g1": "gamma", "obs": "gamma"},
    ),
    "binomial-beta": dict(
        formula="k ~ x + (1|g1) + (1|g2)", family="binomial", trials="tot", rand_family="beta"
    ),
    "gamma-inverse-gamma (log)": dict(
        formula="yg ~ x + (1|g1) + (1|g2)",
        family="gamma",
        link="log",
        rand_family="inverse_gamma(log)",
    ),
    "gamma-inverse-gamma (reciprocal)": dict(
        formula="yg ~ x + (1|g1)", family="gamma", rand_family="inverse_gamma"
    ),
    "gamma GLMM with a phi model": dict(
        formula="yg ~ x + (1|g1) + (1|g2)", family="gamma", link="log", disp="~ x"
    ),
    "normal-normal": dict(formula="yn ~ x + (1|g1) + (1|g2)", family="gaussian"),
    "normal-normal, observation term and phi model": dict(
        formula="yn ~ x + (1|g1) + (1|obs)", family="gaussian", disp="~ x"
    ),
}
SETUPS = [("p_v", True), ("p_v", False), ("p_beta_v", False)]


@pytest.fixture(scope="module", params=list(MODELS))
def eql_fit(request: pytest.FixtureRequest) -> hglm.HGLMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hglm.fit(data=DATA, method="EQL", **MODELS[request.param])


@pytest.mark.parametrize(("which", "beta_free"), SETUPS)
def test_analytic_gradient_matches_central_differences(
    eql_fit: hglm.HGLMResult, which: str, beta_free: bool
) -> None:
    out = eql_fit.outcome
    crit = Criterion(eql_fit.model, out.disp, out.mean, which, beta_free=beta_free)
    theta = out.disp.theta() + 0.1
    x = np.concatenate([out.mean.beta + 0.05, theta]) if beta_free else theta
    value, analytic = crit.value_and_gradient(x)
    assert np.isfinite(value)
    assert crit.n_grad == 1  # the analytic path, not the difference fallback
    # the probit observed weight is itself a difference quotient: a coarser oracle step
    step = 1e-4 if "probit" in str(eql_fit.model.family) else 1e-5
    numeric = crit.numeric_gradient(x, step=step)
    scale = np.maximum(np.abs(numeric), 1e-2)
    assert np.max(np.abs(analytic - numeric) / scale) < 1e-5


def test_gradient_vanishes_at_the_laplace_optimum() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = hglm.fit(
            data=DATA, method="HL(1,1)", reml=False, **MODELS["binomial GLMM + wafer term"]
        )
    out = res.outcome
    crit = Criterion(res.model, out.disp, out.mean, "p_v", beta_free=True)
    x_hat = np.concatenate([out.mean.beta, out.disp.theta()])
    value, grad = crit.value_and_gradient(x_hat)
    assert value == pytest.approx(res.likelihood["p_v"], abs=1e-8)
    assert np.max(np.abs(grad)) < 1e-4
    # and the difference oracle agrees that it is stationary
    assert np.max(np.abs(crit.numeric_gradient(x_hat))) < 1e-4
